"""`agentsleep serve-homes`: many agent homes behind one OpenAI endpoint and one vLLM server.

    POST /v1/chat/completions    {"model": "<home>", ...}: that home's current version
    POST /v1/completions         the same, raw completion
    GET  /v1/models              one model per home (id = the home's directory name)
    /homes/<home>/v1/...         each home's own `agentsleep serve` API (model "agentsleep")
    GET  /health                 the shared server and every home's version (no auth)

The homes must share their base model (the same `model.base` weights). Each home's sleeps are
served as its own LoRA adapter on that one base (`agentsleep.serving.vllm.lanes`); each home
keeps its own registry watcher, memories (injected as by `serve`) and `serve.api_key`. A home
that cannot be served on the shared base (a grown model) answers 503 with the reason, while the
others keep going.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import Request  # module level: FastAPI resolves route annotations from the module

from ..errors import InputError, ModelError
from .auth import require_bearer
from .backend import APIError, BadRequest, ModelNotFound, TooLarge
from .server import (RegistryWatcher, check_listen, create_app, exposed_without_key, home_recall, route_error,
                     run_app, url_for)

log = logging.getLogger("agentsleep.serve")
_DISPATCH = ("/v1/chat/completions", "/v1/completions")


class HomesApp:
    """ASGI app: `/v1/...` requests go to the home their "model" names; the rest to `root`."""

    def __init__(self, root: Any, homes: dict[str, Any], *, max_request_bytes: int):
        self.root = root
        self.homes = homes
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _DISPATCH:
            return await self.root(scope, receive, send)
        try:
            body = await self._read(receive)
            home, body = self._route(body)
        except APIError as e:
            return await _send_json(send, e.status, e.body())
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # a disconnect, later

        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.homes[home](dict(scope, headers=headers), replay, send)

    async def _read(self, receive: Any) -> bytes:
        buf = bytearray()
        while True:
            msg = await receive()
            buf += msg.get("body", b"")
            if len(buf) > self.max_request_bytes:
                raise TooLarge(f"request body is over the limit of {self.max_request_bytes} bytes",
                               code="request_too_large")
            if not msg.get("more_body"):
                return bytes(buf)

    def _route(self, raw: bytes) -> tuple[str, bytes]:
        """Which home a request is for; the body rewritten to ask that home for its current version."""
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"set \"model\" to the home to ask: one of {', '.join(sorted(self.homes))}",
                             param="model")
        home, _, version = name.partition("@")  # "alice@v0003" pins a version, as "v0003" does on `serve`
        if home not in self.homes:
            raise ModelNotFound(f"model '{name}' is not a home served here; see GET /v1/models "
                                f"({', '.join(sorted(self.homes))})")
        body["model"] = version or "agentsleep"
        return home, json.dumps(body).encode()


async def _send_json(send: Any, status: int, obj: dict[str, Any]) -> None:
    data = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_homes_app(homes: dict[str, dict[str, Any]], pool: Any, *, max_request_bytes: int = 1_000_000) -> HomesApp:
    """`homes[name]` holds "app" (that home's `create_app`), "backend", "watcher" and "api_key"."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    started, started_mono = time.time(), time.monotonic()  # wall clock for "created", monotonic for uptime
    root = FastAPI(title="agentsleep homes", docs_url=None, redoc_url=None, openapi_url=None)
    keys = [h["api_key"] for h in homes.values() if h.get("api_key")]
    for name, h in homes.items():
        root.mount(f"/homes/{name}", h["app"])

    def check_auth(request: Request) -> None:
        """Listing the homes needs a key of any home that has one."""
        require_bearer(request.headers.get("authorization", ""), keys, hint="serve.api_key of a home")

    @root.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @root.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        # the same OpenAI error object as every other answer, not the web framework's {"detail": ...}
        return await _api_error(request, route_error(request, e, "/v1/models, /v1/chat/completions, "
                                                     "/v1/completions, /health, and each home's own routes under /homes/<name>"))

    @root.get("/v1/models")
    async def models(request: Request) -> Any:
        check_auth(request)
        data = []
        for name, h in sorted(homes.items()):
            v = h["backend"].version
            data.append({"id": name, "object": "model", "owned_by": "agentsleep",
                         "created": int(v.manifest.get("created_at") or started) if v else int(started),
                         "root": v.name if v else None, "parent": None})
        return {"object": "list", "data": data}

    @root.get("/health")
    async def health() -> Any:
        shared = await run_in_threadpool(pool.health)
        body: dict[str, Any] = {"homes": {}, "shared": {k: v for k, v in shared.items() if k != "homes"}}
        for name, h in sorted(homes.items()):
            w, v = h["watcher"], h["backend"].version
            lane = shared["homes"].get(name, {})
            body["homes"][name] = {"version": v.name if v else None, "registry_current": w.target,
                                   "following": bool(v and v.name == w.target),
                                   "error": w.error or (None if v else lane.get("error")),
                                   "swaps": [r.to_dict() for r in list(w.reports)[-5:]]}
        ok = [bool(x["version"]) and not x["error"] for x in body["homes"].values()]
        body["status"] = "ok" if shared["ready"] and all(ok) else "degraded" if shared["ready"] and any(ok) \
            else shared["state"] if not shared["ready"] else "degraded"
        body["uptime_s"] = round(time.monotonic() - started_mono, 1)
        return JSONResponse(body, status_code=200 if shared["ready"] and any(ok) else 503)

    return HomesApp(root, {n: h["app"] for n, h in homes.items()}, max_request_bytes=max_request_bytes)


def shared_base(homes: dict[str, Any]) -> Path:
    """The one base model directory every home starts from; a clear error when they differ."""
    from ..models.loader import resolve

    bases: dict[Path, list[str]] = {}
    for name, home in homes.items():
        d = Path(resolve(home.registry.get("v0000").weights, progress=lambda m: None)).resolve()
        bases.setdefault(d, []).append(name)
    if len(bases) > 1:
        detail = "; ".join(f"{', '.join(n)}: {d}" for d, n in bases.items())
        raise InputError(f"serve-homes: the homes do not share one base model ({detail}); "
                         "serve each group with its own serve-homes, or a home alone with `agentsleep serve`")
    return next(iter(bases))


def home_names(paths: list[Path]) -> dict[str, Path]:
    """Each home's name on the endpoint: its directory name (must be unique and URL-safe)."""
    from .vllm import LANE_NAME  # the rule lives with the lanes

    out: dict[str, Path] = {}
    for p in paths:
        name = p.resolve().name
        if not LANE_NAME.match(name):
            raise InputError(f"serve-homes: home directory name {name!r} cannot be a model name; use letters, "
                             "digits, '.', '_' or '-'")
        if name in out:
            raise InputError(f"serve-homes: two homes are named {name!r} ({out[name]} and {p}); rename one")
        out[name] = p
    return out


def serve_homes(paths: list[Path], *, host: str = "127.0.0.1", port: int = 8421, poll_s: float = 0.5,
                vllm_args: list[str] | None = None, max_lora_rank: int | None = None, use_memory: bool | None = None,
                say: Callable[[str], None] | None = None) -> None:
    """Serve `paths` until interrupted: one vLLM on their shared base, one adapter per home."""
    from ..home import Home
    from .vllm import SharedBaseVLLM, vllm_available
    from .vllm_backend import VLLMBackend

    say = say or (lambda m: log.info(m))
    if not paths:
        raise InputError("serve-homes: name at least one home directory")
    if why := vllm_available():
        raise ModelError(f"serve-homes needs vLLM: {why}")
    names = home_names(paths)
    check_listen(host, port)
    opened = {n: Home.open(p, writable=False, create=False) for n, p in names.items()}
    try:
        base = shared_base(opened)
        first = next(iter(opened.values()))
        rank = max_lora_rank or max(4 * max(h.config.sleep.seed.lora_r for h in opened.values()), 8)
        pool = SharedBaseVLLM(base, log_dir=first.root / "logs", homes=len(opened), max_lora_rank=rank,
                              dtype=first.config.model.dtype, extra_args=list(vllm_args or []))
        entries: dict[str, dict[str, Any]] = {}
        for name, home in opened.items():
            cfg = home.config.serve
            if use_memory is not None:
                cfg = cfg.model_copy(update={"inject_memories": use_memory})
            backend = VLLMBackend(pool.lane(name))
            watcher = RegistryWatcher(home.registry, backend, poll_s=poll_s)
            app = create_app(backend, registry=home.registry, watcher=watcher, recall=home_recall(home),
                             serve_cfg=cfg, memory_k=home.config.memory.recall_k,
                             default_max_tokens=home.config.model.max_new_tokens)
            entries[name] = {"app": app, "backend": backend, "watcher": watcher, "api_key": cfg.api_key}
        if exposed_without_key(host, [e["api_key"] for e in entries.values()]):
            log.warning("serving on %s with homes that have no serve.api_key: anyone who can reach this port "
                        "can use them", host)
        app = create_homes_app(entries, pool, max_request_bytes=max(h.config.serve.max_request_bytes
                                                                     for h in opened.values()))

        def boot(url: str) -> None:
            secs = pool.start()
            for e in entries.values():
                e["watcher"].start()  # its first check starts the home's lane (errors stay per home)
            say(f"ready: {len(entries)} homes on one vLLM over {base} (started in {secs:.1f} s) at {url}/v1; "
                f"model = home name: {', '.join(entries)}")

        def cleanup() -> None:
            for e in entries.values():
                e["watcher"].stop()
            pool.close()

        say(f"listening at {url_for(host, port)} (GET /health); starting vLLM on the shared base {base}...")
        failure = run_app(app, host, port, boot=boot, cleanup=cleanup)
        if failure:
            raise ModelError(f"the shared vLLM server did not start: {failure}")
    finally:
        for h in opened.values():
            h.close()
