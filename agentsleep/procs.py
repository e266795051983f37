"""Processes and waiting: free ports, pid checks, stopping a process group, polling on a monotonic clock.

Every server agentsleep starts (Chroma, vLLM, seeding workers, the daemon) goes
through these few functions, so "is it alive", "stop it" and "wait for it" mean
the same thing everywhere. Deadlines use ``time.monotonic()``: a wall-clock jump
(NTP, suspend) must not end or stretch a wait.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1. An empty host means "every interface", so it is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def pid_alive(pid: int | None, since: float | None = None) -> bool:
    """True if `pid` runs, is not a zombie, and (with `since`, a wall-clock time) did not start
    after `since`, which would mean the pid was reused by a newer process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (macOS): os.kill is all we know
    if stat[0] == "Z":
        return False
    if since is not None:
        started = _start_time(stat)
        if started is not None and started > float(since) + 2.0:
            return False
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from field 3 (state) on; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(stat: list[str]) -> float | None:
    """A process's wall-clock start time from its /proc stat fields."""
    try:
        ticks = int(stat[19])  # field 22 (starttime); stat[0] is field 3
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to process group `pid`; False if it is already gone (or not ours)."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def terminate_group(proc: subprocess.Popen, grace: float = 15.0, kill_wait: float = 10.0) -> int | None:
    """SIGTERM `proc`'s process group (started with start_new_session=True), SIGKILL it after
    `grace` seconds; children that outlived the leader are killed too. Returns the exit code."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=kill_wait)
    signal_group(proc.pid, signal.SIGKILL)  # engine cores and workers can outlive a crashed leader
    return proc.poll()


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.1,
               stop: Callable[[], bool] | None = None) -> T | None:
    """Call `check` until it returns something truthy (returned) or `timeout` seconds pass (None).
    `stop`, when given and true, ends the wait early (a process that died, a closed pool)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline or (stop is not None and stop()):
            return None
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
