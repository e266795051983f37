"""Many homes on one vLLM server: one shared base model, each home's sleeps served as its own LoRA.

    pool = SharedBaseVLLM(base_dir, log_dir=..., homes=3)   # one managed server on the shared base
    pool.start()
    backend = VLLMBackend(pool.lane("alice"))                # the usual backend, for one home
    backend.start(alice.registry.current())                  # alice's experts as one adapter

Why this is exact: a sleep publishes its expert (``adapter/``, a LoRA relative to its parent)
next to the merged weights, and merging a LoRA adds ``s*B@A``. A home that started from the
shared base and has only slept since (no grown blocks, no full-weights version) therefore serves
``base + compose(its experts)``, which `compose_adapters` writes as one LoRA. One engine holding
the base then answers every home, and vLLM batches requests for different adapters together
(multi-LoRA): N homes cost one copy of the base, not N.

Each home gets a `HomeLane`: the supervisor interface `VLLMBackend` talks to (lease, release,
recover, swap, health). A swap loads the home's new adapter under a fresh name, flips the lane's
route in one step (no pause, other homes untouched) and unloads the old adapter once its requests
are done. A version that is not such a chain (a grown model) is refused with a clear error; the
lane keeps serving the version it had. If the server dies, the monitor restarts it on the base (the
restart policy and steps of `restarts.py`, as for `VLLMSupervisor`) and
loads every lane's adapter again before requests resume.
"""
from __future__ import annotations

import contextlib
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agentsleep.models.registry import BASE_VERSION, Version
from agentsleep.serving.backend import SwapError, SwapReport

from .lora import adapter_chain, chain_adapter, chain_rank, lora_rank_for, sibling
from .process import start_ready
from .restarts import Monitor, RestartPolicy, restart_server
from .routing import Gate, Route, Server
from .supervisor import SwapKind
from .weights import arch_signature, weights_dir

log = logging.getLogger("agentsleep.vllm.homes")
LANE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SharedBaseVLLM:
    """One managed vLLM server on a base model; every home is a lane with its own adapter."""

    def __init__(self, base_dir: str | Path, *, log_dir: str | Path | None = None, homes: int = 4,
                 max_lora_rank: int = 64, dtype: str = "float32", extra_args: list[str] | tuple[str, ...] = (),
                 max_model_len: int | None = None, start_timeout: float = 600, drain_timeout: float = 120,
                 restart: bool = True, max_restarts: int = 5, restart_window_s: float = 600, monitor_s: float = 0.5,
                 python: str | None = None):
        import httpx

        self.base_dir = Path(base_dir).resolve()
        if not (self.base_dir / "config.json").is_file():
            raise SwapError(f"shared base {self.base_dir}: no config.json (not a Hugging Face model directory)")
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
        self.max_lora_rank = lora_rank_for(max_lora_rank)
        # a swap briefly holds a home's old and new adapter; vLLM keeps --max-cpu-loras of them loaded
        cpu_loras = max(2 * homes, 2)
        self.proc_kw = dict(max_model_len=max_model_len, lora=True, max_lora_rank=self.max_lora_rank,
                            max_loras=max(1, min(homes, 8)), dtype=dtype, python=python,
                            extra_args=["--max-cpu-loras", str(cpu_loras), *extra_args])
        self.start_timeout = start_timeout
        self.drain_timeout = drain_timeout
        self.restart_enabled = restart
        self.restart_policy = RestartPolicy(max_restarts, restart_window_s)  # as VLLMSupervisor's
        self._api_key = secrets.token_urlsafe(24)
        self.gate = Gate("the shared vLLM server")  # every lane's requests wait here
        self._op = threading.RLock()  # one start / restart / swap / close at a time
        self._abort = threading.Event()
        self.monitor = Monitor("vllm-homes-monitor", interval=monitor_s, op=self._op, dead=self._dead_server,
                               restart=self._restart, closed=lambda: self.gate.closed)
        self.server: Server | None = None
        self.restarts = 0
        self.lanes: dict[str, HomeLane] = {}
        self.events: list[dict[str, Any]] = []
        self.compose_dir = Path(tempfile.mkdtemp(prefix="agentsleep-homes-"))
        self.base_sig = arch_signature(self.base_dir)
        self.http = httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0),
                                 limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    @property
    def state(self) -> str:
        return self.gate.state

    @property
    def error(self) -> str | None:
        return self.gate.error

    # -- lifecycle ------------------------------------------------------------
    def lane(self, name: str) -> "HomeLane":
        """The lane for home `name` (created on first use)."""
        if not LANE_NAME.match(name or ""):
            raise ValueError(f"home name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        with self.gate.cond:
            if name not in self.lanes:
                self.lanes[name] = HomeLane(self, name)
            return self.lanes[name]

    def _spawn(self) -> Server:
        proc = start_ready(self.base_dir, self.log_dir / "vllm-homes-{port}.log", timeout=self.start_timeout,
                           abort=self._abort, api_key=self._api_key, **self.proc_kw)
        return Server(proc.url, self._api_key, proc, None, self.base_sig, self.base_dir)

    def start(self) -> float:
        """Start the server on the base; blocks until it answers. Returns the seconds it took."""
        with self._op:
            if self.server is not None:
                return 0.0
            t0 = time.perf_counter()
            self.gate.set(state="starting")
            try:
                srv = self._spawn()
            except Exception as e:
                self.gate.set(state="failed", error=str(e).splitlines()[0])
                raise SwapError(f"the shared vLLM server did not start: {self.error}") from None
            with self.gate.cond:
                self.server = srv
                self.gate.set(state="ready")
            if self.restart_enabled:
                self.monitor.start()
            self._event("start", url=srv.url, seconds=round(time.perf_counter() - t0, 2))
            return time.perf_counter() - t0

    def close(self) -> None:
        self.gate.set(closed=True, state="stopped")
        self._abort.set()
        self.monitor.wake()
        with self._op:
            if self.server is not None and self.server.proc is not None:
                self.server.proc.stop()
            self.server = None
        self.http.close()
        shutil.rmtree(self.compose_dir, ignore_errors=True)

    def _healthy(self, srv: Server) -> bool:
        try:
            return self.http.get(srv.url + "/health", timeout=1).status_code == 200
        except Exception:  # noqa: BLE001
            return False

    def _event(self, what: str, **kw: Any) -> None:
        self.events.append({"at": time.time(), "event": what, **kw})
        del self.events[:-50]

    # -- adapters -------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any], timeout: float = 120) -> None:
        srv = self.server
        if srv is None:
            raise SwapError("the shared vLLM server is not running")
        r = self.http.post(srv.url + path, json=body, headers=srv.headers, timeout=timeout)
        if r.status_code >= 400:
            raise SwapError(f"vLLM {path} answered {r.status_code}: {r.text[:300]}")

    def adapter_for(self, home: str, version: Version) -> dict[str, Any] | None:
        """The adapter that turns the shared base into `version` (None: `version` is the base).
        Raises SwapError when `version` cannot be served on this base."""
        own_base = version if version.is_base else sibling(version, BASE_VERSION)
        if own_base is None or weights_dir(own_base).resolve() != self.base_dir:
            where = weights_dir(own_base) if own_base is not None else "unknown"
            raise SwapError(f"home {home}: its base model is {where}, not the shared base {self.base_dir}; "
                            "serve it on its own with `agentsleep serve`")
        if version.is_base:
            return None
        chain = adapter_chain(version, BASE_VERSION)
        if not chain:
            raise SwapError(f"home {home}: {version.name} is not a chain of sleep adapters on the base (a grown "
                            "or fully retrained model); serve it on its own with `agentsleep serve`")
        rank = chain_rank(chain)
        if rank > self.max_lora_rank:
            raise SwapError(f"home {home}: {version.name} needs a rank-{rank} adapter ({len(chain)} sleeps), over "
                            f"--max-lora-rank {self.max_lora_rank}; raise it or serve the home on its own")
        return chain_adapter(chain, self.compose_dir / f"{home}-{version.name}")

    # -- faults (the shared Monitor and restart steps) -------------------------------
    def _dead_server(self) -> Server | None:
        """The managed server, when it died (None while it lives)."""
        srv = self.server
        if srv is None or srv.proc is None or srv.proc.alive():
            return None
        return srv

    def _restart(self, dead: Server) -> None:
        """Restart the server on the base and load every lane's adapter again before requests resume."""
        def install(srv: Server) -> None:
            with self.gate.cond:
                self.server = srv
            for lane in list(self.lanes.values()):
                lane._reattach(srv)
            self.restarts += 1

        restart_server(dead, gate=self.gate, policy=self.restart_policy, spawn=self._spawn, install=install,
                       event=self._event, wake=self.monitor.wake)

    def health(self) -> dict[str, Any]:
        srv = self.server
        return {"ready": self.state == "ready" and srv is not None and not self.gate.closed, "state": self.state,
                "base": str(self.base_dir), "url": srv.url if srv else None,
                "pid": srv.proc.pid if srv and srv.proc else None,
                "log": str(srv.proc.log_path) if srv and srv.proc else None,
                "max_lora_rank": self.max_lora_rank, "restarts": self.restarts, "error": self.error,
                "homes": {n: lane.summary() for n, lane in sorted(self.lanes.items())}, "events": self.events[-8:]}


class HomeLane:
    """One home on the shared server: the supervisor interface `VLLMBackend` needs."""

    def __init__(self, pool: SharedBaseVLLM, name: str):
        self.pool = pool
        self.name = name
        self.route: Route | None = None
        self.error: str | None = None
        self.swaps = 0

    @property
    def http(self) -> Any:
        return self.pool.http

    @property
    def version(self) -> Version | None:
        return self.route.version if self.route else None

    def _model(self, version: Version) -> str:
        return f"{self.name}.{version.name}"

    # -- swapping -------------------------------------------------------------
    def start(self, version: Version) -> SwapReport:
        self.pool.start()
        return self.swap(version)

    def swap(self, version: Version) -> SwapReport:
        """Serve `version` for this home next; other homes are untouched. On failure the previous version
        keeps serving and SwapError is raised."""
        pool = self.pool
        with pool._op:
            srv = pool.server
            if srv is None or pool.state != "ready":
                raise SwapError(f"the shared vLLM server is {pool.state}")
            prev = self.route
            if prev is not None and prev.version.name == version.name:
                return SwapReport(version=version.name, previous=version.name, kind=SwapKind.NOOP.value)
            t0 = time.perf_counter()
            try:
                ad = pool.adapter_for(self.name, version)
                model = srv.served_name
                if ad is not None:
                    model = self._model(version)
                    pool._post("/v1/load_lora_adapter", {"lora_name": model, "lora_path": ad["path"]})
                    srv.loras[model] = version
            except SwapError as e:
                self.error = str(e)
                pool._event("swap_failed", home=self.name, version=version.name, error=str(e)[:300])
                raise
            except Exception as e:  # noqa: BLE001
                self.error = f"{type(e).__name__}: {e}"
                raise SwapError(f"home {self.name}: loading {version.name} failed: {self.error}") from None
            prepare = time.perf_counter() - t0
            t1 = time.perf_counter()
            with pool.gate.cond:
                self.route = Route(srv, model, version)
                pool.gate.cond.notify_all()
            pause_ms = (time.perf_counter() - t1) * 1000
            self.error = None
            self.swaps += 1
            if prev is not None:
                self._retire(prev)
        kind = SwapKind.START if prev is None else SwapKind.ADAPTER if ad is not None else SwapKind.ROUTE
        pool._event("swap", home=self.name, version=version.name, kind=kind.value)
        return SwapReport(version=version.name, previous=prev.version.name if prev else None, kind=kind.value,
                          pause_ms=pause_ms, prepare_s=prepare, total_s=time.perf_counter() - t0,
                          detail={"home": self.name, "model": model, "rank": ad["r"] if ad else 0,
                                  "composed": ad["parts"] if ad else [], "shared_base": str(pool.base_dir)})

    def _retire(self, old: Route) -> None:
        """Unload the old adapter once the requests that started on it have finished (background)."""
        pool, srv = self.pool, old.server
        if old.model == srv.served_name or (self.route is not None and self.route.model == old.model):
            return

        def work() -> None:
            with pool.gate.cond:
                pool.gate.drain(old, pool.drain_timeout)
                srv.loras.pop(old.model, None)
            if pool.server is srv:
                with contextlib.suppress(Exception):  # harmless if it fails: vLLM evicts by LRU
                    pool._post("/v1/unload_lora_adapter", {"lora_name": old.model}, timeout=60)
            if self.route is None or self.route.version.name != old.version.name:
                # its composed copy (one per home and version) is written again if the version comes back
                shutil.rmtree(pool.compose_dir / f"{self.name}-{old.version.name}", ignore_errors=True)

        threading.Thread(target=work, name=f"retire-{self.name}", daemon=True).start()

    def _reattach(self, srv: Server) -> None:
        """After a restart: load this home's adapter on the new server and route there."""
        route = self.route
        if route is None:
            return
        try:
            ad = self.pool.adapter_for(self.name, route.version)
            model = srv.served_name
            if ad is not None:
                model = route.model
                self.pool._post("/v1/load_lora_adapter", {"lora_name": model, "lora_path": ad["path"]})
                srv.loras[model] = route.version
            with self.pool.gate.cond:
                self.route = Route(srv, model, route.version)
        except Exception as e:  # noqa: BLE001 - this home stays unavailable; the others go on
            self.error = f"reloading {route.version.name} after a restart failed: {str(e).splitlines()[0]}"
            with self.pool.gate.cond:
                self.route = None

    # -- routing (the pool's Gate, shared with VLLMSupervisor; what VLLMBackend calls) --
    def _current(self) -> Route | None:
        return self.route

    def _unserved(self) -> str | None:
        return f"home {self.name} is not served: {self.error}" if self.error else None

    def lease(self, pin: str | None = None, timeout: float = 300) -> Route:
        return self.pool.gate.lease(self._current, pin, timeout, home=self.name, unserved=self._unserved)

    def release(self, route: Route) -> None:
        self.pool.gate.release(route)

    def acquire(self, pin: str | None = None, timeout: float = 300) -> contextlib.AbstractContextManager[Route]:
        return self.pool.gate.acquire(self._current, pin, timeout, home=self.name, unserved=self._unserved)

    def recover(self, route: Route, timeout: float = 300) -> bool:
        """After a transport error: True once the lane routes to a live server other than the dead one."""
        return self.pool.gate.recover(route, self._current, wake=self.pool.monitor.wake, probe=self.pool._healthy,
                                      timeout=timeout)

    # -- state ----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        r = self.route
        return {"version": r.version.name if r else None, "model": r.model if r else None,
                "in_flight": r.inflight if r else 0, "swaps": self.swaps, "error": self.error}

    def health(self) -> dict[str, Any]:
        pool = self.pool.health()
        return {**self.summary(), "ready": pool["ready"] and self.route is not None, "state": pool["state"],
                "mode": "shared", "home": self.name, "shared": {k: pool[k] for k in
                                                                ("base", "url", "pid", "restarts", "error")}}

    def close(self) -> None:
        """A lane closes nothing: the pool owns the server (`SharedBaseVLLM.close`)."""
