"""Talking to a running daemon through files in the home (no sockets, no ports).

``<home>/daemon/``::

    daemon.lock              flock held by the live daemon for this home
    daemon.json              {"pid", "started_at", "homes", ...} of that daemon
    status.json              what the daemon last reported (heartbeat)
    state.json               what survives restarts (cron bookkeeping)
    requests/<id>.json       on-demand sleep requests waiting to be picked up
    requests/accepted/<id>.json   picked up by the daemon
    requests/done/<id>.json  the outcome: the sleep's summary

`agentsleep sleep-now` submits a request (:func:`submit_request`); when a daemon
accepts it, the daemon owns the sleep (it runs it now, or right after the sleep
in progress), so the command does not race it for the home, and waits for its
result (:func:`wait_request`), showing the stages.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from agentsleep.atomic import atomic_write_json, read_json
from agentsleep.procs import pid_alive


def daemon_dir(home: Path) -> Path:
    return Path(home) / "daemon"


def requests_dir(home: Path) -> Path:
    return daemon_dir(home) / "requests"


def daemon_info(home: Path) -> dict[str, Any] | None:
    """daemon.json of the live daemon serving `home`, or None when none runs."""
    d = daemon_dir(home)
    if not (d / "daemon.lock").exists():
        return None
    lock = FileLock(str(d / "daemon.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        info = read_json(d / "daemon.json") or {}
        if info.get("pid") and not pid_alive(info["pid"]):
            return None  # the lock's holder is not the pid on record: treat as down
        return info or {"pid": None}
    except OSError:
        return None
    lock.release()
    return None


def submit_request(home: Path, *, max_episodes: int | None = None, ack_timeout: float = 5.0,
                   by: str | None = None) -> str | None:
    """Queue an on-demand sleep for the live daemon. Returns the request id once the
    daemon has accepted it, or None (no daemon, or it did not answer within `ack_timeout`)."""
    home = Path(home).expanduser()
    if daemon_info(home) is None:
        return None
    rd = requests_dir(home)
    rd.mkdir(parents=True, exist_ok=True)
    rid = f"{time.time_ns()}-{uuid.uuid4().hex[:6]}"
    path = rd / f"{rid}.json"
    atomic_write_json(path, {"id": rid, "max_episodes": max_episodes, "requested_at": time.time(),
                             "pid": os.getpid(), "by": by or "request_sleep"})
    deadline = time.monotonic() + ack_timeout
    while time.monotonic() < deadline:
        if not path.exists():
            return rid  # picked up (accepted/ or done/)
        time.sleep(0.05)
    try:
        path.unlink()  # withdraw: the caller will sleep by itself
    except FileNotFoundError:
        return rid  # taken at the last moment
    return None


def request_sleep(home: Path, *, max_episodes: int | None = None, ack_timeout: float = 5.0) -> bool:
    """True if a live daemon accepted an on-demand sleep for `home` (then do not sleep yourself)."""
    return submit_request(home, max_episodes=max_episodes, ack_timeout=ack_timeout, by="sleep-now") is not None


def request_result(home: Path, request_id: str) -> dict[str, Any] | None:
    """The outcome of a request (the sleep's summary plus "reason"), or None while it waits/runs."""
    return read_json(requests_dir(home) / "done" / f"{request_id}.json")


def wait_request(home: Path, request_id: str, timeout: float | None = None, poll: float = 0.5,
                 on_progress: Any = None) -> dict[str, Any] | None:
    """Block until the request is done (or `timeout` s pass: None); `sleep-now` waits here.
    `on_progress()` is called at each poll (the CLI reads the daemon's status there to show the stage)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        r = request_result(home, request_id)
        if r is not None:
            return r
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if daemon_info(home) is None:
            return request_result(home, request_id)
        if on_progress is not None:
            try:
                on_progress()
            except Exception:  # noqa: BLE001 - showing progress must never end the wait
                pass
        time.sleep(poll)


def pending_requests(home: Path) -> list[Path]:
    try:
        return sorted(requests_dir(home).glob("*.json"))
    except OSError:
        return []
