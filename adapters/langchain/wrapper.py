"""with_sleep: episodic memory for any LangChain Runnable or agent.

    agent = with_sleep(agent, home="~/.agentsleep/alice", k=4, session_id="chat-1")
    agent.invoke({"messages": [("user", "What is my daughter's name?")]})

Before each call the top-k memories for the user's latest message are
injected into the input; after it the exchange is recorded as episodes: one
``turn`` episode ("User: ...\\nAssistant: ...") and one ``tool`` episode per
tool run (observed through callbacks, so tools deep inside an agent graph
count). invoke / ainvoke / stream / astream / batch all work; a stream is
recorded when it has been consumed.

If the store (or its embedding model) is unavailable, the call goes on
without memories and nothing is recorded; the failure is logged as a warning
on ``agentsleep.adapters.langchain`` and sent to callback handlers as the
custom event ``agentsleep_memory_error`` (``on_custom_event``), and passed to
``on_memory_error`` when given. Errors of the wrapped runnable itself are not
touched.

Per call, ``config["configurable"]`` may set ``session_id``, ``use_memory``
(inject or not) and ``record`` (store the exchange or not).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Optional, Union
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config, run_in_executor
from pydantic import ConfigDict, PrivateAttr

from ._common import aemit_failure, content_text, describe, emit_failure, resolve_home


class MemoryUnavailable(RuntimeError):
    """Memory was skipped because it failed moments ago (see SleepRunnable.retry_after)."""

# The id of the system message that carries the memories: a LangGraph thread (add_messages) replaces the
# last turn's with this turn's instead of keeping one more memory prompt per turn.
MEMORY_MESSAGE_ID = "agentsleep-memories"
Placement = Union[Literal["system", "human", "key"], Callable[[Any, list], Any]]
_QUERY_KEYS = ("input", "question", "query", "text", "content")


def format_memories_system(episodes: list) -> str:
    """The default for placement="system": the same memory prompt the sleep trains with."""
    from agentsleep.models.generate import memory_system

    return memory_system([_shown(e) for e in episodes]) or ""


def _shown(e) -> str:
    """An episode as a prompt shows it: with its date (and speaker), as Home.ask does."""
    return e.prompt_text() if hasattr(e, "prompt_text") else e.text


def format_memories_list(episodes: list) -> str:
    """The default for placement="human"/"key": a short bulleted block."""
    if not episodes:
        return ""
    return "What you remember:\n" + "\n".join(f"- {_shown(e).strip()}" for e in episodes)


# -- callbacks: tool runs ----------------------------------------------------------
class _ToolRecorder(BaseCallbackHandler):
    """Collects the tool runs of one call (thread-safe; inline so async runs see them at once)."""

    run_inline = True
    raise_error = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: dict[UUID, dict[str, Any]] = {}
        self.finished: list[dict[str, Any]] = []

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                      inputs: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name") or "tool"
        args = inputs if inputs is not None else input_str
        with self._lock:
            self.started[run_id] = {"name": name, "input": args}

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self.started.pop(run_id, None)
            if run is not None:
                self.finished.append({**run, "output": output})

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self.started.pop(run_id, None)


# -- reading inputs and outputs ------------------------------------------------------
def _as_messages(value: Any) -> Optional[list[BaseMessage]]:
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, (list, tuple)) and value and not isinstance(value, str):
        try:
            return convert_to_messages(list(value))
        except Exception:  # noqa: BLE001 - not a message list
            return None
    return None


def _last_human(msgs: list[BaseMessage]) -> tuple[int, Optional[str]]:
    for i in range(len(msgs) - 1, -1, -1):
        if isinstance(msgs[i], HumanMessage) or msgs[i].type == "human":
            return i, content_text(msgs[i].content)
    return -1, None


def _message_pair(value: Any) -> bool:
    """A (message chunk, metadata) pair: what LangGraph's stream_mode="messages" yields."""
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], BaseMessage) \
        and isinstance(value[1], dict)


def _last_ai_text(value: Any, top: bool = True) -> Optional[str]:
    """The final answer in an output: the last AI message with text, walking dicts and lists. In a message
    list only the messages after the last human one count (a thread from a checkpointer holds earlier
    turns: a turn ending without text must not record the previous turn's answer as its own); a bare
    string is an answer only as the whole output or under a key that means one, never a metadata value."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if top else None
    if isinstance(value, BaseMessage):
        if value.type in ("ai", "AIMessageChunk") or isinstance(value, AIMessage):
            t = content_text(value.content)
            return t if t.strip() else None
        return None
    if _message_pair(value):
        return _last_ai_text(value[0], False)
    if isinstance(value, dict):
        if "messages" in value:
            found = _last_ai_text(value["messages"], False)
            if found is not None:
                return found
        for key in ("output", "answer", "result", "text", "content"):
            if isinstance(value.get(key), str):
                return value[key]
        found = None
        for v in value.values():  # e.g. LangGraph "updates" chunks: {node: {"messages": [...]}}
            found = _last_ai_text(v, False) or found
        return found
    if isinstance(value, (list, tuple)):
        items = list(value)
        if items and all(isinstance(v, BaseMessage) for v in items):
            items = items[_last_human(items)[0] + 1:]
        for v in reversed(items):
            found = _last_ai_text(v, False)
            if found is not None:
                return found
        return None
    return None


class _Accumulator:
    """Adds up streamed chunks: `+` where it works, dict merge for dict chunks, else last wins. A
    (message chunk, metadata) pair adds up as its message (tuples would concatenate, pairs and all)."""

    def __init__(self) -> None:
        self.value: Any = None
        self.seen: list[Any] = []  # non-addable chunks, for answer extraction

    def add(self, chunk: Any) -> None:
        if _message_pair(chunk):
            chunk = chunk[0]
        if self.value is None:
            self.value = chunk
            return
        try:
            self.value = self.value + chunk
            return
        except Exception:  # noqa: BLE001
            pass
        self.seen.append(self.value)
        self.value = chunk

    def answer(self) -> Optional[str]:
        found = _last_ai_text(self.value)
        if found is None:
            for v in reversed(self.seen):
                found = _last_ai_text(v)
                if found is not None:
                    break
        return found


def _tool_text(run: dict[str, Any]) -> str:
    args = run["input"]
    if not isinstance(args, str):
        try:
            args = json.dumps(args, ensure_ascii=False, default=str)
        except Exception:  # noqa: BLE001
            args = str(args)
    out = run["output"]
    if isinstance(out, ToolMessage) or isinstance(out, BaseMessage):
        out = content_text(out.content)
    elif not isinstance(out, str):
        try:
            out = json.dumps(out, ensure_ascii=False, default=str)
        except Exception:  # noqa: BLE001
            out = str(out)
    return f"Tool {run['name']} called with {args} returned: {out}"


# -- the wrapper ---------------------------------------------------------------------
class SleepRunnable(RunnableSerializable[Any, Any]):
    """A Runnable with episodic memory (see :func:`with_sleep`)."""

    bound: Runnable
    home: Any = None
    k: int = 4
    placement: Any = "system"
    session_id: Optional[str] = None
    namespace: Optional[str] = None
    memory_key: str = "memories"
    query_key: Optional[str] = None
    format_memories: Optional[Callable[[list], str]] = None
    min_score: Optional[float] = None
    recall_filters: dict[str, Any] = {}
    inject: bool = True
    record: bool = True
    record_tools: bool = True
    source: str = "user"
    tool_trust: Any = "untrusted"
    on_memory_error: Optional[Callable[[str, BaseException], Any]] = None
    retry_after: float = 30.0

    model_config = ConfigDict(arbitrary_types_allowed=True)
    _down_until: float = PrivateAttr(default=0.0)
    _down_error: str = PrivateAttr(default="")

    # schema: that of the wrapped runnable
    @property
    def InputType(self) -> Any:  # noqa: N802
        return self.bound.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return self.bound.OutputType

    def get_input_schema(self, config: Optional[RunnableConfig] = None):
        return self.bound.get_input_schema(config)

    def get_output_schema(self, config: Optional[RunnableConfig] = None):
        return self.bound.get_output_schema(config)

    def get_name(self, suffix: Optional[str] = None, *, name: Optional[str] = None) -> str:
        return name or f"with_sleep({self.bound.get_name()})" + (suffix or "")

    # options per call
    def _opts(self, config: Optional[RunnableConfig]) -> tuple[Optional[str], bool, bool]:
        conf = (config or {}).get("configurable") or {}
        return (conf.get("session_id", self.session_id), bool(conf.get("use_memory", self.inject)),
                bool(conf.get("record", self.record)))

    def _namespace(self, config: Optional[RunnableConfig]) -> dict[str, Any]:
        """The hard partition of this call (configurable "namespace", else the wrapper's), as recall/remember kwargs."""
        ns = ((config or {}).get("configurable") or {}).get("namespace", self.namespace)
        return {} if ns is None else {"namespace": ns}

    # the query and the injection
    def query_of(self, value: Any) -> Optional[str]:
        """The text memories are retrieved for: the user's latest message."""
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            if self.query_key is not None:
                q = value.get(self.query_key)
                msgs = _as_messages(q)
                return _last_human(msgs)[1] if msgs else (q if isinstance(q, str) else None)
            if "messages" in value:
                msgs = _as_messages(value["messages"])
                return _last_human(msgs)[1] if msgs else None
            for key in _QUERY_KEYS:
                if isinstance(value.get(key), str):
                    return value[key]
            return None
        msgs = _as_messages(value)
        return _last_human(msgs)[1] if msgs else None

    def _format(self, episodes: list) -> str:
        if self.format_memories is not None:
            return self.format_memories(episodes)
        return (format_memories_system if self.placement == "system" else format_memories_list)(episodes)

    def inject_into(self, value: Any, episodes: list) -> Any:
        """The input with the memories placed as configured (unchanged when there are none)."""
        if callable(self.placement):
            return self.placement(value, episodes)
        if self.placement == "key":
            if not isinstance(value, dict):
                raise TypeError(f"with_sleep(placement='key') needs a dict input, got {type(value).__name__}")
            return {**value, self.memory_key: self._format(episodes) if episodes else ""}
        if not episodes:
            return value
        block = self._format(episodes)
        if not block:
            return value
        if isinstance(value, dict):
            if self.query_key is not None:
                key: Optional[str] = self.query_key
            elif "messages" in value:
                key = "messages"
            else:
                key = next((k for k in _QUERY_KEYS if isinstance(value.get(k), str)), None)
            target = value.get(key) if key else None
            msgs = _as_messages(target) if target is not None and not isinstance(target, str) else None
            if msgs is not None:
                return {**value, key: self._inject_messages(msgs, block)}
            if isinstance(target, str) and self.placement == "human":
                return {**value, key: f"{block}\n\n{target}"}
            return {**value, self.memory_key: block}  # e.g. a prompt template's input: a variable
        if isinstance(value, str):
            if self.placement == "human":
                return f"{block}\n\n{value}"
            return [SystemMessage(content=block, id=MEMORY_MESSAGE_ID), HumanMessage(content=value)]
        msgs = _as_messages(value)
        if msgs is None:
            return value
        return self._inject_messages(msgs, block)

    def _inject_messages(self, msgs: list[BaseMessage], block: str) -> list[BaseMessage]:
        msgs = list(msgs)
        if self.placement == "human":
            i, text = _last_human(msgs)
            if i >= 0:
                msgs[i] = msgs[i].model_copy(update={"content": f"{block}\n\n{text}"})
                return msgs
        if msgs and isinstance(msgs[0], SystemMessage):
            merged = msgs[0].model_copy(update={"content": f"{content_text(msgs[0].content)}\n\n{block}"})
            return [merged] + msgs[1:]
        return [SystemMessage(content=block, id=MEMORY_MESSAGE_ID)] + msgs

    # memory, with failures reported
    def _check_up(self) -> None:
        """Fail fast while memory is known to be down (an unreachable server costs seconds per try)."""
        if time.monotonic() < self._down_until:
            left = self._down_until - time.monotonic()
            raise MemoryUnavailable(f"memory skipped: it failed moments ago ({self._down_error}); "
                                    f"next try in {left:.0f} s")

    def _mark_down(self, err: BaseException) -> None:
        from agentsleep.errors import InputError

        if self.retry_after > 0 and not isinstance(err, (MemoryUnavailable, InputError)):
            self._down_until = time.monotonic() + self.retry_after
            self._down_error = describe(err)

    def _recall(self, query: Optional[str], use_memory: bool, ns: Optional[dict[str, Any]] = None) -> list:
        if not use_memory or not query or not query.strip():
            return []
        self._check_up()
        eps = resolve_home(self.home).recall(query, self.k, **{**self.recall_filters, **(ns or {})})
        if self.min_score is not None:
            eps = [e for e in eps if e.score is None or e.score >= self.min_score]
        return eps

    def _trust_for(self, name: str) -> str:
        return self.tool_trust(name) if callable(self.tool_trust) else self.tool_trust

    def _record(self, query: Optional[str], answer: Optional[str], tools: list[dict[str, Any]],
                session: Optional[str], memories: list, ns: Optional[dict[str, Any]] = None) -> list[str]:
        if not (query and query.strip()) and not (self.record_tools and tools):
            return []
        self._check_up()
        home = resolve_home(self.home)
        prov = {"adapter": "langchain.with_sleep", "memories_used": ",".join(m.id for m in memories)[:500]}
        ids = []
        if self.record_tools:
            for run in tools:
                r = home.remember(_tool_text(run), kind="tool", source=f"tool:{run['name']}", session=session,
                                  trust=self._trust_for(run["name"]), provenance=prov, **(ns or {}))
                ids.append(r.id)
        if query and query.strip():
            text = f"User: {query.strip()}"
            if answer and answer.strip():
                text += f"\nAssistant: {answer.strip()}"
            r = home.remember(text, kind="turn", source=self.source, session=session, provenance=prov, **(ns or {}))
            ids.append(r.id)
        return ids

    def _failed(self, stage: str, err: BaseException) -> None:
        self._mark_down(err)
        if self.on_memory_error is not None:
            try:
                self.on_memory_error(stage, err)
            except Exception:  # noqa: BLE001 - the hook must not break the agent
                pass

    def _child(self, run_manager: Any, config: RunnableConfig, recorder: _ToolRecorder) -> RunnableConfig:
        cm = run_manager.get_child()
        cm.add_handler(recorder, inherit=True)
        return patch_config(config, callbacks=cm)

    # sync
    def _before(self, value: Any, run_manager: Any, config: RunnableConfig):
        session, use_memory, record = self._opts(config)
        query = self.query_of(value)
        memories: list = []
        try:
            memories = self._recall(query, use_memory, self._namespace(config))
        except Exception as e:  # noqa: BLE001 - reported, then the agent goes on without memories
            emit_failure(run_manager, "recall", e)
            self._failed("recall", e)
        new_value = self.inject_into(value, memories) if (use_memory or self.placement == "key") else value
        return new_value, query, memories, session, record

    def _after(self, run_manager: Any, query, answer, recorder: _ToolRecorder, session, memories, record,
               config: Optional[RunnableConfig] = None) -> None:
        if not record:
            return
        try:
            self._record(query, answer, recorder.finished, session, memories, self._namespace(config))
        except Exception as e:  # noqa: BLE001
            emit_failure(run_manager, "record", e)
            self._failed("record", e)

    def _invoke(self, value: Any, run_manager: Any, config: RunnableConfig, **kwargs: Any) -> Any:
        recorder = _ToolRecorder()
        new_value, query, memories, session, record = self._before(value, run_manager, config)
        out = self.bound.invoke(new_value, self._child(run_manager, config, recorder), **kwargs)
        self._after(run_manager, query, _last_ai_text(out), recorder, session, memories, record, config)
        return out

    def invoke(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Any:  # noqa: A002
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _transform(self, inputs: Iterator[Any], run_manager: Any, config: RunnableConfig, **kwargs: Any) -> Iterator[Any]:
        value = _merge_input(inputs)
        recorder = _ToolRecorder()
        new_value, query, memories, session, record = self._before(value, run_manager, config)
        acc = _Accumulator()
        for chunk in self.bound.stream(new_value, self._child(run_manager, config, recorder), **kwargs):
            acc.add(chunk)
            yield chunk
        self._after(run_manager, query, acc.answer(), recorder, session, memories, record, config)

    def stream(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Iterator[Any]:  # noqa: A002
        yield from self._transform_stream_with_config(iter([input]), self._transform, config, **kwargs)

    def transform(self, input: Iterator[Any], config: Optional[RunnableConfig] = None, **kwargs: Any) -> Iterator[Any]:  # noqa: A002
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    # async (store calls run in a worker thread)
    async def _abefore(self, value: Any, run_manager: Any, config: RunnableConfig):
        session, use_memory, record = self._opts(config)
        query = self.query_of(value)
        memories: list = []
        try:
            memories = await run_in_executor(config, self._recall, query, use_memory, self._namespace(config))
        except Exception as e:  # noqa: BLE001
            await aemit_failure(run_manager, "recall", e)
            self._failed("recall", e)
        new_value = self.inject_into(value, memories) if (use_memory or self.placement == "key") else value
        return new_value, query, memories, session, record

    async def _aafter(self, run_manager: Any, config, query, answer, recorder, session, memories, record) -> None:
        if not record:
            return
        try:
            await run_in_executor(config, self._record, query, answer, recorder.finished, session, memories,
                                  self._namespace(config))
        except Exception as e:  # noqa: BLE001
            await aemit_failure(run_manager, "record", e)
            self._failed("record", e)

    async def _ainvoke(self, value: Any, run_manager: Any, config: RunnableConfig, **kwargs: Any) -> Any:
        recorder = _ToolRecorder()
        new_value, query, memories, session, record = await self._abefore(value, run_manager, config)
        out = await self.bound.ainvoke(new_value, self._child(run_manager, config, recorder), **kwargs)
        await self._aafter(run_manager, config, query, _last_ai_text(out), recorder, session, memories, record)
        return out

    async def ainvoke(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Any:  # noqa: A002
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _atransform(self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig,
                          **kwargs: Any) -> AsyncIterator[Any]:
        value = await _amerge_input(inputs)
        recorder = _ToolRecorder()
        new_value, query, memories, session, record = await self._abefore(value, run_manager, config)
        acc = _Accumulator()
        async for chunk in self.bound.astream(new_value, self._child(run_manager, config, recorder), **kwargs):
            acc.add(chunk)
            yield chunk
        await self._aafter(run_manager, config, query, acc.answer(), recorder, session, memories, record)

    async def astream(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> AsyncIterator[Any]:  # noqa: A002
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self._atransform_stream_with_config(one(), self._atransform, config, **kwargs):
            yield chunk

    async def atransform(self, input: AsyncIterator[Any], config: Optional[RunnableConfig] = None,  # noqa: A002
                         **kwargs: Any) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk


def _merge_input(inputs: Iterator[Any]) -> Any:
    acc = _Accumulator()
    for x in inputs:
        acc.add(x)
    return acc.value


async def _amerge_input(inputs: AsyncIterator[Any]) -> Any:
    acc = _Accumulator()
    async for x in inputs:
        acc.add(x)
    return acc.value


def with_sleep(runnable: Runnable, *, home: Any = None, k: int = 4, placement: Placement = "system",
               session_id: Optional[str] = None, namespace: Optional[str] = None, **options: Any) -> SleepRunnable:
    """Wrap `runnable` (a chat model, chain or agent) with episodic memory from `home`.

    home        a Home, a path (opened once per process and shared), or None ($AGENTSLEEP_HOME).
    k           memories injected per call (top-k by similarity to the user's latest message).
    placement   where they go:
                "system" (default) - a system message (merged into an existing first one),
                  worded like the memory prompt sleep trains with; a str input becomes
                  [system, human] messages (fine for chat models; use "human" for runnables
                  that need a str); for a dict input without "messages" (a prompt
                  template), the ``memory_key`` variable;
                "human" - prefixed to the latest user message (or the query key's string);
                "key" - ``input[memory_key]`` (default "memories") for prompt templates;
                  always set, "" when there is nothing to inject;
                a callable ``(input, episodes) -> new input`` for anything else.
    session_id  stored on every episode (per call: config={"configurable": {"session_id": ...}}).
    namespace   the hard partition (a user, an agent, a conversation) memories are recalled from and
                recorded into; recall never crosses it (per call: {"configurable": {"namespace": ...}};
                None = the store's "default").

    Other options (SleepRunnable fields): memory_key, query_key (where the user's text is in
    a dict input), format_memories (``episodes -> str``), min_score, recall_filters (e.g.
    {"kind": "fact"}), inject / record / record_tools (switch parts off), source (of turn
    episodes, default "user"), tool_trust ("untrusted" by default, so tool output stays out
    of the weights unless sleep.consolidate_untrusted; or a callable tool name -> trust),
    on_memory_error (``(stage, exception) -> None``, called after the warning and event),
    retry_after (seconds, default 30: after a store failure, calls skip memory - still with a
    warning and event each time - instead of waiting on an unreachable server; 0 = retry every call).

    Caveat for stateful graphs (a LangGraph checkpointer): injected messages become part of
    the thread's state; use placement="key" with a prompt that reads the key, or a callable.
    """
    if not isinstance(runnable, Runnable):
        raise TypeError(f"with_sleep wraps a LangChain Runnable, got {type(runnable).__name__}")
    if not (callable(placement) or placement in ("system", "human", "key")):
        raise ValueError(f"placement must be 'system', 'human', 'key' or a callable, got {placement!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if "namespace" in (options.get("recall_filters") or {}):  # it would read one partition and write another
        raise ValueError("recall_filters may not hold 'namespace': pass namespace=..., which recall and recording share")
    return SleepRunnable(bound=runnable, home=home, k=k, placement=placement, session_id=session_id,
                         namespace=namespace, **options)
