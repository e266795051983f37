"""The home's own JSON API and the local dashboard, mounted on `agentsleep serve`.

    GET  /agentsleep/status            home.status() (+ "cli_path": "server")
    POST /agentsleep/remember|recall|ask|forget     the CLI commands' arguments, their --json answers
    POST /agentsleep/sleep             start a sleep (a worker process, or the daemon's queue)
    GET  /agentsleep/sleep/{id}        its progress, then its result
    GET  /agentsleep/episodes          list / search with filters (kind, source, session, namespace, time)
    GET  /agentsleep/episodes/{id}     one episode with its provenance
    GET  /agentsleep/versions          the lineage with gate metrics;  GET /agentsleep/diff?a=&b=
    POST /agentsleep/rollback          serve an earlier version (the UI asks for confirmation first)
    GET  /agentsleep/sleeps            every sleep's report summary;  GET /agentsleep/sleeps/{id}/report.html
    GET  /agentsleep/daemon            the daemon's schedule and next run
    GET  /agentsleep/capabilities      what the dashboard may offer (forget needs the store's writer)
    GET  /ui                           the dashboard: one static page on the routes above

The CLI talks to these routes when a server runs for its home (agentsleep/client.py),
so the server is the home's one writer: it holds the episode store and the loaded
models, and a command costs a request instead of a process full of imports.

Every route asks for serve.api_key when one is set: the ``Authorization: Bearer`` header,
or the cookie ``/ui/login`` sets (HttpOnly, SameSite=Strict) so a browser can use the
dashboard. Errors are ``{"error": {"message", "type", "exit_code"}}`` with the
`AgentsleepError` class name, so the CLI raises the very error it would have raised itself.
"""
from __future__ import annotations

import hmac
import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from fastapi import Request

from ..errors import AgentsleepError, InputError
from .auth import require_bearer

log = logging.getLogger("agentsleep.ui")

STATIC = Path(__file__).parent / "static"
COOKIE = "agentsleep_key"
PREFIX = "/agentsleep"
MAX_LIST = 1000


class HomeAPI:
    """The commands' bodies over one open Home (the store and the models stay loaded)."""

    def __init__(self, home: Any, *, read_only_reason: str | None = None, sleeper: Callable[[Any], dict] | None = None):
        from .mcp import MemoryServer

        self.home = home
        self.root = Path(home.root).resolve()
        self.mcp = MemoryServer(home, read_only_reason=read_only_reason, sleeper=sleeper)  # its sleep runs
        self.store_lock = self.mcp._store_lock
        self.model_lock = self.mcp._model_lock
        self.url: str | None = None
        self.model_ready = threading.Event()  # cleared by serve_home until its backend has loaded the model:
        # two threads importing transformers at once can fail, and embedding imports it too
        self.model_ready.set()
        # The store's calls run on one thread of their own with one torch thread: a query or a memory
        # embeds in ~15 ms that way, but took ~0.5 s with two threads on a busy two-core machine (the
        # threads wait for each other at every op). They are serialised by the store lock anyway.
        self.store_pool = ThreadPoolExecutor(1, thread_name_prefix="agentsleep-store")

    def store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` as a store call: on store_pool's thread (one torch thread)."""
        # the first embedding imports transformers too: not while boot imports it for the model
        if not self.model_ready.wait(timeout=600):
            raise AgentsleepError("the server is still loading its model; retry shortly")
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)  # this thread only (see store_pool)
        return fn(*args)

    def chat_recall(self, query: str, k: int) -> list[Any]:
        """Memories for a /v1 chat request: a store call like the others, under the store lock, so it
        never runs beside a remember or a forget of the home API."""
        from .server import home_recall

        def run() -> list[Any]:
            with self.store_lock:
                return home_recall(self.home)(query, k)
        return self.store_pool.submit(self.store_call, run).result()

    def mount(self, app: Any, api_key: str | None, *, loopback_only: bool = True) -> None:
        mount(app, self, api_key, loopback_only=loopback_only)

    def serve_file(self) -> "ServeFile":
        return ServeFile(self.root, self.url or "")

    def _writable(self, what: str) -> None:
        self.mcp._writable(what)

    def status(self) -> dict[str, Any]:
        with self.store_lock:
            s = self.home.status()
        s["cli_path"] = "server"
        s["server"] = self.url
        return s

    def remember(self, b: dict[str, Any]) -> dict[str, Any]:
        self._writable("remember")
        text = _req(b, "text", str)
        kw = {"kind": b.get("kind", "fact"), "source": b.get("source", "user"), "session": b.get("session"),
              "trust": "untrusted" if b.get("untrusted") else "trusted", "namespace": b.get("namespace", "default"),
              "event_time": _when(b.get("event_time"), "--event-time"), "speaker": b.get("speaker")}
        with self.store_lock:
            return self.home.remember(text, **kw).model_dump()

    def recall(self, b: dict[str, Any]) -> list[dict[str, Any]]:
        q = _req(b, "query", str)
        with self.store_lock:
            eps = self.home.recall(q, b.get("k"), kind=b.get("kind"), session=b.get("session"),
                                   since=_when(b.get("since"), "--since"), until=_when(b.get("until"), "--until"),
                                   namespace=b.get("namespace", "default"), neighbours=b.get("neighbours"))
        return [e.public() for e in eps]

    def ask(self, b: dict[str, Any]) -> dict[str, Any]:
        q = _req(b, "question", str)
        n = b.get("max_new_tokens")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4096):
            raise InputError(f"ask: max_new_tokens must be a whole number from 1 to 4096, got {n!r}")
        k = b.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise InputError(f"ask: k must be a whole number of at least 1, got {k!r}")
        if not self.model_ready.wait(timeout=600):  # the server shares its model with ask: load it once
            raise AgentsleepError("ask: the server's model is still loading; retry shortly")
        with self.model_lock:
            return self.home.ask(q, use_memory=not b.get("no_memory"), k=k,
                                 max_new_tokens=n, namespace=b.get("namespace", "default"))

    def forget(self, b: dict[str, Any]) -> dict[str, Any]:
        self._writable("forget")
        with self.store_lock:
            return self.home.forget(b.get("episode_id"), query=b.get("query"), k=_int(b.get("k", 1), "k"),
                                    fallback=bool(b.get("fallback")), namespace=b.get("namespace", "default"))

    def sleep(self, b: dict[str, Any]) -> dict[str, Any]:
        m = b.get("max_episodes")
        if m is not None and (not isinstance(m, int) or m < 1):
            raise InputError("sleep-now: max_episodes must be a positive integer")
        return self.mcp.sleep_now(m)

    def episodes(self, p: dict[str, str]) -> dict[str, Any]:
        """Newest first; `q` searches by meaning and words (recall) instead of listing."""
        limit = min(_int(p.get("limit") or 200, "limit"), MAX_LIST)
        since, until = _when(p.get("since"), "since"), _when(p.get("until"), "until")
        kind, session, source = p.get("kind") or None, p.get("session") or None, p.get("source") or None
        ns = p.get("namespace") or None
        unfiltered = None  # the total from the listing itself, when nothing filters it
        with self.store_lock:
            if p.get("q"):
                eps = self.home.recall(p["q"], min(limit, 100), kind=kind, session=session, source=source,
                                       since=since, until=until, namespace=ns or "default")
            else:
                eps = self.home.episodes(kind=kind, session=session, namespace=ns)
                eps = [e for e in eps if e.chunk_index == 0]
                unfiltered = len(eps) if kind is None and session is None and ns is None else None
                eps = [e for e in eps if (source is None or e.source == source)
                       and (since is None or _naive(e.when()) >= _naive(since))
                       and (until is None or _naive(e.when()) < _naive(until))][::-1][:limit]
            total = unfiltered if unfiltered is not None else self.home.store.tally()["memories"]  # as listed
        return {"episodes": [e.public() for e in eps], "total": total}

    def episode(self, eid: str) -> dict[str, Any]:
        with self.store_lock:
            return self.home.get(eid).public()

    def versions(self) -> list[dict[str, Any]]:
        return self.home.history()

    def diff(self, a: str, b: str | None) -> dict[str, Any]:
        return self.home.diff(a, b or None)

    def rollback(self, b: dict[str, Any]) -> dict[str, Any]:
        v = _req(b, "version", str)
        with self.model_lock:
            return {"current_version": self.home.rollback(v).name}

    def sleeps(self) -> list[dict[str, Any]]:
        """Every sleep, newest first: its report's summary (or the journal while it runs)."""
        from ..atomic import read_json

        out = []
        for d in sorted((self.root / "sleeps").glob("*/"), reverse=True):
            r = read_json(d / "report.json") or read_json(d / "journal.json") or {}
            if not isinstance(r, dict):
                continue
            m = r.get("metrics") or {}
            out.append({"sleep_id": d.name, "status": r.get("status"), "version": r.get("version"),
                        "parent_version": r.get("parent_version"), "episodes": len(r.get("episodes") or []),
                        "recall_before": m.get("recall_before"), "recall_after": m.get("recall_after"),
                        "drift_kl": m.get("drift_kl"), "stage": r.get("stage"),
                        "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
                        "report_html": (d / "report.html").is_file()})
        return out

    def report_path(self, sid: str) -> Path:
        return report_path(self.root, sid)

    def capabilities(self) -> dict[str, Any]:
        """What the dashboard may offer: forget only where this server holds the store."""
        return {"writable": bool(self.home.writable), "read_only_reason": self.mcp.read_only_reason}

    def daemon(self) -> dict[str, Any]:
        from agentsleep.daemon import daemon_status

        return daemon_status(self.root)


def report_path(root: Path, sid: str) -> Path:
    """sleeps/<sid>/report.html (sid 'latest': the newest that has one); a clear error otherwise."""
    sleeps = Path(root) / "sleeps"
    if sid == "latest":
        found = sorted(sleeps.glob("*/report.html"))
        if not found:
            raise InputError(f"report: no sleep in {root} has a report.html yet; run `agentsleep sleep-now`")
        return found[-1]
    if not sid or "/" in sid or "\\" in sid or sid.startswith("."):
        raise InputError(f"report: {sid!r} is not a sleep id (see `agentsleep status` or /agentsleep/sleeps)")
    p = sleeps / sid / "report.html"
    if not p.is_file():
        if (sleeps / sid / "report.json").is_file():
            from ..sleep.report_html import write_html  # a sleep from before report.html existed

            if write_html(sleeps / sid):
                return p
        raise InputError(f"report: no report.html for sleep {sid!r} in {root}")
    return p


def _int(v: Any, key: str) -> int:
    """A whole number of at least 1 from a body or query value, else a 400 (never a 500)."""
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise InputError(f"'{key}' must be a whole number, got {v!r}") from None
    if n < 1 or isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise InputError(f"'{key}' must be a whole number of at least 1, got {v!r}")
    return n


def _req(b: dict[str, Any], key: str, typ: type) -> Any:
    v = b.get(key)
    if not isinstance(v, typ):
        raise InputError(f"'{key}' is required ({typ.__name__})")
    return v


def _when(v: Any, flag: str) -> datetime | None:
    from ..home import parse_since

    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise InputError(f"{flag}: expected an ISO date/time string")
    return parse_since(v, flag)


def _naive(t: datetime) -> datetime:
    """`t` as naive UTC, for comparing times given with and without a zone (naive = local time)."""
    from datetime import timezone

    return t.astimezone(timezone.utc).replace(tzinfo=None)


def error_body(e: BaseException) -> dict[str, Any]:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return {"error": {"message": msg, "type": type(e).__name__, "exit_code": getattr(e, "exit_code", 1)}}


def check_key(request: Request, key: str | None) -> None:
    """Bearer header, or the dashboard's cookie; raises Unauthorized (401) otherwise. Without a key
    only this machine may use these routes (they remember, forget and roll back)."""
    if not key:
        from ..procs import is_loopback
        from .backend import Unauthorized

        client = request.client.host if request.client else ""
        if client and not is_loopback(client):
            raise Unauthorized(f"the home API answers other machines only with serve.api_key set (request from {client})",
                               code="invalid_api_key")
        return
    cookie = request.cookies.get(COOKIE, "")
    if cookie and hmac.compare_digest(cookie.encode(), key.encode()):
        return
    require_bearer(request.headers.get("authorization", ""), [key])


def check_host(host: str) -> None:
    """Without a key: only requests addressed to a loopback name (a page on another site cannot rebind its
    name to 127.0.0.1 and then read or drive this server as if it were its own origin)."""
    from urllib.parse import urlsplit

    from ..procs import is_loopback
    from .backend import Forbidden

    if not is_loopback(urlsplit(f"//{host}").hostname or ""):
        raise Forbidden(f"without serve.api_key this server answers only requests addressed to this machine "
                        f"(Host {host[:80]!r})", code="foreign_host")


def check_origin(request: Request, key: str | None, body: bool) -> None:
    """What a web page in the user's browser must not do to the home API (it remembers, forgets and rolls
    back): a request from another origin (a page on any site, or on another port of this machine) is refused;
    without a key, so is one addressed to a name other than this machine's (DNS rebinding); and a body must
    be sent as application/json, which a page can only do cross-origin after a preflight this API never
    grants."""
    from urllib.parse import urlsplit

    from .backend import BadRequest, Forbidden

    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    bearer = bool(key) and request.headers.get("authorization", "").lower().startswith("bearer ")
    # a Bearer header (checked by check_key) is one a page cannot attach cross-origin without a preflight;
    # behind a reverse proxy the browser's origin is the proxy's public name (X-Forwarded-Host)
    own = {host, request.headers.get("x-forwarded-host", "").split(",")[0].strip()} - {""}
    if origin and not bearer and urlsplit(origin).netloc not in own:
        raise Forbidden(f"the home API refuses requests from another origin ({origin[:80]})", code="cross_origin")
    if not key:
        check_host(host)
    if body and request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest("send the request body as application/json", code="content_type")


def mount(app: Any, api: HomeAPI, api_key: str | None, *, loopback_only: bool = True) -> None:
    """Add the /agentsleep JSON routes and /ui to a `create_app` application. `loopback_only`: the server
    listens on this machine only, so without a key every route answers only requests addressed to a
    loopback name (one served to the network without a key was exposed on purpose, and says so)."""
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.concurrency import run_in_threadpool

    from .backend import APIError

    if not api_key and loopback_only:
        @app.middleware("http")
        async def loopback_names_only(request: Request, call_next: Callable[..., Any]) -> Any:
            # every route without a key: /v1 answers with recalled memories in its prompts, /ui shows them
            try:
                check_host(request.headers.get("host", ""))
            except APIError as e:
                return JSONResponse(e.body(), status_code=e.status)
            return await call_next(request)

    import asyncio

    async def call(request: Request, fn: Callable[..., Any], *args: Any, body: bool = False, store: bool = False) -> Any:
        check_key(request, api_key)
        check_origin(request, api_key, body)
        t0 = time.perf_counter()
        try:
            if body:
                raw = await request.body()
                try:
                    data = json.loads(raw or b"{}")
                except (ValueError, UnicodeDecodeError):
                    raise InputError("the request body is not a JSON object") from None
                if not isinstance(data, dict):
                    raise InputError("the request body is not a JSON object")
                args = (data, *args)
            if store:
                res = await asyncio.get_running_loop().run_in_executor(api.store_pool, api.store_call, fn, *args)
            else:
                res = await run_in_threadpool(fn, *args)
        except AgentsleepError as e:
            code = 400 if getattr(e, "exit_code", 1) == 2 else 409
            return JSONResponse(error_body(e), status_code=code)
        # the server's own time, so `bench cli` can tell the CLI's share from the work's (e.g. generation)
        timing = {"Server-Timing": f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"}
        return JSONResponse(json.loads(json.dumps(res, default=str, ensure_ascii=False)), headers=timing)

    @app.get(f"{PREFIX}/status")
    async def status(request: Request) -> Any:
        return await call(request, api.status, store=True)

    for name in ("remember", "recall", "ask", "forget", "rollback"):
        def make(fn: Callable[..., Any], store: bool) -> Callable[..., Any]:
            async def route(request: Request) -> Any:
                return await call(request, fn, body=True, store=store)
            return route
        app.post(f"{PREFIX}/{name}")(make(getattr(api, name), name in ("remember", "recall", "forget")))

    @app.post(f"{PREFIX}/sleep")
    async def sleep(request: Request) -> Any:
        return await call(request, api.sleep, body=True)

    @app.get(f"{PREFIX}/sleep/{{run_id}}")
    async def sleep_status(run_id: str, request: Request) -> Any:
        return await call(request, api.mcp.sleep_status, run_id)

    @app.get(f"{PREFIX}/episodes")
    async def episodes(request: Request) -> Any:
        return await call(request, api.episodes, dict(request.query_params), store=True)

    @app.get(f"{PREFIX}/episodes/{{eid}}")
    async def episode(eid: str, request: Request) -> Any:
        return await call(request, api.episode, eid, store=True)

    @app.get(f"{PREFIX}/versions")
    async def versions(request: Request) -> Any:
        return await call(request, api.versions)

    @app.get(f"{PREFIX}/diff")
    async def diff(request: Request) -> Any:
        q = request.query_params
        return await call(request, api.diff, q.get("a", ""), q.get("b"))

    @app.get(f"{PREFIX}/sleeps")
    async def sleeps(request: Request) -> Any:
        return await call(request, api.sleeps)

    @app.get(f"{PREFIX}/capabilities")
    async def capabilities(request: Request) -> Any:
        return await call(request, api.capabilities)

    @app.get(f"{PREFIX}/daemon")
    async def daemon(request: Request) -> Any:
        return await call(request, api.daemon)

    @app.get(f"{PREFIX}/sleeps/{{sid}}/report.html")
    async def report(sid: str, request: Request) -> Any:
        check_key(request, api_key)
        check_origin(request, api_key, False)  # a report holds memories: no other site (DNS rebinding) reads it
        try:
            p = await run_in_threadpool(api.report_path, sid)
        except AgentsleepError as e:
            return JSONResponse(error_body(e), status_code=404)
        return FileResponse(p, media_type="text/html")

    # -- the dashboard --
    @app.get("/ui")
    async def ui(request: Request) -> Any:
        from .backend import Unauthorized

        try:
            check_key(request, api_key)
        except Unauthorized:  # the login form, with status 401
            return HTMLResponse((STATIC / "login.html").read_text(encoding="utf-8"), status_code=401)
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP})

    @app.get("/ui/app.js")
    async def ui_js(request: Request) -> Any:
        check_key(request, api_key)
        return FileResponse(STATIC / "app.js", media_type="text/javascript")

    @app.post("/ui/login")
    async def login(request: Request) -> Any:
        from urllib.parse import parse_qs

        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        got = (form.get("key") or [""])[0]
        if not api_key or not hmac.compare_digest(got.encode(), api_key.encode()):
            return HTMLResponse((STATIC / "login.html").read_text(encoding="utf-8"), status_code=401)
        r = RedirectResponse("/ui", status_code=303)
        r.set_cookie(COOKIE, api_key, httponly=True, samesite="strict", path="/")
        return r

    @app.get("/ui/logout")
    async def logout() -> Any:
        r = Response(status_code=303, headers={"Location": "/ui"})
        r.delete_cookie(COOKIE, path="/")
        return r


# The page loads nothing from elsewhere: scripts, styles and images come from this server only.
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "frame-src 'self'; connect-src 'self'")


# -- serve.json: how the CLI finds a running server -----------------------------------
class ServeFile:
    """<home>/serve.json while `agentsleep serve` runs (pid, url), removed on exit."""

    def __init__(self, root: Path, url: str):
        import os
        import time

        self.path = Path(root) / "serve.json"
        self.data = {"pid": os.getpid(), "url": url, "started_at": time.time()}
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "ServeFile":
        import signal

        threading.Thread(target=self._publish, name="serve-json", daemon=True).start()
        self._prev = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # uvicorn re-raises the SIGTERM it caught once it has shut down; by default that kills the
            # process before any cleanup (this file's removal, the backend's close) could run
            def on_term(signum: int, frame: Any) -> None:
                raise SystemExit(128 + signum)

            self._prev = signal.signal(signal.SIGTERM, on_term)
        return self

    def _publish(self, timeout: float = 120.0) -> None:
        """Write the file once the port accepts connections: a CLI that finds it can use it."""
        import socket
        import time
        from urllib.parse import urlsplit

        from ..atomic import atomic_write_json

        u = urlsplit(self.data["url"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._closed:
            try:
                socket.create_connection((u.hostname, u.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            with self._lock:
                if not self._closed:
                    atomic_write_json(self.path, self.data)
            return
        log.warning("serve.json not written: %s did not accept connections", self.data["url"])

    def __exit__(self, *exc: Any) -> None:
        import os
        import signal

        with self._lock:
            self._closed = True
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
