"""`agentsleep mcp`: a home as a Model Context Protocol server (the official `mcp` SDK, extra `mcp`).

    agentsleep mcp                                  # stdio, for desktop clients and agent frameworks
    agentsleep mcp --transport http --port 8765     # streamable HTTP on 127.0.0.1, at /mcp

Tools: remember, recall (kind / session / namespace / since / until filters), forget, sleep_now
(returns at once with a sleep id; follow it with status), status, ask (with memory or
closed-book). Resources: ``agentsleep://sleeps/latest`` (the latest sleep report) and
``agentsleep://history`` (the version history).

Arguments are validated; a bad one gets a one-line tool error and changes nothing.
Over HTTP the server asks for ``serve.api_key`` (``Authorization: Bearer ...``)
whenever it is set, the same key `agentsleep serve` asks for, and refuses to listen
beyond loopback without one.

One process holds an embedded home's episode store for writing. A second server on
the same home (a second stdio client) opens it read-only: recall, status, ask and the
resources work; remember and forget say who holds the store. Sleeps run in a worker
process (as the daemon runs them), or are handed to the home's daemon when one runs,
so the server keeps answering while a sleep trains.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

from pydantic import Field

from ..errors import AgentsleepError, InputError, StoreLockedError

log = logging.getLogger("agentsleep.mcp")

LATEST_REPORT_URI = "agentsleep://sleeps/latest"
HISTORY_URI = "agentsleep://history"
MAX_K = 100
# Argument types of the tools (module level: the SDK resolves the annotations by name).
Text = Annotated[str, Field(min_length=1, description="The memory, as plain text.")]
Query = Annotated[str, Field(min_length=1, description="What to look for, in plain words.")]
K = Annotated[int, Field(ge=1, le=MAX_K, description="How many memories.")]
OptK = Optional[Annotated[int, Field(ge=1, le=MAX_K, description="How many memories (default: memory.recall_k).")]]
MaxEpisodes = Optional[Annotated[int, Field(ge=1, description="Take at most this many waiting episodes.")]]
Tokens = Optional[Annotated[int, Field(ge=1, le=4096, description="Answer length in tokens.")]]
Opt = Optional[str]
INSTRUCTIONS = ("Long-term memory for this agent. remember stores what is worth keeping; recall finds it "
                "again; forget deletes it (and schedules the weights to be rebuilt without it). sleep_now "
                "consolidates waiting memories into the model's weights (minutes; follow it with status).")


def _sdk() -> Any:
    """The SDK's server module, or a one-line error naming the extra to install."""
    try:
        from mcp.server import mcpserver
    except ImportError:
        # no square brackets: the CLI prints errors as rich markup
        raise AgentsleepError("agentsleep mcp needs the MCP SDK: install agentsleep with its mcp extra "
                              "(or pip install mcp)") from None
    return mcpserver


def open_home(path: Any) -> tuple[Any, Optional[str]]:
    """The home, writable when its store is free; read-only (with the reason) when another process writes it."""
    from ..home import Home

    home = Home.open(path)
    try:
        home.store  # noqa: B018 - takes the writer lock now, not at the first remember
        return home, None
    except StoreLockedError as e:
        home.close()
        return Home.open(path, writable=False), f"this server opened the home read-only: {e}"


def _one_line_validation(name: str, err: Any) -> str:
    """Pydantic's multi-line report as one line: which argument, what was wrong."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "arguments") or "arguments"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return f"{name}: bad argument ({'; '.join(parts)})"


class _SleepRun:
    """One sleep this server started (or handed to the daemon)."""

    def __init__(self, sid: str, via: str, job: Any = None, request_id: str | None = None):
        self.id = sid
        self.via = via
        self.job = job
        self.request_id = request_id
        self.started_at = time.time()
        self.result: dict[str, Any] | None = None
        self.thread: threading.Thread | None = None

    def running(self) -> bool:
        return self.result is None and (self.thread is None or self.thread.is_alive())


class MemoryServer:
    """The tools and resources over one Home. `build()` gives the SDK server."""

    def __init__(self, home: Any, *, read_only_reason: str | None = None,
                 sleeper: Optional[Callable[[Any], dict]] = None):
        self.home = home
        self.root = Path(home.root).resolve()
        self.read_only_reason = read_only_reason if not home.writable else None
        if not home.writable and self.read_only_reason is None:
            self.read_only_reason = "this server opened the home read-only"
        self._sleeper = sleeper
        self._store_lock = threading.Lock()   # one store call at a time (tools run in worker threads)
        self._model_lock = threading.Lock()   # one generation at a time
        self._runs: dict[str, _SleepRun] = {}
        self._runs_lock = threading.Lock()

    # -- the tools' bodies (plain methods: tested directly and through the SDK) ----------
    def remember(self, text: str, kind: str = "fact", source: str = "user", session: str | None = None,
                 namespace: str | None = None, untrusted: bool = False, event_time: str | None = None,
                 speaker: str | None = None) -> dict[str, Any]:
        self._writable("remember")
        kw: dict[str, Any] = {"kind": kind, "source": source, "session": session, "speaker": speaker,
                              "trust": "untrusted" if untrusted else "trusted", "provenance": {"via": "mcp"}}
        if namespace is not None:
            kw["namespace"] = _namespace(namespace)
        if event_time is not None:
            kw["event_time"] = _iso("event_time", event_time)
        with self._store_lock:
            return self.home.remember(text, **kw).model_dump(mode="json")

    def recall(self, query: str, k: int = 4, kind: str | None = None, session: str | None = None,
               namespace: str | None = None, since: str | None = None, until: str | None = None) -> dict[str, Any]:
        filters: dict[str, Any] = {"kind": kind, "session": session}
        if since is not None:
            filters["since"] = _iso("since", since)
        if until is not None:
            filters["until"] = _iso("until", until)
        if namespace is not None:
            filters["namespace"] = _namespace(namespace)
        with self._store_lock:
            eps = self.home.recall(query, k, **{f: v for f, v in filters.items() if v is not None})
        return {"memories": [e.public() for e in eps]}

    def forget(self, episode_id: str | None = None, query: str | None = None, k: int = 1,
               fallback: bool = False, namespace: str | None = None) -> dict[str, Any]:
        self._writable("forget")
        ns = {"namespace": _namespace(namespace)} if namespace is not None else {}
        with self._store_lock:
            return self.home.forget(episode_id, query=query, k=k, fallback=fallback, **ns)

    def sleep_now(self, max_episodes: int | None = None) -> dict[str, Any]:
        from agentsleep.daemon import SleepJob, SubprocessSleep, daemon_info, submit_request
        from agentsleep.sleep.journal import running_journals

        with self._runs_lock:
            for r in self._runs.values():
                if r.via == "daemon" and r.result is None:
                    self.sleep_status(r.id)  # picks up the daemon's answer
            mine = [r for r in self._runs.values() if r.running()]
            if mine:
                return {"sleep_id": mine[0].id, "state": "running", "note": "a sleep started here is still running"}
            busy = [j.get("sleep_id") for _, j in running_journals(self.root)]
            if busy and daemon_info(self.root) is None:
                raise InputError(f"sleep_now: sleep {busy[0]} is already running for this home; follow it with status")
            if daemon_info(self.root) is not None:
                rid = submit_request(self.root, max_episodes=max_episodes, by="mcp")
                if rid is not None:
                    run = _SleepRun(f"req-{rid}", "daemon", request_id=rid)
                    self._runs[run.id] = run
                    return {"sleep_id": run.id, "state": "queued", "via": "daemon"}
            sid = f"mcp-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            job = SleepJob(home=self.root, reason="on-demand", max_episodes=max_episodes)
            run = _SleepRun(sid, "worker", job=job)
            sleeper = self._sleeper or SubprocessSleep()

            def work() -> None:
                try:
                    run.result = sleeper(job)
                except Exception as e:  # noqa: BLE001 - reported through status
                    run.result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                    log.warning("sleep %s failed: %s", sid, run.result["error"])

            run.thread = threading.Thread(target=work, name=f"sleep-{sid}", daemon=True)
            self._runs[sid] = run
            run.thread.start()
        return {"sleep_id": sid, "state": "started", "via": "worker"}

    def sleep_status(self, sleep_id: str) -> dict[str, Any]:
        from agentsleep.daemon import request_result
        from agentsleep.sleep.journal import running_journals

        run = self._runs.get(sleep_id)
        if run is None:
            known = ", ".join(sorted(self._runs)) or "none yet"
            raise InputError(f"status: no sleep '{sleep_id}' was started by this server (known: {known})")
        out: dict[str, Any] = {"sleep_id": run.id, "via": run.via, "started_at": run.started_at}
        if run.via == "daemon":
            res = request_result(self.root, run.request_id or "")
            if res is not None:
                run.result = res
        if run.result is not None:
            out.update(state="done", result=run.result, journal=run.result.get("sleep_id"))
            return out
        out["state"] = "running"
        if run.job is not None and run.job.pid is not None:
            for _, j in running_journals(self.root):
                if j.get("pid") == run.job.pid:
                    out.update(journal=j.get("sleep_id"), stage=j.get("stage"))
            try:
                prog = json.loads((self.root / "daemon" / "progress.json").read_text())
                if prog.get("pid") == run.job.pid:
                    out["progress"] = {k: prog.get(k) for k in ("stage", "done", "total", "note")}
            except (OSError, ValueError):
                pass
        return out

    def status(self, sleep_id: str | None = None) -> dict[str, Any]:
        from agentsleep.sleep.journal import running_journals

        if sleep_id is not None:
            return self.sleep_status(sleep_id)
        with self._store_lock:
            st = self.home.status()
        st["sleeps_running"] = [{"sleep_id": j.get("sleep_id"), "stage": j.get("stage"), "pid": j.get("pid")}
                                for _, j in running_journals(self.root)]
        st["sleeps_started_here"] = [self.sleep_status(s) for s in list(self._runs)]
        st["writable"] = bool(self.home.writable)
        if self.read_only_reason:
            st["read_only_reason"] = self.read_only_reason
        return st

    def ask(self, question: str, use_memory: bool = True, k: int | None = None,
            max_new_tokens: int | None = None, namespace: str | None = None) -> dict[str, Any]:
        ns = {"namespace": _namespace(namespace)} if namespace is not None else {}
        with self._model_lock:
            return self.home.ask(question, use_memory=use_memory, k=k, max_new_tokens=max_new_tokens, **ns)

    def latest_report(self) -> str:
        reports = sorted((self.root / "sleeps").glob("*/report.json"))
        if not reports:
            return json.dumps({"sleep": None, "note": "no sleep has finished in this home yet"})
        return reports[-1].read_text(encoding="utf-8")

    def history(self) -> str:
        return json.dumps(self.home.history(), default=str)

    def _writable(self, what: str) -> None:
        if not self.home.writable:
            raise InputError(f"{what}: {self.read_only_reason}; use the server that holds the store")

    # -- the SDK server -------------------------------------------------------------------
    def build(self) -> Any:
        """The SDK's MCPServer with the tools and resources registered."""
        sdk = _sdk()
        from mcp.server.mcpserver.exceptions import ToolError
        from pydantic import ValidationError

        class Server(sdk.MCPServer):
            async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
                try:
                    return await super().call_tool(name, arguments, context)
                except ToolError as e:
                    if isinstance(e.__cause__, ValidationError):
                        raise ToolError(_one_line_validation(name, e.__cause__)) from None
                    if type(e.__cause__) is ToolError:  # ours, already one line: without the SDK's prefix
                        raise ToolError(str(e.__cause__)) from None
                    raise

        srv = Server("agentsleep", instructions=INSTRUCTIONS, log_level="WARNING")
        me = self

        def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
            """Our own errors as tool errors with their one-line message, named after the tool."""
            def call(**kw: Any) -> Any:
                try:
                    return fn(**kw)
                except AgentsleepError as e:
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise ToolError(msg if msg.startswith(f"{fn.__name__}:") else f"{fn.__name__}: {msg}") from None
            return call

        @srv.tool(description="Store a memory (kind: fact, turn, observation or tool) in a namespace (default "
                              "'default'), with when it happened (event_time, ISO; default now) and who said it "
                              "(speaker). Exact duplicates are not stored twice (a turn repeated in another session or "
                              "by another speaker is not a duplicate). Returns its episode id.")
        def remember(text: Text, kind: str = "fact", source: str = "user", session: Opt = None,
                     namespace: Opt = None, untrusted: bool = False, event_time: Opt = None,
                     speaker: Opt = None) -> dict:
            return guard(me.remember)(text=text, kind=kind, source=source, session=session, namespace=namespace,
                                      untrusted=untrusted, event_time=event_time, speaker=speaker)

        @srv.tool(description="The k memories closest in meaning to the query, best first. Filters: kind, "
                              "session, namespace (a hard partition: never crossed; default 'default'), "
                              "since / until (ISO date/time of the event, since <= t < until).")
        def recall(query: Query, k: K = 4, kind: Opt = None, session: Opt = None,
                   namespace: Opt = None, since: Opt = None, until: Opt = None) -> dict:
            return guard(me.recall)(query=query, k=k, kind=kind, session=session, namespace=namespace, since=since,
                                    until=until)

        @srv.tool(description="Delete a memory by episode id, or the best match(es) of a query, and schedule "
                              "the weights to be rebuilt without it at the next sleep.")
        def forget(episode_id: Opt = None, query: Opt = None, k: K = 1, fallback: bool = False,
                   namespace: Opt = None) -> dict:
            return guard(me.forget)(episode_id=episode_id, query=query, k=k, fallback=fallback, namespace=namespace)

        @srv.tool(description="Start consolidating the waiting memories into the weights. Returns at once with "
                              "a sleep_id; call status with it to follow the sleep (its 'journal' is the sleep's "
                              "own id, as in the sleep report). Without a daemon the sleep runs in a worker "
                              "process of this server and stops, cleanly, if the server exits.")
        def sleep_now(max_episodes: MaxEpisodes = None) -> dict:
            return guard(me.sleep_now)(max_episodes=max_episodes)

        @srv.tool(description="The home: episodes, waiting episodes, the model version serving, running sleeps. "
                              "With sleep_id: that sleep's progress and, once done, its result.")
        def status(sleep_id: Opt = None) -> dict:
            return guard(me.status)(sleep_id=sleep_id)

        @srv.tool(description="Answer with the home's current model version: with the top-k memories in the "
                              "prompt, or closed-book (use_memory=false) from the weights alone.")
        def ask(question: Query, use_memory: bool = True, k: OptK = None, max_new_tokens: Tokens = None,
                namespace: Opt = None) -> dict:
            return guard(me.ask)(question=question, use_memory=use_memory, k=k, max_new_tokens=max_new_tokens,
                                 namespace=namespace)

        @srv.resource(LATEST_REPORT_URI, name="latest-sleep-report", mime_type="application/json",
                      description="The report of the latest sleep: status, version, gate metrics, reasons.")
        def latest_report() -> str:
            return me.latest_report()

        @srv.resource(HISTORY_URI, name="version-history", mime_type="application/json",
                      description="Every model version, oldest first, with its parent, sleep and metrics.")
        def history() -> str:
            return me.history()

        return srv

    def close(self) -> None:
        self.home.close()


def _namespace(ns: str) -> str:
    """The store checks the rest (length, control characters); a blank name is refused here."""
    if not isinstance(ns, str) or not ns.strip():
        raise InputError("namespace is empty; leave it out for the default namespace or give a name such as 'user:alice'")
    return ns


def _iso(name: str, value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{name}: {value!r} is not an ISO date/time (e.g. 2026-05-01 or 2026-05-01T09:30)") from None


# -- running it -------------------------------------------------------------------------
class _BearerAuth:
    """ASGI wrapper: every HTTP request needs `Authorization: Bearer <serve.api_key>` (when one is set)."""

    def __init__(self, app: Any, keys: list[str]):
        self.app = app
        self.keys = [k for k in keys if k]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and self.keys:
            from .auth import require_bearer
            from .backend import Unauthorized

            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            try:
                require_bearer(headers.get("authorization", ""), self.keys)
            except Unauthorized as e:
                body = json.dumps({"error": {"message": str(e), "code": "invalid_api_key"}}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def http_app(server: MemoryServer, host: str) -> Any:
    """The streamable-HTTP ASGI app (endpoint /mcp), behind the API key check."""
    app = server.build().streamable_http_app(host=host)
    return _BearerAuth(app, [server.home.config.serve.api_key or ""])


def check_http_host(host: str, api_key: str | None) -> None:
    from ..procs import is_loopback

    if not is_loopback(host) and not api_key:
        raise InputError(f"agentsleep mcp: refusing to listen on {host} without serve.api_key; set it "
                         "(AGENTSLEEP_SERVE__API_KEY) or listen on 127.0.0.1")


def run(home_path: Any, *, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765,
        sleep_fn: str | None = None, say: Callable[[str], None] | None = None) -> None:
    """`agentsleep mcp`: serve until the client hangs up (stdio) or until interrupted (http)."""
    import anyio

    say = say or log.info
    if transport not in ("stdio", "http"):
        raise InputError(f"--transport {transport!r}: use stdio or http")
    _sdk()
    sleeper = None
    if sleep_fn:
        from agentsleep.daemon import SubprocessSleep

        sleeper = SubprocessSleep(target=sleep_fn)
    home, why = open_home(home_path)
    server = MemoryServer(home, read_only_reason=why, sleeper=sleeper)
    if why:
        say(why)
    try:
        if transport == "stdio":
            anyio.run(server.build().run_stdio_async)
            return
        import uvicorn

        from .server import check_listen, url_for

        check_http_host(host, home.config.serve.api_key)
        check_listen(host, port)
        app = http_app(server, host)
        say(f"MCP over streamable HTTP at {url_for(host, port)}/mcp"
            + (" (API key required)" if home.config.serve.api_key else ""))
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
    finally:
        server.close()
