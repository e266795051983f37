"""SleepMiddleware: episodic memory for LangChain v1 agents (``langchain.agents.create_agent``).

    from langchain.agents import create_agent
    from agentsleep.adapters.langchain import SleepMiddleware

    agent = create_agent(model, tools, middleware=[SleepMiddleware(home, k=4, namespace="alice")])
    agent.invoke({"messages": [("user", "What is my daughter's name?")]},
                 {"configurable": {"session_id": "chat-1"}})

Before the agent runs, the top-k memories for the user's latest message are
recalled once; every model call of that run gets them in its system message
(the request is changed, the thread's messages are not). The memories stay in
this process, for this run only: the private state key ``agentsleep_memories``
holds a reference to them, never their text, so a checkpointer saves no memory
with the thread (one forgotten later would otherwise live on in the thread's
checkpoints); a run resumed in another process recalls them again, and the key
is cleared when the run ends. After the agent step the exchange is recorded: one ``turn``
episode ("User: ...\\nAssistant: ...") and one ``tool`` episode per tool run
(read from the messages of this run: the model's tool calls and their results).

Per call, ``config["configurable"]`` may set ``session_id``, ``namespace``,
``use_memory`` and ``record``, as for :func:`with_sleep`; a namespace the store
would refuse fails the call at once (InputError), before the agent does anything. Memory failures take
with_sleep's path: the agent goes on without memories (or without recording),
a warning is logged on ``agentsleep.adapters.langchain`` and the custom
callback event ``agentsleep_memory_error`` is sent.

Needs the ``langchain`` package (``pip install 'agentsleep[langchain]'``).
"""
from __future__ import annotations

import asyncio
import collections
import secrets
import threading
import time
from typing import Annotated, Any, Awaitable, Callable, Optional

from langchain.agents.middleware.types import AgentMiddleware, AgentState, ModelRequest, PrivateStateAttr
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from typing_extensions import NotRequired

from ._common import MEMORY_ERROR_EVENT, content_text, describe, logger, resolve_home, warn_failure
from .wrapper import MemoryUnavailable, _last_human, _tool_text, format_memories_system

ADAPTER = "langchain.middleware"


class SleepState(AgentState):
    """The agent's state plus a reference to this run's recalled memories (private: not in the agent's
    input or output). A thread checkpointed by an older version may hold the memories themselves (a list)."""

    agentsleep_memories: NotRequired[Annotated[Any, PrivateStateAttr]]


HELD_RUNS = 1024  # runs whose memories one middleware keeps at most (a run that never ended is dropped first)


class _Recalled:
    """What the model prompt needs of an episode, back from the state (the formatters take episode-like objects)."""

    def __init__(self, d: dict[str, Any]):
        self.id, self.text, self.score = d.get("id", ""), d.get("text", ""), d.get("score")
        self._prompt = d.get("prompt") or self.text

    def prompt_text(self) -> str:
        return self._prompt


class SleepMiddleware(AgentMiddleware[SleepState, Any]):
    """Recall before the model, record after the agent (see the module docstring)."""

    state_schema = SleepState

    def __init__(self, home: Any = None, *, k: int = 4, namespace: Optional[str] = None,
                 session_id: Optional[str] = None, use_memory: bool = True, record: bool = True,
                 record_tools: bool = True, source: str = "user", tool_trust: Any = "untrusted",
                 min_score: Optional[float] = None, recall_filters: Optional[dict[str, Any]] = None,
                 format_memories: Optional[Callable[[list], str]] = None,
                 on_memory_error: Optional[Callable[[str, BaseException], Any]] = None,
                 retry_after: float = 30.0):
        """home: a Home, a path (opened once per process) or None ($AGENTSLEEP_HOME). k: memories per
        run. namespace: the hard partition recalled from and recorded into (None: the store's default).
        The other options mean what they mean for with_sleep."""
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if namespace is not None and (not isinstance(namespace, str) or not namespace.strip()):
            raise ValueError(f"namespace must be a non-empty string or None, got {namespace!r}")
        self.home, self.k, self.namespace, self.session_id = home, k, namespace, session_id
        self.use_memory, self.record, self.record_tools = use_memory, record, record_tools
        self.source, self.tool_trust, self.min_score = source, tool_trust, min_score
        if "namespace" in (recall_filters or {}):  # it would read one partition and write another
            raise ValueError("recall_filters may not hold 'namespace': pass namespace=..., which recall and "
                             "recording share")
        self.recall_filters = dict(recall_filters or {})
        self.format_memories = format_memories or format_memories_system
        self.on_memory_error = on_memory_error
        self.retry_after = retry_after
        self._down_until = 0.0
        self._down_error = ""
        self._held: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()
        self._held_lock = threading.Lock()

    # -- this run's memories: in this process, a reference in the state ------------------------
    def _hold(self, mems: list[dict[str, Any]]) -> str:
        if not mems:
            return ""
        ref = secrets.token_hex(8)
        self._put(ref, mems)
        return ref

    def _put(self, ref: str, mems: list[dict[str, Any]]) -> None:
        with self._held_lock:
            self._held[ref] = mems
            while len(self._held) > HELD_RUNS:
                self._held.popitem(last=False)

    def _held_memories(self, state: Any, *, release: bool = False) -> list[dict[str, Any]] | None:
        """This run's memories, less any forgotten since they were recalled (a run interrupted and resumed
        later); None when the state names a run this process does not hold (resumed elsewhere)."""
        ref = (state or {}).get("agentsleep_memories")
        if isinstance(ref, list):
            mems = ref  # checkpointed inline by an older version
        elif not ref:
            return []
        else:
            with self._held_lock:
                mems = self._held.pop(ref, None) if release else self._held.get(ref)
            if mems is None:
                return None
        if mems and not release:
            try:
                gone = resolve_home(self.home).store.ledger.forgotten_among([m["id"] for m in mems])
            except Exception:  # noqa: BLE001 - the store is down: the recall itself will say so
                gone = set()
            mems = [m for m in mems if m["id"] not in gone]
        return mems

    # -- options per call -------------------------------------------------------------
    def _opts(self) -> dict[str, Any]:
        conf: dict[str, Any] = {}
        try:
            from langgraph.config import get_config

            conf = get_config().get("configurable") or {}
        except RuntimeError:  # not inside a run
            pass
        ns = conf.get("namespace", self.namespace)
        if ns is not None:  # a bad namespace fails the call before the agent runs: nothing half-recorded
            from agentsleep.memory.episode import check_namespace

            check_namespace(ns, "SleepMiddleware: configurable namespace")
        return {"session": conf.get("session_id", self.session_id), "namespace": ns,
                "use_memory": bool(conf.get("use_memory", self.use_memory)), "record": bool(conf.get("record", self.record))}

    # -- memory, with failures reported -------------------------------------------------
    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            raise MemoryUnavailable(f"memory skipped: it failed moments ago ({self._down_error}); "
                                    f"next try in {self._down_until - time.monotonic():.0f} s")

    def _failed(self, stage: str, err: BaseException) -> dict[str, str]:
        from agentsleep.errors import InputError

        data = warn_failure(stage, err)
        if self.retry_after > 0 and not isinstance(err, (MemoryUnavailable, InputError)):
            self._down_until = time.monotonic() + self.retry_after
            self._down_error = describe(err)
        if self.on_memory_error is not None:
            try:
                self.on_memory_error(stage, err)
            except Exception:  # noqa: BLE001 - the hook must not break the agent
                pass
        return data

    def _emit(self, data: dict[str, str]) -> None:
        from langchain_core.callbacks import dispatch_custom_event

        try:
            dispatch_custom_event(MEMORY_ERROR_EVENT, data)
        except Exception as e:  # noqa: BLE001 - no run to report to, or a broken handler
            logger.warning("agentsleep: could not dispatch %s to callbacks (%s)", MEMORY_ERROR_EVENT, describe(e))

    async def _aemit(self, data: dict[str, str]) -> None:
        from langchain_core.callbacks import adispatch_custom_event

        try:
            await adispatch_custom_event(MEMORY_ERROR_EVENT, data)
        except Exception as e:  # noqa: BLE001
            logger.warning("agentsleep: could not dispatch %s to callbacks (%s)", MEMORY_ERROR_EVENT, describe(e))

    def _ns(self, opts: dict[str, Any]) -> dict[str, Any]:
        return {"namespace": opts["namespace"]} if opts["namespace"] is not None else {}

    def _recall(self, query: Optional[str], opts: dict[str, Any]) -> list[dict[str, Any]]:
        if not opts["use_memory"] or not query or not query.strip():
            return []
        self._check_up()
        eps = resolve_home(self.home).recall(query, self.k, **self.recall_filters, **self._ns(opts))
        if self.min_score is not None:
            eps = [e for e in eps if e.score is None or e.score >= self.min_score]
        return [{"id": e.id, "text": e.text, "score": e.score,
                 "prompt": e.prompt_text() if hasattr(e, "prompt_text") else e.text} for e in eps]

    def _record(self, messages: list[BaseMessage], memories: list[dict[str, Any]], opts: dict[str, Any]) -> list[str]:
        query, answer, tools = exchange(messages)
        if not opts["record"] or (not (query and query.strip()) and not (self.record_tools and tools)):
            return []
        self._check_up()
        home = resolve_home(self.home)
        prov = {"adapter": ADAPTER, "memories_used": ",".join(m["id"] for m in memories)[:500]}
        common = {"session": opts["session"], "provenance": prov, **self._ns(opts)}
        ids = []
        if self.record_tools:
            for run in tools:
                trust = self.tool_trust(run["name"]) if callable(self.tool_trust) else self.tool_trust
                ids.append(home.remember(_tool_text(run), kind="tool", source=f"tool:{run['name']}", trust=trust,
                                         **common).id)
        if query and query.strip():
            text = f"User: {query.strip()}" + (f"\nAssistant: {answer.strip()}" if answer and answer.strip() else "")
            ids.append(home.remember(text, kind="turn", source=self.source, **common).id)
        return ids

    # -- hooks ------------------------------------------------------------------------------
    def before_agent(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        opts = self._opts()
        try:
            mems = self._recall(_last_human(list(state.get("messages") or []))[1], opts)
        except Exception as e:  # noqa: BLE001 - reported, then the agent goes on without memories
            self._emit(self._failed("recall", e))
            mems = []
        return {"agentsleep_memories": self._hold(mems)}

    async def abefore_agent(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        opts = self._opts()
        try:
            mems = await asyncio.to_thread(self._recall, _last_human(list(state.get("messages") or []))[1], opts)
        except Exception as e:  # noqa: BLE001
            await self._aemit(self._failed("recall", e))
            mems = []
        return {"agentsleep_memories": self._hold(mems)}

    def _request_memories(self, request: ModelRequest) -> list[dict[str, Any]]:
        """The run's memories for a model call; recalled again when the run was started by another process."""
        mems = self._held_memories(request.state)
        if mems is not None:
            return mems
        try:
            mems = self._recall(_last_human(list((request.state or {}).get("messages") or []))[1], self._opts())
        except Exception as e:  # noqa: BLE001
            self._emit(self._failed("recall", e))
            mems = []  # held too: the run's next model call does not try (and report) again
        self._put(request.state["agentsleep_memories"], mems)
        return mems

    def _with_memories(self, request: ModelRequest, mems: list[dict[str, Any]]) -> ModelRequest:
        block = self.format_memories([_Recalled(m) for m in mems]) if mems else ""
        if not block:
            return request
        sys_msg = request.system_message
        text = f"{content_text(sys_msg.content)}\n\n{block}" if sys_msg is not None and sys_msg.content else block
        return request.override(system_message=SystemMessage(content=text))

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        return handler(self._with_memories(request, self._request_memories(request)))

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]) -> Any:
        mems = await asyncio.to_thread(self._request_memories, request)  # the ledger, or a recall: off the loop
        return await handler(self._with_memories(request, mems))

    def after_agent(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        opts = self._opts()
        mems = self._held_memories(state, release=True) or []
        try:
            self._record(list(state.get("messages") or []), mems, opts)
        except Exception as e:  # noqa: BLE001
            self._emit(self._failed("record", e))
        return {"agentsleep_memories": ""}  # the run is over: nothing of it stays in the thread's state

    async def aafter_agent(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        opts = self._opts()
        mems = self._held_memories(state, release=True) or []
        try:
            await asyncio.to_thread(self._record, list(state.get("messages") or []), mems, opts)
        except Exception as e:  # noqa: BLE001
            await self._aemit(self._failed("record", e))
        return {"agentsleep_memories": ""}


def exchange(messages: list[BaseMessage]) -> tuple[Optional[str], Optional[str], list[dict[str, Any]]]:
    """This run's part of the thread: the user's latest message, the final answer, the tool runs."""
    i, query = _last_human(messages)
    tail = messages[i + 1:] if i >= 0 else list(messages)
    calls: dict[str, dict[str, Any]] = {}
    tools: list[dict[str, Any]] = []
    answer = None
    for m in tail:
        if isinstance(m, AIMessage):
            for tc in m.tool_calls or []:
                calls[tc.get("id") or ""] = {"name": tc.get("name") or "tool", "input": tc.get("args") or {}}
            text = content_text(m.content)
            if text.strip() and not m.tool_calls:
                answer = text
        elif isinstance(m, ToolMessage) and getattr(m, "status", "success") != "error":
            call = calls.get(m.tool_call_id or "", {"name": m.name or "tool", "input": {}})
            tools.append({**call, "output": m})
    return query, answer, tools
