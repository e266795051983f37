"""`agentsleep serve`: an OpenAI-compatible HTTP endpoint that follows the registry.

    GET  /health                 version served, backend state, recent swaps (no auth)
    GET  /v1/models              "agentsleep" (always the current version) and the version name
    POST /v1/chat/completions    chat, optionally with retrieved memories in the system turn
    POST /v1/completions         raw text completion
    (both stream with "stream": true, as server-sent events)

A `RegistryWatcher` thread polls the home's CURRENT pointer and swaps the
backend whenever a sleep (or a rollback) moves it; a failed swap leaves the
previous version serving and is retried after a back-off. Every answer's
"model" field (and the X-Agentsleep-Version header) names the version that
produced it.

Bad input never reaches the model: bodies over serve.max_request_bytes get
413, malformed JSON and invalid fields 400, unknown model names 404, prompts
longer than the context 400 (code context_length_exceeded), all as OpenAI
error objects. Dev-mode vLLM endpoints are never proxied.
"""
from __future__ import annotations

import collections
import json
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import Request

from ..config import ServeConfig
from ..errors import InputError
from ..models.generate import memory_system
from ..models.registry import Registry
from ..procs import is_loopback, wait_until
from .auth import require_bearer
from .backend import (APIError, Backend, BadRequest, ModelNotFound, Overloaded, Stream, SwapReport, TooLarge,
                      Unavailable)
from .protocol import ChatRequest, CompletionRequest, Message, parse

log = logging.getLogger("agentsleep.serve")

MODEL_ALIASES = ("agentsleep", "current", "default")
Recall = Callable[[str, int], list[Any]]


class RegistryWatcher:
    """Follow the registry's CURRENT pointer: swap the backend whenever it moves."""

    def __init__(self, registry: Registry, backend: Backend, *, poll_s: float = 0.5, retry_s: float = 30.0,
                 keep: int = 50):
        self.registry = registry
        self.backend = backend
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.reports: collections.deque[SwapReport] = collections.deque(maxlen=keep)
        self.target: str | None = None
        self.error: str | None = None
        self._failed: dict[str, float] = {}  # version -> time.monotonic() of its last failed swap
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.swapping = False

    def start(self) -> "RegistryWatcher":
        self._thread = threading.Thread(target=self._run, name="registry-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)

    def poke(self) -> None:
        """Check the pointer now instead of at the next poll."""
        self._wake.set()

    def record(self, rep: SwapReport) -> None:
        self.reports.append(rep)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("registry watcher: %s", e)
                self.error = f"{type(e).__name__}: {e}"
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def check(self) -> SwapReport | None:
        try:
            name = self.registry.current_name()
        except Exception as e:  # noqa: BLE001 - e.g. CURRENT briefly unreadable
            self.error = f"cannot read CURRENT: {e}"
            return None
        self.target = name
        cur = self.backend.version
        if cur is not None and cur.name == name and not getattr(self.backend, "needs_swap", False):
            self.error = None
            return None
        failed_at = self._failed.get(name)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_s:
            return None
        try:
            version = self.registry.get(name)
        except Exception as e:  # noqa: BLE001
            self.error = f"CURRENT names {name} but it cannot be read: {e}"
            self._failed[name] = time.monotonic()
            return None
        self.swapping = True
        t0 = time.perf_counter()
        try:
            log.info("swapping %s -> %s", cur.name if cur else None, name)
            rep = self.backend.swap(version) if cur is not None else self.backend.start(version)
            self._failed.pop(name, None)
            self.error = None
        except Exception as e:  # noqa: BLE001 - keep serving the old version
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.error("swap to %s failed, still serving %s: %s", name, cur.name if cur else None, msg)
            rep = SwapReport(version=name, previous=cur.name if cur else None, kind="failed", ok=False,
                             error=msg, total_s=time.perf_counter() - t0)
            self._failed[name] = time.monotonic()
            self.error = f"swap to {name} failed: {msg} (retrying every {self.retry_s:.0f} s)"
        finally:
            self.swapping = False
        self.record(rep)
        log.info("swap to %s: %s", name, rep.to_dict())
        return rep


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.served = 0
        self.failed = 0
        self.by_status: collections.Counter[int] = collections.Counter()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"in_flight": self.in_flight, "served": self.served, "failed": self.failed,
                    "errors_by_status": {str(k): v for k, v in sorted(self.by_status.items())}}

    def failure(self, status: int) -> None:
        with self.lock:
            self.failed += 1
            self.by_status[status] += 1

    def admit(self, limit: int) -> bool:
        """Count one more request in flight, unless `limit` already are."""
        with self.lock:
            if self.in_flight >= limit:
                return False
            self.in_flight += 1
            return True

    def end(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def answered(self) -> None:
        with self.lock:
            self.served += 1


def inject_memories(req: ChatRequest, memories: list[Any]) -> list[str]:
    """Put the recalled memories into the system turn (merged with one the client sent)."""
    texts = [m if isinstance(m, str) else m.prompt_text() if hasattr(m, "prompt_text") else getattr(m, "text", str(m))
             for m in memories]
    ids = [getattr(m, "id", None) for m in memories]
    block = memory_system(texts)
    if not block:
        return []
    first = req.messages[0]
    if first.role in ("system", "developer"):
        req.messages[0] = Message(role=first.role, content=f"{first.text()}\n\n{block}" if first.text() else block)
    else:
        req.messages.insert(0, Message(role="system", content=block))
    return [i for i in ids if i]


@dataclass
class AppState:
    """What the routes of one `create_app` share."""

    backend: Backend
    cfg: ServeConfig
    registry: Registry | None = None
    watcher: RegistryWatcher | None = None
    recall: Recall | None = None
    memory_k: int = 4
    default_max_tokens: int | None = None
    stats: _Stats = field(default_factory=_Stats)
    started: float = field(default_factory=time.time)  # wall clock: model cards' "created"

    def __post_init__(self) -> None:
        import anyio

        self.started_mono = time.monotonic()  # uptime
        # An admitted request's recall, generation and stream reads wait in worker threads (for the store,
        # for the model): they get threads of their own, so a full house never leaves /health or the home
        # API waiting for one.
        self.model_threads = anyio.CapacityLimiter(self.cfg.max_pending)

    async def on_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        import anyio

        return await anyio.to_thread.run_sync(fn, *args, limiter=self.model_threads)

    def check_auth(self, request: Request) -> None:
        require_bearer(request.headers.get("authorization", ""), [self.cfg.api_key or ""])

    def resolve_model(self, name: str | None) -> str | None:
        """The version a request pins (None: follow the current one)."""
        cur = self.backend.version
        if cur is None:
            raise Unavailable("the model is still loading; retry shortly")
        if name in (None, "") or name in MODEL_ALIASES:
            return None
        if name == cur.name:
            return cur.name
        raise ModelNotFound(f"model '{name}' does not exist here; this server serves 'agentsleep' "
                            f"(currently version {cur.name}); see GET /v1/models")

    def model_cards(self) -> list[dict[str, Any]]:
        cur = self.backend.version
        if cur is None:
            return []
        created = int(cur.manifest.get("created_at") or self.started)
        return [{"id": "agentsleep", "object": "model", "created": created, "owned_by": "agentsleep",
                 "root": cur.name, "parent": None},
                {"id": cur.name, "object": "model", "created": created, "owned_by": "agentsleep",
                 "root": cur.name, "parent": cur.parent}]


def create_app(backend: Backend, *, registry: Registry | None = None, watcher: RegistryWatcher | None = None,
               recall: Recall | None = None, serve_cfg: ServeConfig | None = None, memory_k: int = 4,
               default_max_tokens: int | None = None) -> Any:
    """The FastAPI application. `recall(query, k)` returns memories (objects with .text/.id, or strings);
    `default_max_tokens` (model.max_new_tokens) applies when a request sets no max_tokens."""
    from fastapi import FastAPI

    st = AppState(backend, serve_cfg or ServeConfig(), registry, watcher, recall, memory_k, default_max_tokens)
    app = FastAPI(title="agentsleep", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    app.state.watcher = watcher
    app.state.stats = st.stats
    add_error_handlers(app, st)
    add_completion_routes(app, st)
    add_model_routes(app, st)
    add_health_route(app, st)
    return app


def add_error_handlers(app: Any, st: AppState) -> None:
    """Every error as an OpenAI error object (and counted in /health's requests)."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error_response(e: APIError) -> JSONResponse:
        st.stats.failure(e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(route_error(request, e, "/v1/models, /v1/chat/completions, /v1/completions, /health"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(APIError(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))


def route_error(request: Request, e: Any, routes: str) -> APIError:
    """The web framework's 404 / 405 (a starlette HTTPException) as an OpenAI error object, naming `routes`."""
    msg = {404: f"no route {request.method} {request.url.path}; see {routes}",
           405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
    return APIError(msg, status=e.status_code, code="not_found" if e.status_code == 404 else None,
                    headers=dict(getattr(e, "headers", None) or {}))


def add_completion_routes(app: Any, st: AppState) -> None:
    """POST /v1/chat/completions and /v1/completions."""

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await answer(st, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(st, request, "completion")


def add_model_routes(app: Any, st: AppState) -> None:
    """GET /v1/models and /v1/models/{id}: "agentsleep" (the current version) and the version's name."""

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        st.check_auth(request)
        return {"object": "list", "data": st.model_cards()}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request) -> Any:
        st.check_auth(request)
        for card in st.model_cards():
            if card["id"] == model_id:
                return card
        raise ModelNotFound(f"model '{model_id}' does not exist here; see GET /v1/models")


def add_health_route(app: Any, st: AppState) -> None:
    """GET /health (no auth): 200 while a version answers, 503 otherwise."""
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    @app.get("/health")
    async def health() -> Any:
        backend, watcher, registry = st.backend, st.watcher, st.registry
        b = await run_in_threadpool(backend.health)
        cur = backend.version
        target = watcher.target if watcher else (registry.current_name() if registry else None)
        ready = bool(b.get("ready")) and cur is not None
        status = "ok" if ready else b.get("state", "starting")
        if ready and watcher and watcher.error:
            status = "degraded"
        body = {"status": status, "version": cur.name if cur else None, "registry_current": target,
                "following": bool(cur and target and cur.name == target), "backend_name": backend.name,
                "backend": b, "uptime_s": round(time.monotonic() - st.started_mono, 1),
                "requests": st.stats.snapshot()}
        if watcher:
            body["swapping"] = watcher.swapping
            body["error"] = watcher.error
            body["swaps"] = [r.to_dict() for r in list(watcher.reports)[-10:]]
        return JSONResponse(body, status_code=200 if ready else 503)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: at most `limit` bytes (413 beyond), UTF-8, well-formed (400 otherwise)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise TooLarge(f"request body of {int(declared)} bytes is over the limit of {limit} "
                               "(serve.max_request_bytes)", code="request_too_large")
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes (serve.max_request_bytes)",
                           code="request_too_large")
    if not buf:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        return json.loads(bytes(buf).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(f"the request body is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


async def answer(st: AppState, request: Request, kind: str) -> Any:
    """One completion request: checked, parsed, admitted (or refused when `serve.max_pending` are in flight),
    memories injected, answered by the backend."""
    st.check_auth(request)
    body = await read_json(request, st.cfg.max_request_bytes)
    req = parse(ChatRequest if kind == "chat" else CompletionRequest, body)
    pin = st.resolve_model(req.model)
    if req.temperature is None:
        req.temperature = 0.0  # deterministic by default (documented in protocol.py)
    req.set_default_limit(st.default_max_tokens)  # the same default length from both backends
    call = st.backend.chat if kind == "chat" else st.backend.completion
    if not st.stats.admit(st.cfg.max_pending):
        raise Overloaded(f"the server is busy: {st.cfg.max_pending} requests are already answering or waiting "
                         "(serve.max_pending); retry shortly")
    streaming = False
    try:
        extra = await recall_into(st, req) if kind == "chat" else None
        result = await st.on_model_thread(lambda: call(req, pin=pin))
        streaming = isinstance(result, Stream)
    finally:
        if not streaming:
            st.stats.end()
    st.stats.answered()
    return respond(st, result, extra)


async def recall_into(st: AppState, req: ChatRequest) -> dict[str, Any] | None:
    """Recall memories for the last user turn and put them into `req`; what was used, for the answer.
    On a model thread: an admitted request's recall may wait for the store (one store call at a time)."""

    use = req.use_memory if req.use_memory is not None else st.cfg.inject_memories
    if not use or st.recall is None:
        return None
    query = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
    if not query.strip():
        return None
    try:
        mems = await st.on_model_thread(st.recall, query, req.memory_k or st.memory_k)
        return {"memories_used": inject_memories(req, mems)}
    except Exception as e:  # noqa: BLE001 - answer without memories rather than fail
        log.warning("memory recall failed, answering without memories: %s", e)
        return {"memories_used": [], "memory_error": str(e)[:200]}


def respond(st: AppState, result: dict[str, Any] | Stream, extra: dict[str, Any] | None) -> Any:
    """A JSON answer, or a server-sent-event stream; both name the version that produced them."""
    from fastapi.responses import JSONResponse, StreamingResponse

    if isinstance(result, Stream):
        result.on_close(st.stats.end)
        return StreamingResponse(relay(st, result), media_type="text/event-stream",
                                 headers={"X-Agentsleep-Version": result.version or "", "Cache-Control": "no-cache"})
    if extra:
        result["agentsleep"] = extra
    return JSONResponse(result, headers={"X-Agentsleep-Version": str(result.get("model", ""))})


async def relay(st: AppState, stream: Stream) -> AsyncIterator[bytes]:
    """A backend's stream, read in a model worker thread; cancelled when the client goes away."""
    done = object()
    try:
        while True:
            chunk = await st.on_model_thread(next, stream, done)
            if chunk is done:
                break
            yield chunk
    finally:
        stream.cancel()


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, the load test, examples)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="agentsleep-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> "ServerThread":
        self.thread.start()
        if not wait_until(lambda: self.server.started, timeout, interval=0.02, stop=lambda: not self.thread.is_alive()):
            raise RuntimeError("HTTP server did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_backend(kind: str, home: Any, *, vllm_url: str | None = None, vllm_api_key: str | None = None,
                 vllm_args: list[str] | None = None, log_dir: Any = None) -> Backend:
    """The backend `agentsleep serve --backend KIND` uses for a home."""
    if kind == "transformers":
        from .transformers_backend import TransformersBackend

        return TransformersBackend(home.config.model)
    if kind == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend.for_home(home, url=vllm_url, api_key=vllm_api_key, extra_args=vllm_args or [],
                                    log_dir=log_dir)
    raise BadRequest(f"unknown backend {kind!r}: use transformers or vllm")


def serve_home(home: Any, *, backend: str | None = None, host: str | None = None, port: int | None = None,
               poll_s: float = 0.5, vllm_args: list[str] | None = None, say: Callable[[str], None] | None = None,
               use_memory: bool | None = None, api: Any = None) -> None:
    """Serve a home until interrupted: listen at once (/health says "starting"), start the backend on
    CURRENT, then follow the pointer. Raises ModelError if the backend cannot start at all.
    `api` (a ui.HomeAPI, which `agentsleep serve` passes) adds the home's own routes and dashboard and
    writes <home>/serve.json, so the CLI sends its commands here instead of loading everything itself."""
    import contextlib

    from ..errors import ModelError

    say = say or (lambda m: log.info(m))
    cfg = home.config.serve
    if use_memory is not None:
        cfg = cfg.model_copy(update={"inject_memories": use_memory})
    kind = backend or cfg.backend
    host = host or cfg.host
    port = port if port is not None else cfg.port
    if exposed_without_key(host, [cfg.api_key]):
        log.warning("serving on %s without serve.api_key: anyone who can reach this port can use the model", host)
    check_listen(host, port)  # fail now, not after a minute of starting vLLM
    registry = home.registry
    b = make_backend(kind, home, vllm_url=cfg.vllm_url, vllm_api_key=cfg.vllm_api_key, vllm_args=vllm_args,
                     log_dir=home.root / "logs")
    watcher = RegistryWatcher(registry, b, poll_s=poll_s)

    recall = api.chat_recall if api is not None else home_recall(home)  # under the home API's store lock
    app = create_app(b, registry=registry, watcher=watcher, recall=recall, serve_cfg=cfg,
                     memory_k=home.config.memory.recall_k, default_max_tokens=home.config.model.max_new_tokens)
    if api is not None:
        api.url = url_for(local_host(host), port)
        api.mount(app, cfg.api_key, loopback_only=is_loopback(host))
        if getattr(b, "engine", None) is not None:
            home._engine = b.engine  # `ask` through the server answers with the model already loaded
            api.model_ready.clear()  # ...once boot has loaded it (see HomeAPI.model_ready)
        else:  # vLLM: through the served model, not a second copy here
            from ..models.loader import resolve

            home._engine = BackendAnswers(b, lambda: resolve(registry.get("v0000").weights, progress=lambda m: None),
                                          home.config.model.max_new_tokens, watcher)

    def boot(url: str) -> None:
        first = registry.current()
        rep = b.start(first)
        if api is not None:
            api.model_ready.set()
        watcher.record(rep)
        watcher.start()
        say(f"ready: serving {first.name} with {kind} at {url}/v1 (model 'agentsleep'), "
            f"started in {rep.total_s:.1f} s; following {registry.root / 'CURRENT'}")

    def cleanup() -> None:
        watcher.stop()
        b.close()

    say(f"listening at {url_for(host, port)} (GET /health); starting the {kind} backend on {registry.current_name()}...")
    with api.serve_file() if api is not None else contextlib.nullcontext():
        failure = run_app(app, host, port, boot=boot, cleanup=cleanup)
    if failure:
        raise ModelError(f"the {kind} backend did not start: {failure}")


class BackendAnswers:
    """`Home.ask`'s engine under `serve --backend vllm`: the question goes to the served model in the answer
    layout (the prompt rendered here with the base's tokenizer, exactly as the in-process engine renders
    it), instead of a second copy of the model loaded in this process. The registry watcher moves the
    served version; `swap` waits for it.""" 

    def __init__(self, backend: Backend, base_dir: Callable[[], str], max_new_tokens: int,
                 watcher: "RegistryWatcher | None" = None, swap_timeout: float = 600.0):
        self.backend, self.base_dir, self.max_new_tokens = backend, base_dir, max_new_tokens
        self.watcher, self.swap_timeout = watcher, swap_timeout
        self._tok: Any = None
        self._lock = threading.Lock()

    @property
    def version(self) -> Any:
        return self.backend.version

    def swap(self, version: Any) -> None:
        """Wait until the served model is `version` (the watcher swaps it; a forget or a rollback must not
        be answered by the version it left)."""
        if self.watcher is not None:
            self.watcher.poke()
        if not wait_until(lambda: (v := self.backend.version) is not None and v.name == version.name,
                          self.swap_timeout, interval=0.1):
            from ..errors import ModelError

            raise ModelError(f"ask: the server still serves {getattr(self.backend.version, 'name', None)}, not "
                             f"{version.name}, after {self.swap_timeout:.0f} s; see GET /health")

    def answer(self, question: str, memories: list[str] | None = None, *,
               max_new_tokens: int | None = None) -> tuple[str, str]:
        from ..models import generate as gen

        with self._lock:
            if self._tok is None:
                from transformers import AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(self.base_dir())
            prompt = gen.chat(self._tok, question, system=gen.answer_system(memories or []))
        req = CompletionRequest(prompt=prompt, max_tokens=max_new_tokens, temperature=0.0,
                                add_special_tokens=False)  # the prompt is rendered whole, as in-process
        req.set_default_limit(self.max_new_tokens)  # shrinks to the room many memories leave, as in-process
        out = self.backend.completion(req)
        return out["choices"][0]["text"].strip(), out["model"]


def exposed_without_key(host: str, keys: list[str | None]) -> bool:
    """True when other machines can reach `host` ("" means every interface) and some home has no API key."""
    return not is_loopback(host) and not all(keys)


def check_listen(host: str, port: int) -> None:
    """A clear error now when `host:port` cannot be bound (not after minutes of starting a model)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host") from None


def local_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def url_for(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def home_recall(home: Any) -> Recall:
    """Memories for a request: the home's top-k episodes (none while the store is empty)."""
    def recall(query: str, k: int) -> list[Any]:
        if home.store.count() == 0:
            return []
        return home.recall(query, k)
    return recall


def run_app(app: Any, host: str, port: int, *, boot: Callable[[str], None], cleanup: Callable[[], None]) -> str | None:
    """Listen at once (/health answers "starting"), run `boot(url)` in a thread (loading a model takes
    minutes), serve until interrupted, then `cleanup()`. Returns why boot failed (the server then
    stops), or None."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    failure: list[str] = []

    def run_boot() -> None:
        try:
            boot(url_for(host, port))
        except Exception as e:  # noqa: BLE001
            failure.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
            server.should_exit = True

    threading.Thread(target=run_boot, name="serve-boot", daemon=True).start()
    prev = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        # uvicorn re-raises the SIGTERM it caught once it has shut down; by default that kills the process
        # before `cleanup` runs, and a vLLM server it started (its own session) would outlive it
        def on_term(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        prev = signal.signal(signal.SIGTERM, on_term)
    try:
        server.run()
    finally:
        if prev is not None:  # a second SIGTERM must not cut the cleanup short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup()
        finally:
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
    return failure[0] if failure else None
