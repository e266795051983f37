"""Sleep journals and crash recovery.

The sleep pipeline keeps ``<home>/sleeps/<sleep_id>/journal.json`` up to date
(``{"sleep_id", "pid", "stage", "started_at", "status": "running" | ...}``) and
writes ``report.json`` when it ends. A journal still saying ``running`` whose
process is gone belongs to a sleep that was killed (kill -9, OOM, power loss).

Recovery makes such a home consistent again:

* the journal is marked ``interrupted`` (with the stage it died in) and a
  ``report.json`` saying so is written, so `status` and `history` tell the truth;
* half-written model versions in ``registry/staging`` are removed. The
  registry only flips ``CURRENT`` after a version is complete, so the version
  that served before the crash keeps serving;
* locks need no work: ``sleep.lock`` and the store's ``writer.lock`` are
  flock()-based and the kernel released them when the process died. Recovery
  checks that the sleep lock is free and says who holds it if not.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from agentsleep.atomic import atomic_write_json as _atomic_write_json

RUNNING = "running"


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON next to `path` and rename it into place (readers never see half a file)."""
    _atomic_write_json(path, data)


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None, since: float | None = None) -> bool:
    """True if `pid` runs and (when `since` is given) did not start after `since` (pid reuse)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if since is not None:
        started = _process_start_time(pid)
        if started is not None and started > float(since) + 2.0:
            return False  # the pid was reused by a newer process
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    return True


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start time of `pid` from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime); fields[0] is field 3
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def journals(home: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(path, journal) for every readable sleeps/*/journal.json, oldest sleep id first."""
    out = []
    try:
        paths = sorted((home / "sleeps").glob("*/journal.json"))
    except OSError:
        return []
    for p in paths:
        j = read_json(p)
        if isinstance(j, dict):
            out.append((p, j))
    return out


def running_journals(home: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, j) for p, j in journals(home) if j.get("status") == RUNNING]


def _started(j: dict[str, Any]) -> float | None:
    v = j.get("started_at")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(v).timestamp()
        except ValueError:
            return None
    return None


def is_orphaned(j: dict[str, Any]) -> bool:
    """A journal saying `running` whose process is gone."""
    return j.get("status") == RUNNING and not pid_alive(j.get("pid"), _started(j))


def mark(path: Path, status: str, **fields: Any) -> dict[str, Any]:
    """Set a journal's status (keeping its other fields); returns the new journal."""
    j = read_json(path) or {}
    prev = j.get("status")
    j.update(fields)
    j["status"] = status
    j.setdefault("previous_status", prev)
    j[f"{status}_at"] = time.time()
    atomic_write_json(path, j)
    return j


def _serving_version(home: Path) -> str | None:
    try:
        return (home / "registry" / "CURRENT").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _write_interrupted_report(journal_path: Path, j: dict[str, Any], why: str) -> None:
    rp = journal_path.parent / "report.json"
    if rp.exists():
        return
    serving = _serving_version(home=journal_path.parent.parent.parent)
    now = time.time()
    started = _started(j) or now
    atomic_write_json(rp, {
        "sleep_id": j.get("sleep_id") or journal_path.parent.name, "status": j.get("status", "interrupted"),
        "version": serving, "parent_version": j.get("parent_version", serving), "episodes": [],
        "metrics": {}, "reasons": [why], "timings": {}, "duration_s": max(0.0, now - started),
        "started_at": started, "finished_at": now, "dreams": {}, "stage": j.get("stage"),
    })


def sweep_staging(home: Path, *, own_pid: int | None = None) -> int:
    """Remove registry staging dirs of dead writers (and of `own_pid`, when aborting)."""
    import re

    staging = home / "registry" / "staging"
    n = 0
    try:
        entries = list(staging.iterdir())
    except OSError:
        return 0
    for d in entries:
        m = re.match(r"stage-(\d+)-", d.name)
        pid = int(m.group(1)) if m else None
        if pid is not None and pid != own_pid and pid_alive(pid):
            continue
        if pid is None and own_pid is not None:
            continue  # not ours to judge while aborting
        if pid is None:
            # Unnamed staging dirs (e.g. the base version being created) are only
            # swept when old: a live creator finishes within seconds.
            try:
                if time.time() - d.stat().st_mtime < 3600:
                    continue
            except OSError:
                continue
        shutil.rmtree(d, ignore_errors=True)
        n += 1
    return n


def lock_holder(home: Path) -> str | None:
    """None when <home>/sleep.lock is free; otherwise who holds it (from sleep.json)."""
    lock = FileLock(str(home / "sleep.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        info = read_json(home / "sleep.json") or {}
        return f"pid {info.get('pid', '?')} ({info.get('what', 'sleep')})"
    except OSError:
        return None
    lock.release()
    return None


def recover(home: Path) -> dict[str, Any]:
    """Make `home` consistent after a crashed sleep; returns what was done (see module doc)."""
    home = Path(home)
    done: dict[str, Any] = {"home": str(home), "at": time.time(), "interrupted": [], "staging_swept": 0,
                            "serving": _serving_version(home), "lock": None}
    for path, j in running_journals(home):
        if not is_orphaned(j):
            continue
        why = (f"interrupted: pid {j.get('pid')} died during stage {j.get('stage') or '?'}; "
               f"partial work discarded, {done['serving'] or 'the previous version'} still serving")
        j = mark(path, "interrupted", recovered_by=os.getpid(), reason=why)
        _write_interrupted_report(path, j, why)
        done["interrupted"].append({"sleep_id": j.get("sleep_id") or path.parent.name, "pid": j.get("pid"),
                                    "stage": j.get("stage"), "started_at": j.get("started_at")})
    done["staging_swept"] = sweep_staging(home)
    done["lock"] = lock_holder(home)
    return done


def abort_own(home: Path, pid: int | None = None, why: str = "aborted", status: str = "aborted") -> list[str]:
    """Called by a sleeper that stops early: mark its journals still `running` as `status`
    (aborted | failed), drop its staging dirs. The previous version keeps serving."""
    pid = os.getpid() if pid is None else pid
    ids = []
    for path, j in running_journals(home):
        if j.get("pid") == pid:
            j = mark(path, status, reason=why)
            _write_interrupted_report(path, j, why)
            ids.append(j.get("sleep_id") or path.parent.name)
    sweep_staging(home, own_pid=pid)
    return ids
