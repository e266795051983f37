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
lane keeps serving the version it had. If the server dies, the monitor restarts it on the base and
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
from typing import Any, Iterator

from agentsleep.models.registry import BASE_VERSION, Version
from agentsleep.serving.backend import ModelNotFound, SwapError, SwapReport, Unavailable

from .lora import adapter_chain, chain_adapter, chain_rank, lora_rank_for, sibling
from .process import start_ready
from .routing import Route, Server
from .weights import arch_signature, weights_dir

log = logging.getLogger("agentsleep.vllm.homes")
LANE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SharedBaseVLLM:
    """One managed vLLM server on a base model; every home is a lane with its own adapter."""

    def __init__(self, base_dir: str | Path, *, log_dir: str | Path | None = None, homes: int = 4,
                 max_lora_rank: int = 64, dtype: str = "float32", extra_args: list[str] | tuple[str, ...] = (),
                 max_model_len: int | None = None, start_timeout: float = 600, drain_timeout: float = 120,
                 restart: bool = True, max_restarts: int = 5, monitor_s: float = 0.5, python: str | None = None):
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
        self.max_restarts = max_restarts
        self.monitor_s = monitor_s
        self._api_key = secrets.token_urlsafe(24)
        self._cond = threading.Condition()
        self._op = threading.RLock()  # one start / restart / swap / close at a time
        self._abort = threading.Event()
        self._wake = threading.Event()
        self._monitor: threading.Thread | None = None
        self._closed = False
        self.server: Server | None = None
        self.state = "stopped"
        self.error: str | None = None
        self.restarts = 0
        self.lanes: dict[str, HomeLane] = {}
        self.events: list[dict[str, Any]] = []
        self.compose_dir = Path(tempfile.mkdtemp(prefix="agentsleep-homes-"))
        self.base_sig = arch_signature(self.base_dir)
        self.http = httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0),
                                 limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    # -- lifecycle ------------------------------------------------------------
    def lane(self, name: str) -> "HomeLane":
        """The lane for home `name` (created on first use)."""
        if not LANE_NAME.match(name or ""):
            raise ValueError(f"home name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        with self._cond:
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
            self.state = "starting"
            try:
                srv = self._spawn()
            except Exception as e:
                self.state, self.error = "failed", str(e).splitlines()[0]
                raise SwapError(f"the shared vLLM server did not start: {self.error}") from None
            with self._cond:
                self.server, self.state = srv, "ready"
                self._cond.notify_all()
            if self.restart_enabled and self._monitor is None:
                self._monitor = threading.Thread(target=self._watch, name="vllm-homes-monitor", daemon=True)
                self._monitor.start()
            self._event("start", url=srv.url, seconds=round(time.perf_counter() - t0, 2))
            return time.perf_counter() - t0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self.state = "stopped"
            self._cond.notify_all()
        self._abort.set()
        self._wake.set()
        with self._op:
            if self.server is not None and self.server.proc is not None:
                self.server.proc.stop()
            self.server = None
        self.http.close()
        shutil.rmtree(self.compose_dir, ignore_errors=True)

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

    # -- faults ---------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closed:
            self._wake.wait(self.monitor_s)
            self._wake.clear()
            srv = self.server
            if self._closed or srv is None or srv.proc is None or srv.proc.alive():
                continue
            if not self._op.acquire(timeout=0.2):
                continue
            try:
                if self.server is srv and not self._closed:
                    self._restart(srv)
            except Exception as e:  # noqa: BLE001 - the monitor must outlive any one failure
                log.exception("shared vLLM restart failed: %s", e)
            finally:
                self._op.release()

    def _restart(self, dead: Server) -> None:
        code = dead.proc.returncode if dead.proc else None
        log.error("shared vLLM server %s died (exit code %s); restarting", dead.url, code)
        self._event("died", url=dead.url, exit_code=code)
        with self._cond:
            self.state = "restarting"
            self._cond.notify_all()
        if dead.proc is not None:
            dead.proc.stop(grace=2)
        if self.restarts >= self.max_restarts:
            with self._cond:
                self.state, self.error = "failed", f"vLLM died {self.restarts + 1} times; see {dead.proc.log_path}"
                self._cond.notify_all()
            return
        try:
            srv = self._spawn()
        except Exception as e:  # noqa: BLE001
            with self._cond:
                self.restarts += 1
                self.error = f"restart failed: {str(e).splitlines()[0]}"
                self._cond.notify_all()
            self._wake.set()
            return
        with self._cond:
            self.server = srv
        for lane in list(self.lanes.values()):  # every home's adapter again, before requests resume
            lane._reattach(srv)
        with self._cond:
            self.restarts += 1
            self.state, self.error = "ready", None
            self._cond.notify_all()
        self._event("restarted", url=srv.url)

    def health(self) -> dict[str, Any]:
        srv = self.server
        return {"ready": self.state == "ready" and srv is not None and not self._closed, "state": self.state,
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
                return SwapReport(version=version.name, previous=version.name, kind="noop")
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
            with pool._cond:
                self.route = Route(srv, model, version)
                pool._cond.notify_all()
            pause_ms = (time.perf_counter() - t1) * 1000
            self.error = None
            self.swaps += 1
            if prev is not None:
                self._retire(prev)
        kind = "start" if prev is None else "adapter" if ad is not None else "route"
        pool._event("swap", home=self.name, version=version.name, kind=kind)
        return SwapReport(version=version.name, previous=prev.version.name if prev else None, kind=kind,
                          pause_ms=pause_ms, prepare_s=prepare, total_s=time.perf_counter() - t0,
                          detail={"home": self.name, "model": model, "rank": ad["r"] if ad else 0,
                                  "composed": ad["parts"] if ad else [], "shared_base": str(pool.base_dir)})

    def _retire(self, old: Route) -> None:
        """Unload the old adapter once the requests that started on it have finished (background)."""
        pool, srv = self.pool, old.server
        if old.model == srv.served_name or (self.route is not None and self.route.model == old.model):
            return

        def work() -> None:
            with pool._cond:
                pool._cond.wait_for(lambda: old.inflight == 0, timeout=pool.drain_timeout)
                srv.loras.pop(old.model, None)
            if pool.server is srv:
                with contextlib.suppress(Exception):  # harmless if it fails: vLLM evicts by LRU
                    pool._post("/v1/unload_lora_adapter", {"lora_name": old.model}, timeout=60)

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
            with self.pool._cond:
                self.route = Route(srv, model, route.version)
        except Exception as e:  # noqa: BLE001 - this home stays unavailable; the others go on
            self.error = f"reloading {route.version.name} after a restart failed: {str(e).splitlines()[0]}"
            with self.pool._cond:
                self.route = None

    # -- routing (what VLLMBackend calls) ---------------------------------------
    def lease(self, pin: str | None = None, timeout: float = 300) -> Route:
        pool = self.pool
        deadline = time.time() + timeout
        with pool._cond:
            while True:
                if pool._closed:
                    raise Unavailable("the shared vLLM server is shut down")
                if pool.state == "failed":
                    raise Unavailable(f"the shared vLLM server failed: {pool.error}")
                if pool.state == "ready" and self.route is not None:
                    break
                if pool.state == "ready" and self.error:
                    raise Unavailable(f"home {self.name} is not served: {self.error}")
                left = deadline - time.time()
                if left <= 0:
                    raise Unavailable(f"home {self.name}: the shared vLLM server is {pool.state}; retry shortly")
                pool._cond.wait(min(left, 1.0))
            route = self.route
            if pin and route.version.name != pin:
                raise ModelNotFound(f"model '{pin}' is no longer served for {self.name} (now {route.version.name})")
            route.inflight += 1
            route.server.inflight += 1
            return route

    def release(self, route: Route) -> None:
        with self.pool._cond:
            route.inflight -= 1
            route.server.inflight -= 1
            self.pool._cond.notify_all()

    @contextlib.contextmanager
    def acquire(self, pin: str | None = None, timeout: float = 300) -> Iterator[Route]:
        route = self.lease(pin, timeout)
        try:
            yield route
        finally:
            self.release(route)

    def recover(self, route: Route, timeout: float = 300) -> bool:
        """After a transport error: True once the lane routes to a live server other than the dead one."""
        srv, pool = route.server, self.pool
        if srv.proc is None:
            return False
        settle = time.time() + 3  # a killed server drops connections a moment before it can be reaped
        while srv.proc.alive() and time.time() < settle:
            time.sleep(0.1)
        if srv.proc.alive():
            return True
        pool._wake.set()
        deadline = time.time() + timeout
        with pool._cond:
            while time.time() < deadline and not pool._closed and pool.state != "failed":
                if self.route is not None and self.route.server is not srv and pool.state == "ready":
                    return True
                pool._cond.wait(0.5)
        return False

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
