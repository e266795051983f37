"""Run a vLLM OpenAI server for agentsleep and hot-swap model versions into it.

    sup = VLLMSupervisor(log_dir=home.root / "logs")      # or VLLMSupervisor(url=..., api_key=...) to attach
    sup.start(registry.current())                          # starts `python -m vllm.entrypoints.openai.api_server`
    with sup.acquire() as route:                           # where one request goes right now
        httpx.post(route.url + "/v1/chat/completions", json={..., "model": route.model}, headers=route.headers)
    sup.swap(registry.get("v0007"))                        # picks the cheapest safe kind of swap

Swap kinds, cheapest first (`plan()` picks one):

- route: the version is already loaded (its base weights, or its adapter):
  switch the route only.
- adapter: the version has ``adapter/`` (a peft LoRA) relative to the weights
  the server holds: ``POST /v1/load_lora_adapter`` under the version's name,
  then new requests name that adapter. No pause; the old model keeps
  answering the requests it has. Several sleeps since those weights (each an
  adapter on its parent) are composed into one adapter of the summed rank
  (LoRA merges add up), as long as it fits --max-lora-rank: an adapter
  costs no pause and no second copy of the weights.
- reload_weights: same architecture (config shapes equal). On a server we
  started, staged (adapters/vllm_reload.py, a vLLM worker extension): the new
  weights are loaded and processed into a shadow copy of the model while the
  old ones keep answering; then new requests are held, the ones in flight
  finish on the old weights, the shadow's tensors are swapped in
  (``agentsleep_commit``, milliseconds) and ``/reset_prefix_cache`` runs
  (required: the cache holds KV of the old weights). Costs one more copy of
  the weights until the commit. On an attached server, or if staging fails:
  vLLM's own ``/collective_rpc reload_weights``, which holds requests for the
  whole load (~2 s for 135M on 2 cores), wrapped in ``/pause?mode=wait`` ...
  ``/resume`` (other clients may use an attached server). Tied embeddings are
  not re-tied by vLLM 0.32's reload (lm_head keeps the old values: measured),
  so a version whose tied embedding matrix changed goes blue/green instead.
- blue_green: anything else (a grown model: more layers). A second server
  starts on the new version beside the old one, is health-checked, new
  requests switch to it in one step, and the old one is drained and stopped.

The kinds are the `SwapKind` table below. Requests get their route through
the `Gate` (routing.py) and a monitor thread restarts a managed server that
dies, on the version it was serving (restarts.py: giving up after
`max_restarts` deaths within `restart_window_s`); requests wait for it instead
of failing, and `health()` reports the restart. Managed servers bind to 127.0.0.1 only: the development
endpoints (/pause, /collective_rpc, adapter loading) must never be reachable
from outside the machine, and the HTTP layer of `agentsleep serve` never
forwards them.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import tempfile
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agentsleep.models.registry import Version
from agentsleep.procs import is_loopback
from agentsleep.serving.backend import SwapError, SwapReport

from .lora import adapter_chain, chain_adapter, chain_rank, lora_rank_for
from .process import start_ready
from .restarts import Monitor, RestartPolicy, restart_server
from .routing import OPEN_STATES, Gate, Route, Server
from .weights import arch_signature, read_config, tensor_digest, weights_dir

log = logging.getLogger("agentsleep.vllm")


class SwapKind(str, Enum):
    """How serving moves to a version (see the module docstring), cheapest first. A str, so a
    kind compares equal to its name and lands in a SwapReport as plain text."""

    NOOP = "noop"                      # already served
    ROUTE = "route"                    # already loaded (its base weights or its adapter): switch the route
    ADAPTER = "adapter"                # load one LoRA (the sleeps since the served weights, composed)
    RELOAD_WEIGHTS = "reload_weights"  # same shapes: replace the weights in place (staged when possible)
    BLUE_GREEN = "blue_green"          # anything else: a second server beside the first, then switch
    RELOAD_THEN_BLUE_GREEN = "reload_weights>blue_green"  # a reload that could not be done in place
    START = "start"                    # the first version on a server we start
    ATTACH = "attach"                  # the first version on a server someone else runs

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


class VLLMSupervisor:
    """Start (or attach to) a vLLM server, route requests to the current version, swap versions, restart."""

    def __init__(self, *, url: str | None = None, api_key: str | None = None, log_dir: str | Path | None = None,
                 max_model_len: int | None = None, kv_cache_bytes: int | None = None, lora: bool = True,
                 max_lora_rank: int = 64, max_loras: int = 2, extra_args: list[str] | tuple[str, ...] = (),
                 start_timeout: float = 600, drain_timeout: float = 120, restart: bool = True,
                 max_restarts: int = 5, restart_window_s: float = 600, monitor_s: float = 0.5,
                 python: str | None = None, dtype: str = "float32", pause_engine: bool | None = None,
                 staged_reload: bool | None = None):
        import httpx

        self.attach_url = url.rstrip("/") if url else None
        if self.attach_url and self.attach_url.endswith("/v1"):
            self.attach_url = self.attach_url[:-3]
        self.attach_key = api_key
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
        self.proc_kw = dict(max_model_len=max_model_len, kv_cache_bytes=kv_cache_bytes, lora=lora,
                            max_lora_rank=lora_rank_for(max_lora_rank), max_loras=max_loras,
                            extra_args=list(extra_args), python=python, dtype=dtype,
                            staged_reload=staged_reload)  # None: when the server runs on our interpreter
        self.lora = lora
        self.max_lora_rank = lora_rank_for(max_lora_rank)
        self.start_timeout = start_timeout
        self.drain_timeout = drain_timeout
        self.restart_enabled = restart
        self.restart_policy = RestartPolicy(max_restarts, restart_window_s)
        self.pause_engine = pause_engine  # vLLM /pause around reloads (default: attached servers only)
        self._api_key = secrets.token_urlsafe(24)  # for managed servers: only we can use their /v1 routes
        self.gate = Gate("the vLLM backend")       # where requests wait for self._route
        self._op = threading.RLock()             # one swap / restart / close at a time
        self._route: Route | None = None
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.events: list[dict[str, Any]] = []
        self._stage_error: str | None = None  # why the last same-shape reload could not be staged
        self.monitor = Monitor("vllm-monitor", interval=monitor_s, op=self._op, dead=self._dead_route,
                               restart=self._restart, closed=lambda: self.gate.closed)
        self._probe: tuple[Any, float, bool] | None = None
        self._abort = threading.Event()          # close() stops a start in progress
        self._compose_dir: Path | None = None    # composed adapters (removed on close)
        self.http = httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0),
                                 limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    # -- reading ------------------------------------------------------------
    @property
    def managed(self) -> bool:
        return self.attach_url is None

    @property
    def version(self) -> Version | None:
        r = self._route
        return r.version if r else None

    @property
    def route(self) -> Route | None:
        return self._route

    @property
    def state(self) -> str:
        return self.gate.state

    @property
    def error(self) -> str | None:
        return self.gate.error

    def _current(self) -> Route | None:
        return self._route

    def _set_route(self, route: Route | None) -> None:
        """Point new requests at `route` (one step: requests waiting for a route see it at once)."""
        with self.gate.cond:
            self._route = route
            self.gate.cond.notify_all()

    def _event(self, what: str, **kw: Any) -> None:
        self.events.append({"at": time.time(), "event": what, **kw})
        del self.events[:-50]

    # -- starting -----------------------------------------------------------
    def _spawn(self, version: Version) -> Server:
        d = weights_dir(version)
        proc = start_ready(d, self.log_dir / "vllm-{port}.log", timeout=self.start_timeout, abort=self._abort,
                           api_key=self._api_key, **self.proc_kw)
        return Server(proc.url, self._api_key, proc, version, arch_signature(d), d)

    def _attach(self, version: Version) -> Server:
        """Attach to a running server; learn which weights it holds from /v1/models."""
        url = self.attach_url or ""
        host = urlparse(url).hostname or ""
        srv = Server(url, self.attach_key, None, None, None, None)
        try:
            r = self.http.get(url + "/v1/models", headers=srv.headers, timeout=10)
        except Exception as e:  # noqa: BLE001
            raise SwapError(f"cannot reach vLLM at {url}: {e}") from None
        if r.status_code == 401:
            raise SwapError(f"vLLM at {url} refused the API key (serve.vllm_api_key)")
        if r.status_code != 200:
            raise SwapError(f"vLLM at {url}: GET /v1/models answered {r.status_code}")
        data = r.json().get("data") or []
        base = next((m for m in data if not m.get("parent")), data[0] if data else None)
        if base is None:
            raise SwapError(f"vLLM at {url} serves no model")
        srv.served_name = base["id"]
        root = Path(str(base.get("root") or ""))
        if root.is_dir() and (root / "config.json").is_file():
            srv.sig, srv.base_dir = arch_signature(root), root
            if root.resolve() == weights_dir(version).resolve():
                srv.base = version
        if not is_loopback(host):
            log.warning("attached vLLM at %s is not on loopback: its development endpoints (if enabled) "
                        "are reachable from the network", url)
        return srv

    def start(self, version: Version) -> SwapReport:
        """Start (or attach) serving `version`. Blocks until it answers."""
        with self._op:
            t0 = time.perf_counter()
            self.gate.set(state="starting")
            try:
                if self.managed:
                    srv = self._spawn(version)
                    kind = SwapKind.START
                else:
                    srv = self._attach(version)
                    kind = SwapKind.ATTACH
            except Exception as e:
                self.gate.set(state="failed", error=str(e).splitlines()[0])
                raise SwapError(str(e)) from None
            with self.gate.cond:
                self._set_route(Route(srv, srv.served_name, srv.base or version))
                self.gate.set(state="ready")
            rep = SwapReport(version=version.name, previous=None, kind=kind.value, prepare_s=time.perf_counter() - t0,
                             total_s=time.perf_counter() - t0, detail={"url": srv.url})
            if not self.managed:
                # /v1/models shows the path the server started from, not weights reloaded since:
                # put `version` there ourselves when the shapes allow it
                want = weights_dir(version)
                if srv.sig is not None and srv.sig != arch_signature(want):
                    self.close()
                    raise SwapError(f"the attached vLLM server holds a different architecture than {version.name} "
                                    f"(e.g. another layer count); restart it on {want}")
                try:
                    rep2 = self._swap_locked(version, force_reload=True)
                    rep.detail["initial_swap"] = rep2.to_dict()
                except SwapError as e:
                    if srv.base is None:
                        rep.detail["warning"] = (f"cannot check or set the attached server's weights ({e}); "
                                                 f"answers are labelled {version.name}")
                        log.warning(rep.detail["warning"])
                    elif srv.broken:  # refused until a swap succeeds: say so now, not only in /health
                        rep.detail["error"] = self.gate.error
                        log.error("attached vLLM server: %s", self.gate.error)
            if self.managed and self.restart_enabled:
                self.monitor.start()
            self._event(kind.value, version=version.name, seconds=round(rep.total_s, 2))
            return rep

    # -- routing (the shared Gate; what VLLMBackend calls) ----------------------
    def acquire(self, pin: str | None = None, timeout: float = 300) -> contextlib.AbstractContextManager[Route]:
        """The route for one request, held until the block ends (a swap drains held routes)."""
        return self.gate.acquire(self._current, pin, timeout)

    def lease(self, pin: str | None = None, timeout: float = 300) -> Route:
        return self.gate.lease(self._current, pin, timeout)

    def release(self, route: Route) -> None:
        self.gate.release(route)

    def recover(self, route: Route, timeout: float = 300) -> bool:
        """After a transport error on `route`: True when a retry may succeed (the server was restarted
        or is alive), False when there is nothing to wait for."""
        return self.gate.recover(route, self._current, wake=self.monitor.wake, probe=self._healthy, timeout=timeout)

    def _healthy(self, srv: Server) -> bool:
        try:
            return self.http.get(srv.url + "/health", timeout=1).status_code == 200
        except Exception:  # noqa: BLE001
            return False

    # -- swapping -----------------------------------------------------------
    def plan(self, version: Version, route: Route | None = None, *, adapters: bool = True) -> SwapKind:
        """The cheapest safe swap from what `route` serves to `version` (see the module docstring)."""
        route = route or self._route
        if route is None:
            return SwapKind.START
        srv = route.server
        if srv.broken and self.managed:  # nothing on it can be trusted: load the version whole
            return SwapKind.BLUE_GREEN
        if not srv.broken:  # (a broken attached server can only have its weights written again, whole)
            if route.version.name == version.name:
                return SwapKind.NOOP
            if srv.base is not None and version.name == srv.base.name:
                return SwapKind.ROUTE
            if version.name in srv.loras:
                return SwapKind.ROUTE
            if adapters and self.lora and srv.base is not None:
                chain = adapter_chain(version, srv.base.name)
                if chain and 0 < chain_rank(chain) <= self.max_lora_rank:
                    return SwapKind.ADAPTER  # one adapter, or the sleeps since the served weights composed into one
        new_dir = weights_dir(version)
        if srv.sig is not None and srv.sig == arch_signature(new_dir):
            tied = bool(read_config(new_dir).get("tie_word_embeddings"))
            if not tied or srv.base_dir is None or tensor_digest(srv.base_dir) == tensor_digest(new_dir):
                return SwapKind.RELOAD_WEIGHTS
        if srv.sig is None and not self.managed:
            return SwapKind.RELOAD_WEIGHTS  # unknown shapes on an attached server: try, it fails cleanly
        return SwapKind.BLUE_GREEN

    @property
    def needs_swap(self) -> bool:
        """The route's server may hold half-replaced weights: any swap, even to its own version, replaces it."""
        r = self._route
        return r is not None and r.server.broken is not None

    def swap(self, version: Version) -> SwapReport:
        """Serve `version` next. On failure the previous version keeps serving and SwapError is raised."""
        with self._op:
            if self._route is None:
                return self.start(version)
            return self._swap_locked(version)

    def _swap_locked(self, version: Version, force_reload: bool = False) -> SwapReport:
        prev = self._route
        kind = SwapKind.RELOAD_WEIGHTS if force_reload else self.plan(version)
        t0 = time.perf_counter()
        broken = prev is not None and prev.server.broken is not None
        if not broken:  # a broken one stays "failed" (requests refused at once) until its replacement is in
            self.gate.set(state="swapping")
        try:
            rep = self._do(kind, version, prev)
        except SwapError as e:
            self._event("swap_failed", version=version.name, kind=kind.value, error=str(e)[:300])
            raise
        except Exception as e:  # noqa: BLE001
            self._event("swap_failed", version=version.name, kind=kind.value, error=str(e)[:300])
            raise SwapError(f"{kind} swap to {version.name} failed: {type(e).__name__}: {e}") from None
        finally:
            with self.gate.cond:
                cur = self._route
                if cur is not None and cur.server.broken is not None:  # still on it: refused, with the reason
                    if self.gate.state != "failed":
                        self.gate.set(state="failed", error=f"{cur.server.broken}; requests are refused until a "
                                                            "swap succeeds")
                elif broken:
                    self.gate.set(state="ready", error=None)  # replaced: the reason is gone with it
                elif self.gate.state == "swapping":
                    self.gate.set(state="ready")
                self.gate.cond.notify_all()
        rep.total_s = time.perf_counter() - t0
        self._event("swap", version=version.name, kind=rep.kind, pause_ms=round(rep.pause_ms, 2))
        return rep

    def _do(self, kind: SwapKind, version: Version, prev: Route) -> SwapReport:
        """Carry out one swap of `kind` from `prev` to `version`."""
        if kind is SwapKind.NOOP:
            return SwapReport(version=version.name, previous=prev.version.name, kind=kind.value)
        if kind is SwapKind.ROUTE:
            return self._switch(version, prev, kind)
        if kind is SwapKind.ADAPTER:
            try:
                return self._adapter(version, prev)
            except Exception as e:  # noqa: BLE001 - e.g. an adapter vLLM cannot load: load weights instead
                log.warning("adapter swap to %s failed (%s); falling back", version.name, e)
                rep = self._do(self.plan(version, prev, adapters=False), version, prev)
                rep.detail["adapter_error"] = str(e)[:300]
                return rep
        if kind is SwapKind.RELOAD_WEIGHTS:
            return self._reload(version, prev)
        return self._blue_green(version, prev)

    def _post(self, srv: Server, path: str, body: dict[str, Any] | None = None, timeout: float = 600,
              params: dict[str, Any] | None = None) -> Any:
        r = self.http.post(srv.url + path, json=body, params=params, headers=srv.headers, timeout=timeout)
        if r.status_code == 404 and path in ("/pause", "/resume", "/collective_rpc", "/reset_prefix_cache"):
            raise SwapError(f"vLLM at {srv.url} has no {path}: start it with VLLM_SERVER_DEV_MODE=1 "
                            "(loopback only) to allow in-place weight reloads")
        if r.status_code == 404 and "lora" in path:
            raise SwapError(f"vLLM at {srv.url} has no {path}: start it with --enable-lora and "
                            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        if r.status_code >= 400:
            raise SwapError(f"vLLM {path} answered {r.status_code}: {r.text[:300]}")
        return r

    def _switch(self, version: Version, prev: Route, kind: SwapKind) -> SwapReport:
        srv = prev.server
        name = srv.served_name if srv.base is not None and version.name == srv.base.name else version.name
        t1 = time.perf_counter()
        self._set_route(Route(srv, name, version))
        pause = (time.perf_counter() - t1) * 1000
        return SwapReport(version=version.name, previous=prev.version.name, kind=kind.value, pause_ms=pause,
                          detail={"model": name})

    def _adapter(self, version: Version, prev: Route) -> SwapReport:
        srv = prev.server
        assert srv.base is not None
        t0 = time.perf_counter()
        chain = adapter_chain(version, srv.base.name) or []
        # several sleeps since the weights the server holds: one equivalent adapter
        ad = chain_adapter(chain, self.compose_dir / f"{version.name}-on-{srv.base.name}")
        self._post(srv, "/v1/load_lora_adapter", {"lora_name": version.name, "lora_path": ad["path"]}, timeout=120)
        srv.loras[version.name] = version
        prepare = time.perf_counter() - t0
        rep = self._switch(version, prev, SwapKind.ADAPTER)
        rep.prepare_s = prepare
        rep.detail.update(rank=ad["r"], base=srv.base.name, composed=ad["parts"])
        self._retire(prev)
        return rep

    @property
    def compose_dir(self) -> Path:
        if self._compose_dir is None:
            self._compose_dir = Path(tempfile.mkdtemp(prefix="agentsleep-lora-"))
        return self._compose_dir

    def _retire(self, old: Route) -> None:
        """Unload an adapter nobody routes to any more, once its requests finished (background)."""
        srv = old.server
        if old.model == srv.served_name or old.model not in srv.loras:
            return

        def work() -> None:
            with self.gate.cond:
                self.gate.drain(old, self.drain_timeout)
                if self._route is not None and self._route.model == old.model and self._route.server is srv:
                    return
                srv.loras.pop(old.model, None)
            try:
                self._post(srv, "/v1/unload_lora_adapter", {"lora_name": old.model}, timeout=60)
            except Exception as e:  # noqa: BLE001 - harmless: vLLM evicts by LRU anyway
                log.info("unloading adapter %s: %s", old.model, e)
                return  # still loaded: its files stay until close()
            if self._compose_dir is not None and srv.base is not None:  # a composed copy is one per version
                shutil.rmtree(self._compose_dir / f"{old.model}-on-{srv.base.name}", ignore_errors=True)

        threading.Thread(target=work, name="vllm-retire", daemon=True).start()

    def _rpc(self, srv: Server, method: str, timeout: float = 600, **kwargs: str) -> dict[str, Any]:
        """One worker method through vLLM's dev-mode /collective_rpc (one worker: its result)."""
        res = self._post(srv, "/collective_rpc", {"method": method, "kwargs": kwargs}, timeout=timeout).json()
        out = (res.get("results") or [None])[0]
        return out if isinstance(out, dict) else {"result": out}

    def _stage(self, srv: Server, new_dir: Path) -> float | None:
        """Build `new_dir`'s weights beside the served ones while they keep answering (see
        adapters/vllm_reload.py). Returns the seconds it took, or None when the server cannot
        stage (an attached server, an old build): then the reload runs in place, held."""
        self._stage_error = None
        if srv.proc is None or not srv.proc.staged_reload:
            return None
        t0 = time.perf_counter()
        try:
            r = self._rpc(srv, "agentsleep_stage", weights_path=str(new_dir))
            if not r.get("started"):
                raise SwapError(r.get("error") or str(r))
            deadline = time.monotonic() + self.start_timeout
            while not (st := self._rpc(srv, "agentsleep_staged")).get("done"):
                if time.monotonic() > deadline:
                    raise SwapError(f"staging {new_dir} took over {self.start_timeout:.0f} s")
                time.sleep(0.05)
            if st.get("error"):
                raise SwapError(st["error"])
            return time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - the in-place reload still works
            log.warning("staged reload of %s failed (%s); reloading in place instead", new_dir, e)
            # visible in /health's events and the swap report: the hold is the whole load this time
            self._stage_error = f"{type(e).__name__}: {e}"[:300]
            self._event("staging_failed", weights=str(new_dir), error=self._stage_error)
            with contextlib.suppress(Exception):
                self._rpc(srv, "agentsleep_discard")
            return None

    def _reload(self, version: Version, prev: Route) -> SwapReport:
        srv = prev.server
        new_dir = weights_dir(version)
        if srv.reloaded:
            # On a server that traced its graph, the first in-place weight change works (staged or vLLM's
            # own reload); a second one kept serving the old weights or wrong ones, with no error
            # (tests/test_vllm_serving.py). So the second loads beside the old server instead (only a
            # managed server is marked: an attached one reloads in place each time, as vLLM documents it).
            rep = self._blue_green(version, prev)
            rep.kind = SwapKind.RELOAD_THEN_BLUE_GREEN.value
            rep.detail["why"] = "this server's traced graph already had its weights replaced in place once"
            return rep
        stage_s = self._stage(srv, new_dir)  # off the request path: nothing is held yet
        t_hold = time.perf_counter()
        with self.gate.cond:
            self.gate.set(held=True)    # new requests wait here ...
            drained = self.gate.drain(srv, self.drain_timeout)
        t_drained = time.perf_counter()  # ... and the ones in flight finished on the old weights
        touched = False
        # A managed server answers nobody but us (its /v1 routes need our random key) and nothing is in
        # flight now, so vLLM's own pause/resume add time and no safety; an attached one may have other
        # clients: pause it (waiting for their requests) around the reload.
        engine_pause = self.pause_engine if self.pause_engine is not None else not self.managed
        if not drained:  # a generation still runs: the weights must not change under it
            log.warning("reload: %d requests still in flight after %.0f s; vLLM's pause waits for them",
                        srv.inflight, self.drain_timeout)
            engine_pause = True
        try:
            if engine_pause:
                self._post(srv, "/pause", params={"mode": "wait"})
            touched = True
            t_rpc = time.perf_counter()
            commit: dict[str, Any] = {}
            if stage_s is not None:
                commit = self._rpc(srv, "agentsleep_commit", weights_path=str(new_dir))
                srv.reloaded = bool(commit.get("copied"))  # an eager CPU model's commit re-points: no graph
            else:
                # a managed server here is a failed staging's fallback, whose graph may be traced: assume it
                # is (an attached server always reloads this way, as vLLM documents it)
                srv.reloaded = self.managed
                self._rpc(srv, "reload_weights", weights_path=str(new_dir))
            t_reset = time.perf_counter()
            for _ in range(100):  # fails while blocks are held; nothing runs now, so it settles fast
                if self._post(srv, "/reset_prefix_cache").json().get("success", True):
                    break
                time.sleep(0.02)
            else:
                raise SwapError("reset_prefix_cache kept failing")
            if engine_pause:
                self._post(srv, "/resume")
            srv.broken = None
            stale = list(srv.loras)
            srv.loras.clear()                       # adapters were relative to the old weights
            srv.base, srv.base_dir, srv.sig = version, new_dir, arch_signature(new_dir)
            with self.gate.cond:
                self._set_route(Route(srv, srv.served_name, version))
                self.gate.set(held=False)
            t_open = time.perf_counter()
        except Exception as e:
            if touched:
                srv.broken = f"weights reload failed midway on {srv.url}: {_first_line(e)}"
            if not touched or not self.managed:
                if engine_pause:
                    with contextlib.suppress(Exception):
                        self._post(srv, "/resume")
                if touched:  # an attached server whose weights may be half-replaced: refused until a reload works
                    self.gate.set(state="failed", error=f"{srv.broken}; requests are refused until a swap succeeds")
                self.gate.set(held=False)
                raise SwapError(str(e)) from None
            # the old weights may be half-overwritten: keep holding requests, bring up the new version beside
            log.warning("reload_weights failed (%s); switching by blue/green instead", e)
            if engine_pause:
                with contextlib.suppress(Exception):
                    self._post(srv, "/resume")
            try:
                rep = self._blue_green(version, prev, holding=True)
            except Exception as e2:
                # never back to the old server: its weights may be half-replaced. Refused until a swap succeeds
                # (the registry watcher retries; plan() then starts a fresh server for whatever is current)
                self.gate.set(state="failed", error=f"{srv.broken}, and starting {version.name} beside it failed "
                                                    f"({_first_line(e2)}); requests are refused until a swap succeeds")
                raise
            finally:
                self.gate.set(held=False)
            rep.kind = SwapKind.RELOAD_THEN_BLUE_GREEN.value
            rep.detail["reload_error"] = str(e)[:300]
            rep.pause_ms = (time.perf_counter() - t_hold) * 1000
            return rep
        for name in stale:
            with contextlib.suppress(Exception):
                self._post(srv, "/v1/unload_lora_adapter", {"lora_name": name}, timeout=60)
        return SwapReport(version=version.name, previous=prev.version.name, kind=SwapKind.RELOAD_WEIGHTS.value,
                          pause_ms=(t_open - t_hold) * 1000, drain_ms=(t_drained - t_hold) * 1000,
                          prepare_s=stage_s or 0.0,
                          detail={"reload_ms": round((t_open - t_drained) * 1000, 2),
                                  "reload_rpc_ms": round((t_reset - t_rpc) * 1000, 2),
                                  "reset_prefix_cache_ms": round((t_open - t_reset) * 1000, 2),
                                  "engine_paused": engine_pause, "weights": str(new_dir),
                                  "staged": stage_s is not None, "stage_error": self._stage_error, "commit": commit,
                                  "stage_s": None if stage_s is None else round(stage_s, 3)})

    def _blue_green(self, version: Version, prev: Route, holding: bool = False) -> SwapReport:
        if not self.managed:
            raise SwapError(f"{version.name} has a different architecture (e.g. a grown model): an attached "
                            "vLLM server cannot be switched in place; restart it on "
                            f"{weights_dir(version)} or let agentsleep manage vLLM")
        old = prev.server
        t0 = time.perf_counter()
        try:
            new = self._spawn(version)
        except Exception as e:  # noqa: BLE001 - the old server keeps serving
            raise SwapError(f"blue/green: the new server for {version.name} did not start: "
                            f"{str(e).splitlines()[0]}") from None
        prepare = time.perf_counter() - t0
        t1 = time.perf_counter()
        self._set_route(Route(new, new.served_name, version))
        pause = (time.perf_counter() - t1) * 1000
        t2 = time.perf_counter()
        self.gate.drain(old, self.drain_timeout)  # drain the old server, then stop it
        drained = time.perf_counter() - t2
        if old.proc is not None:
            old.proc.stop()
        return SwapReport(version=version.name, previous=prev.version.name, kind=SwapKind.BLUE_GREEN.value,
                          pause_ms=pause,
                          prepare_s=prepare, detail={"new_url": new.url, "old_drained_s": round(drained, 3),
                                                     "start_s": round(new.proc.ready_s or prepare, 2)})

    # -- faults (the shared Monitor and restart steps) -------------------------------
    def _dead_route(self) -> Route | None:
        """The route whose managed server died (None while it lives)."""
        route = self._route
        if route is None or route.server.proc is None or route.server.proc.alive():
            return None
        return route

    def _restart(self, route: Route) -> None:
        """Restart a dead server on the version it was serving (its adapter merged)."""
        self.last_exit_code = route.server.proc.returncode if route.server.proc else None

        def install(srv: Server) -> None:
            with self.gate.cond:
                self._set_route(Route(srv, srv.served_name, route.version))
                self.restarts += 1

        restart_server(route.server, gate=self.gate, policy=self.restart_policy,
                       spawn=lambda: self._spawn(route.version), install=install, event=self._event,
                       wake=self.monitor.wake, version=route.version.name)

    # -- state ----------------------------------------------------------------
    def health(self, probe: bool = True) -> dict[str, Any]:
        r = self._route
        srv = r.server if r else None
        out: dict[str, Any] = {
            "ready": self.state in OPEN_STATES and r is not None and not self.gate.closed,
            "state": self.state, "mode": "managed" if self.managed else "attached",
            "version": r.version.name if r else None, "model": r.model if r else None,
            "base_version": srv.base.name if srv and srv.base else None,
            "adapters": sorted(srv.loras) if srv else [], "url": srv.url if srv else self.attach_url,
            "pid": srv.proc.pid if srv and srv.proc else None,
            "log": str(srv.proc.log_path) if srv and srv.proc else None,
            "in_flight": srv.inflight if srv else 0, "held": self.gate.held,
            "restarts": self.restarts, "last_exit_code": self.last_exit_code, "error": self.error,
            "events": self.events[-8:],
        }
        if probe and srv is not None:
            cached = self._probe
            if cached and cached[0] is srv and time.monotonic() - cached[1] < 1.0:
                out["vllm_health"] = cached[2]
            else:
                try:
                    ok = self.http.get(srv.url + "/health", timeout=2).status_code == 200
                except Exception:  # noqa: BLE001
                    ok = False
                self._probe = (srv, time.monotonic(), ok)
                out["vllm_health"] = ok
        return out

    def close(self) -> None:
        self.gate.set(closed=True)
        self._abort.set()
        self.monitor.wake()
        with self._op:
            r = self._route
            if r is not None and r.server.proc is not None:
                r.server.proc.stop()
            self._route = None
            self.gate.set(state="stopped")
        self.http.close()
        if self._compose_dir is not None:
            import shutil

            shutil.rmtree(self._compose_dir, ignore_errors=True)
