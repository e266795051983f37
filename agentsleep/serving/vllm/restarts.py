"""Restarting a managed vLLM server that died: when to give up, the monitor thread, the steps.

The single-home supervisor and the shared-base pool restart the same way: the monitor notices
the death (or is woken by a request that saw its connection reset), the gate turns to
"restarting" so requests wait instead of failing, a new server starts, and requests resume.
A server that keeps dying is given up on: more than `max_restarts` deaths within `window_s`
seconds turn the gate "failed".
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Generic, TypeVar

from .routing import Gate, Server

log = logging.getLogger("agentsleep.vllm")
T = TypeVar("T")


class RestartPolicy:
    """Deaths counted in a sliding time window (on `clock`, monotonic by default)."""

    def __init__(self, max_restarts: int = 5, window_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.clock = clock
        self.deaths: list[float] = []

    def died(self) -> int:
        """Count one death now; returns the deaths within the window, this one included."""
        now = self.clock()
        self.deaths = [t for t in self.deaths if now - t < self.window_s] + [now]
        return len(self.deaths)

    @property
    def recent(self) -> int:
        now = self.clock()
        return sum(1 for t in self.deaths if now - t < self.window_s)

    def may_restart(self) -> bool:
        """False once the server died more than `max_restarts` times within the window."""
        return self.recent <= self.max_restarts

    def last_try(self) -> bool:
        """True when a restart that fails now leaves no further try (the next death gives up)."""
        return self.recent >= self.max_restarts


class Monitor(Generic[T]):
    """A thread that looks every `interval` seconds (or at once when woken) for a dead server and,
    holding `op` (the owner's one-operation-at-a-time lock), hands it to `restart`.

    `dead()` returns what died (a route, a server) or None; it is asked again under `op`, since
    a swap that held the lock may have replaced the server meanwhile.
    """

    def __init__(self, name: str, *, interval: float, op: Any, dead: Callable[[], T | None],
                 restart: Callable[[T], None], closed: Callable[[], bool]):
        self.name = name
        self.interval = interval
        self.op = op
        self.dead = dead
        self.restart = restart
        self.closed = closed
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look now (a request saw the server go away; closing)."""
        self._wake.set()

    def _run(self) -> None:
        while not self.closed():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self.closed() or self.dead() is None:
                continue
            if not self.op.acquire(timeout=0.2):
                continue  # a swap is running; look again soon
            try:
                what = self.dead()
                if what is not None and not self.closed():
                    self.restart(what)
            except Exception as e:  # noqa: BLE001 - the monitor must outlive any one failure
                log.exception("%s: vLLM restart failed: %s", self.name, e)
            finally:
                self.op.release()


def restart_server(dead: Server, *, gate: Gate, policy: RestartPolicy, spawn: Callable[[], Server],
                   install: Callable[[Server], None], event: Callable[..., None], wake: Callable[[], None],
                   **detail: Any) -> Server | None:
    """The steps after `dead` died: count it, stop what is left of it, start a new server (unless
    it died too often), `install` it (point requests at it), open the gate. Returns the new server,
    or None when there is none (given up, or the start failed: the monitor tries again)."""
    code = dead.proc.returncode if dead.proc else None
    deaths = policy.died()
    gate.set(state="restarting")
    log.error("vLLM server %s died (exit code %s); restarting", dead.url, code)
    event("died", url=dead.url, exit_code=code, **detail)
    if dead.proc is not None:
        dead.proc.stop(grace=2)
    if not policy.may_restart():
        gate.set(state="failed", error=f"vLLM died {deaths} times in {policy.window_s:.0f} s (last exit code {code}); "
                                       f"see {dead.proc.log_path if dead.proc else 'its log'}")
        event("gave_up", error=gate.error)
        return None
    t0 = time.perf_counter()
    try:
        srv = spawn()
    except Exception as e:  # noqa: BLE001
        gate.set(state="failed" if policy.last_try() else "restarting",
                 error=f"restart failed: {str(e).splitlines()[0]}")
        event("restart_failed", error=gate.error)
        wake()
        return None
    install(srv)
    gate.set(state="ready", error=None)
    event("restarted", url=srv.url, seconds=round(time.perf_counter() - t0, 2), exit_code=code, **detail)
    return srv
