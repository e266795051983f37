"""Where a request goes: a vLLM server, a route on it, and the gate requests pass to get one.

The single-home supervisor and the per-home lanes of a shared server route the same way: a
request leases a route (waiting while a server starts, restarts or a reload holds requests),
releases it when its answer is done, and after a transport error asks `recover` whether a retry
can succeed. `Gate` is that logic, once.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from agentsleep.models.registry import Version
from agentsleep.procs import wait_until
from agentsleep.serving.backend import ModelNotFound, Unavailable

from .process import SERVED_NAME, VLLMProcess


@dataclass(eq=False)
class Server:
    """A vLLM server we talk to: managed (a process we own) or attached (a URL)."""

    url: str
    api_key: str | None
    proc: VLLMProcess | None
    base: Version | None          # the version whose full weights the server holds (None: unknown)
    sig: dict[str, Any] | None    # their architecture signature
    base_dir: Path | None
    served_name: str = SERVED_NAME
    loras: dict[str, Version] = field(default_factory=dict)
    inflight: int = 0
    reloaded: bool = False   # its weights were already replaced in place once, on a traced graph
    broken: str | None = None  # why its weights may be half-replaced (a reload failed midway): never serve as is

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def alive(self) -> bool:
        return self.proc is None or self.proc.alive()


@dataclass(eq=False)
class Route:
    """Where one request goes: a server and the model name that serves `version` there."""

    server: Server
    model: str
    version: Version
    inflight: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def headers(self) -> dict[str, str]:
        return self.server.headers


OPEN_STATES = ("ready", "swapping")  # the states in which requests get a route


class Gate:
    """The one place requests wait for a route: a condition, the serving state, in-flight counts.

    `what` names the server in errors ("the vLLM backend", "the shared vLLM server"). A lease
    waits while the state is starting or restarting, or while a reload holds requests (`held`);
    it fails at once when the gate is closed or failed. Route changes happen under `cond` and end
    with `cond.notify_all()`, so waiting requests see them at once.
    """

    def __init__(self, what: str):
        self.what = what
        self.cond = threading.Condition()
        self.state = "stopped"
        self.error: str | None = None
        self.closed = False
        self.held = False

    @property
    def open(self) -> bool:
        return not self.closed and not self.held and self.state in OPEN_STATES

    def set(self, **changes: Any) -> None:
        """Change state/error/held/closed and wake everyone waiting."""
        with self.cond:
            for k, v in changes.items():
                if k not in ("state", "error", "held", "closed"):
                    raise AttributeError(k)
                setattr(self, k, v)
            self.cond.notify_all()

    def lease(self, current: Callable[[], Route | None], pin: str | None = None, timeout: float = 300, *,
              home: str | None = None, unserved: Callable[[], str | None] | None = None) -> Route:
        """Wait (up to `timeout` s) until `current()` is a route and the gate is open, then count one
        request on it. `pin` names the version the caller wants (ModelNotFound if that is not the one
        served); `home` names the lane in errors; `unserved()` says why there is no route for good."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.closed:
                    raise Unavailable(f"{self.what} is shut down")
                if self.state == "failed":
                    raise Unavailable(f"{self.what} failed: {self.error}")
                route = current()
                if route is not None and self.open:
                    break
                if route is None and self.open and unserved is not None and (why := unserved()):
                    raise Unavailable(why)
                left = deadline - time.monotonic()
                if left <= 0:
                    prefix = f"home {home}: " if home else ""
                    raise Unavailable(f"{prefix}{self.what} is {self.state}; retry shortly")
                self.cond.wait(min(left, 1.0))
            if pin and route.version.name != pin:
                for_home = f" for {home}" if home else ""
                hint = "" if home else "; ask for 'agentsleep' to follow the current version"
                raise ModelNotFound(f"model '{pin}' is no longer served{for_home} (now {route.version.name}){hint}")
            route.inflight += 1
            route.server.inflight += 1
            return route

    def release(self, route: Route) -> None:
        with self.cond:
            route.inflight -= 1
            route.server.inflight -= 1
            self.cond.notify_all()

    @contextlib.contextmanager
    def acquire(self, current: Callable[[], Route | None], pin: str | None = None, timeout: float = 300,
                **kw: Any) -> Iterator[Route]:
        """`lease` ... `release` around a block."""
        route = self.lease(current, pin, timeout, **kw)
        try:
            yield route
        finally:
            self.release(route)

    def drain(self, what: Route | Server, timeout: float) -> bool:
        """Wait until nothing is in flight on `what` (a route or a server); False after `timeout` s."""
        with self.cond:
            return self.cond.wait_for(lambda: what.inflight == 0, timeout=timeout)

    def recover(self, route: Route, current: Callable[[], Route | None], *, wake: Callable[[], None],
                probe: Callable[[Server], bool] | None = None, timeout: float = 300) -> bool:
        """After a transport error on `route`: True when a retry may succeed (the server is fine, or
        requests route to a new server now), False when there is nothing to wait for."""
        srv = route.server
        if srv.proc is None:
            return False  # attached: nobody here restarts it

        # a killed server resets its connections a moment before its exit can be seen: look again
        def settled() -> str | None:
            if not srv.proc.alive():
                return "dead"
            return "fine" if probe is not None and probe(srv) else None

        if wait_until(settled, 3.0, interval=0.1) != "dead" and srv.proc.alive():
            return True  # a transient error
        wake()  # let the monitor notice now

        def moved() -> bool:
            r = current()
            return self.closed or self.state == "failed" or r is None or (r.server is not srv and self.open)

        deadline = time.monotonic() + timeout
        with self.cond:
            while not moved():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
            r = current()
            return not self.closed and self.state != "failed" and r is not None and r.server is not srv
