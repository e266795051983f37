"""`agentsleep daemon status`: what the daemon of a home last reported, checked against reality."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from agentsleep.atomic import read_json
from agentsleep.procs import pid_alive
from agentsleep.sleep.journal import is_orphaned, journals
from .requests import daemon_dir, daemon_info, pending_requests


def _last_report(home: Path) -> dict[str, Any] | None:
    try:
        reports = sorted((home / "sleeps").glob("*/report.json"))
    except OSError:
        return None
    for rp in reversed(reports):
        r = read_json(rp)
        if isinstance(r, dict):
            return {k: r.get(k) for k in ("sleep_id", "status", "version", "parent_version", "metrics", "reasons",
                                          "duration_s", "finished_at") if k in r}
    return None


def daemon_status(home: str | Path, *, count_waiting: bool = True) -> dict[str, Any]:
    """Status of the daemon for `home`, whether it runs or not.

    ``health.ok`` is true only when a daemon holds the home, its heartbeat is
    fresh and it reports no problem. When no daemon runs, the last status it
    wrote is returned under ``last_status`` and the waiting work is counted
    from disk (set count_waiting=False to skip opening the episode store).
    """
    home = Path(home).expanduser().resolve()
    ddir = daemon_dir(home)
    info = daemon_info(home)
    st = read_json(ddir / "status.json") or {}
    now = time.time()
    orphans = [j.get("sleep_id") for _, j in journals(home) if is_orphaned(j)]
    problems: list[str] = []
    if info is not None:
        out = dict(st) if st.get("daemon", {}).get("pid") == info.get("pid") else {"home": str(home)}
        hb = (out.get("daemon") or {}).get("heartbeat_at")
        period = float((out.get("daemon") or {}).get("heartbeat_s") or 10.0)
        age = None if hb is None else round(now - float(hb), 1)
        d = dict(out.get("daemon") or {})
        d.update({"alive": True, "pid": info.get("pid"), "heartbeat_age_s": age})
        out["daemon"] = d
        problems = list((out.get("health") or {}).get("problems") or [])
        if age is None:
            problems.append("no heartbeat yet")
        elif age > max(3 * period, 30.0):
            problems.append(f"heartbeat is {age:.0f} s old (expected every {period:.0f} s): the daemon may be stuck")
    else:
        out = {"home": str(home), "daemon": {"alive": False, "pid": None, "state": "not running"},
               "last_status": st or None, "running": None}
        problems.append("no daemon is running for this home")
        waiting: dict[str, Any] = {"requests": len(pending_requests(home))}
        if count_waiting:
            waiting["episodes"] = _count_waiting(home)
        out["waiting"] = waiting
        out["last_sleep"] = (st.get("last_sleep") if st else None) or None
    report = _last_report(home)
    ls = out.get("last_sleep")
    if report and (not ls or ls.get("sleep_id") != report.get("sleep_id")) and \
            (not ls or (report.get("finished_at") or 0) >= (ls.get("finished_at") or 0)):
        out["last_sleep"] = report  # a later sleep by the CLI or Python API
    if orphans:
        problems.append(f"interrupted sleep(s) awaiting recovery: {', '.join(map(str, orphans))} "
                        "(the daemon recovers them when it starts)")
    out["health"] = {"ok": info is not None and not problems, "problems": problems}
    return out


def _count_waiting(home: Path) -> int | None:
    try:
        from ..home import Home

        h = Home.open(home, writable=False, create=False)
        try:
            return len(h.store.list(unconsolidated_only=True))
        finally:
            h.close()
    except Exception:  # noqa: BLE001 - status must answer even when the store cannot
        return None


def stop_daemon(home: str | Path, timeout: float = 60.0) -> dict[str, Any]:
    """SIGTERM the daemon serving `home` and wait for it to let go of the home."""
    home = Path(home).expanduser().resolve()
    info = daemon_info(home)
    if info is None or not info.get("pid"):
        return {"home": str(home), "stopped": False, "was_running": False}
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return {"home": str(home), "stopped": True, "was_running": False, "pid": pid}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_info(home) is None and not pid_alive(pid):
            return {"home": str(home), "stopped": True, "was_running": True, "pid": pid}
        time.sleep(0.1)
    return {"home": str(home), "stopped": False, "was_running": True, "pid": pid,
            "error": f"daemon pid {pid} still running {timeout:.0f} s after SIGTERM"}
