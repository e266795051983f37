"""SleepChatModel: a LangChain chat model over the agent's own (consolidated) model.

Every call goes through a *backend*; the default one runs in-process on
``Home.engine``, which reloads whenever the registry's CURRENT pointer moves,
so the model always answers with the current version (after a sleep promotes
a new one, or a rollback). The version that produced each answer is in
``response_metadata["model_version"]``.

Backends are pluggable (a vLLM backend can be added without touching this
class): anything implementing :class:`ChatBackend`, or a plain callable
``fn(messages, *, tools=None, max_new_tokens=None, stop=None) -> str | Completion``
taking Hugging Face-style message dicts.

Tool calling
------------
``bind_tools`` always works. How tools reach the model depends on its chat
template:

* **template** - the template renders ``tools`` (Qwen, Llama 3.1+, Hermes...):
  tools go through ``apply_chat_template(messages, tools=...)``, assistant tool
  calls and tool results as the template's ``tool_calls`` / ``tool`` messages.
* **json** - the template ignores tools (SmolLM2's does): the JSON-in-text
  protocol. The tool schemas and the calling convention are appended to the
  system message (see ``TOOL_SYSTEM``); the model calls a tool by replying
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; earlier calls are
  rendered the same way in assistant turns and results come back as user turns
  holding ``<tool_response>{"name": ..., "content": ...}</tool_response>``.

``tool_protocol="auto"`` (default) picks per call from the backend's
``supports_tools``. The output parser is the same for both: ``<tool_call>``
blocks (Hermes/Qwen style), or a reply that is one bare JSON object naming a
bound tool. Unparseable calls become ``invalid_tool_calls``. A small model
that has never been trained on tool use will often ignore the protocol; the
protocol makes tools usable, not reliable.
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, runtime_checkable

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, PrivateAttr

from ._common import content_text, resolve_home

TOOL_SYSTEM = (
    "You can call tools. The available tools, as JSON schemas:\n<tools>\n{tools}\n</tools>\n"
    "To call a tool, reply with nothing but\n<tool_call>\n"
    '{{"name": "<tool name>", "arguments": {{<arguments as a JSON object>}}}}\n</tool_call>\n'
    "Tool results come back in <tool_response> blocks. When you have what you need, answer normally."
)
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


# -- backends ------------------------------------------------------------------
@dataclass
class Completion:
    """Text produced by a backend (a whole answer, or one streamed delta) and the model version."""

    text: str
    version: str | None = None


@runtime_checkable
class ChatBackend(Protocol):
    """What SleepChatModel needs from a model server.

    ``messages`` are Hugging Face chat dicts (``{"role", "content"}``, plus
    ``tool_calls`` / ``tool_call_id`` / ``name`` when tools are rendered by the
    template). ``tools`` (OpenAI function format) is only passed when
    ``supports_tools`` is true. ``stream`` yields text deltas.
    """

    @property
    def supports_tools(self) -> bool: ...

    def generate(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 max_new_tokens: int | None = None, stop: list[str] | None = None) -> Completion: ...

    def stream(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
               max_new_tokens: int | None = None, stop: list[str] | None = None) -> Iterator[Completion]: ...


def _cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in (stop or ()) if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def template_supports_tools(tok: Any) -> bool:
    """True when the tokenizer's chat template renders a ``tools`` argument."""
    tmpl = getattr(tok, "chat_template", None)
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("tool_use") or tmpl.get("default") or ""
    return isinstance(tmpl, str) and re.search(r"\btools\b", tmpl) is not None


class InProcessBackend:
    """Generation in this process on ``home.engine`` (transformers), current version every call.

    Uses the engine's generation lock so that it never runs ``generate`` on the
    model concurrently with ``Home.ask`` or another call.
    """

    def __init__(self, home: Any):
        self.home = home
        self._fallback_lock = threading.Lock()

    def _live(self) -> tuple[Any, Any]:
        eng = self.home.engine  # reloads when CURRENT moved
        return eng, eng.live

    def _lock(self, eng: Any) -> threading.Lock:
        return getattr(eng, "_gen_lock", None) or self._fallback_lock

    @property
    def supports_tools(self) -> bool:
        return template_supports_tools(self._live()[1].tok)

    def render(self, tok: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        from agentsleep.models.generate import render_messages

        return render_messages(tok, messages, **({"tools": tools} if tools else {}))

    def _max_new(self, eng: Any, max_new_tokens: int | None) -> int:
        return max_new_tokens or getattr(getattr(eng, "cfg", None), "max_new_tokens", None) or 96

    def generate(self, messages, *, tools=None, max_new_tokens=None, stop=None) -> Completion:
        from agentsleep.models import generate as gen

        eng, live = self._live()
        prompt = self.render(live.tok, messages, tools)
        with self._lock(eng):
            text = gen.generate(live.model, live.tok, [prompt], max_new_tokens=self._max_new(eng, max_new_tokens))[0]
        return Completion(_cut_at_stop(text, stop)[0], live.version.name)

    def stream(self, messages, *, tools=None, max_new_tokens=None, stop=None) -> Iterator[Completion]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        eng, live = self._live()
        prompt = self.render(live.tok, messages, tools)
        cancel = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):  # noqa: ANN001
                return cancel.is_set()

        streamer = TextIteratorStreamer(live.tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        errors: list[BaseException] = []
        lock = self._lock(eng)

        def run() -> None:
            try:
                with lock:
                    device = next(live.model.parameters()).device
                    enc = live.tok([prompt], return_tensors="pt", add_special_tokens=False).to(device)
                    with torch.no_grad():
                        live.model.generate(**enc, max_new_tokens=self._max_new(eng, max_new_tokens), do_sample=False,
                                            temperature=None, top_p=None, top_k=None,
                                            pad_token_id=live.tok.pad_token_id, streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([_Cancel()]))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                errors.append(e)
                streamer.end()

        th = threading.Thread(target=run, name="agentsleep-stream", daemon=True)
        th.start()
        version = live.version.name
        full, sent = "", 0
        try:
            for delta in streamer:
                full += delta
                text, stopped = _cut_at_stop(full, stop)
                if stop and not stopped:  # hold back a possible partial stop string
                    hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
                    text = text[:len(text) - hold]
                if len(text) > sent:
                    yield Completion(text[sent:], version)
                    sent = len(text)
                if stopped:
                    break
            if not cancel.is_set() and stop:
                text, _ = _cut_at_stop(full, stop)
                if len(text) > sent:
                    yield Completion(text[sent:], version)
        finally:
            cancel.set()
            th.join()
        if errors:
            raise errors[0]


class CallableBackend:
    """Wrap ``fn(messages, *, tools=None, max_new_tokens=None, stop=None) -> str | Completion``.

    ``stream`` yields the whole answer as one delta. ``supports_tools`` says
    whether ``fn`` renders tools itself (default: no, the JSON protocol is used).
    """

    def __init__(self, fn: Callable[..., Any], *, supports_tools: bool = False, version: str | None = None):
        self.fn = fn
        self._supports_tools = supports_tools
        self.version = version

    @property
    def supports_tools(self) -> bool:
        return self._supports_tools

    def generate(self, messages, *, tools=None, max_new_tokens=None, stop=None) -> Completion:
        out = self.fn(messages, tools=tools, max_new_tokens=max_new_tokens, stop=stop)
        if isinstance(out, Completion):
            return Completion(_cut_at_stop(out.text, stop)[0], out.version or self.version)
        return Completion(_cut_at_stop(str(out), stop)[0], self.version)

    def stream(self, messages, *, tools=None, max_new_tokens=None, stop=None) -> Iterator[Completion]:
        yield self.generate(messages, tools=tools, max_new_tokens=max_new_tokens, stop=stop)


def as_backend(obj: Any) -> ChatBackend:
    if isinstance(obj, ChatBackend):
        return obj
    if callable(obj):
        return CallableBackend(obj)
    raise TypeError(f"backend must implement ChatBackend (generate/stream/supports_tools) or be a callable, "
                    f"got {type(obj).__name__}")


# -- tool calls in text ---------------------------------------------------------
def _tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    return {t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict)} - {None}


def _new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:16]


def _parse_call_json(raw: str) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(name, args, error) from one call's JSON text."""
    m = _FENCE_RE.match(raw.strip())
    body = m.group(1) if m else raw.strip()
    try:
        obj = json.loads(body)
    except ValueError as e:
        return None, None, f"not valid JSON ({e})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, None, 'expected {"name": ..., "arguments": {...}}'
    args = obj.get("arguments", obj.get("args", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return obj["name"], None, "arguments are not a JSON object"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return obj["name"], None, "arguments are not a JSON object"
    return obj["name"], args, None


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None) -> tuple[str, list[dict], list[dict]]:
    """Split model output into (content, tool_calls, invalid_tool_calls).

    A ``<tool_call>`` naming an unbound tool is still returned as a tool call
    (as other providers do: the agent's tool runner reports the unknown name
    back to the model); one that is not valid JSON becomes an invalid call.
    """
    names = _tool_names(tools)
    calls: list[dict] = []
    invalid: list[dict] = []
    if TOOL_CALL_OPEN in text:
        for m in _TOOL_CALL_RE.finditer(text):
            raw = m.group(1)
            name, args, err = _parse_call_json(raw)
            if err is None:
                calls.append(tool_call(name=name, args=args, id=_new_call_id()))
            else:
                invalid.append(invalid_tool_call(name=name, args=raw, id=_new_call_id(), error=err))
        content = _TOOL_CALL_RE.sub("", text).strip()
        return content, calls, invalid
    stripped = text.strip()
    if names and (stripped.startswith("{") or stripped.startswith("```")):
        name, args, err = _parse_call_json(stripped)
        if err is None and name in names:
            return "", [tool_call(name=name, args=args, id=_new_call_id())], []
    return text, [], []


def _maybe_tool_call_start(text: str) -> int:
    """Index from which `text` may be (the start of) a tool call; len(text) when it can't."""
    i = text.find(TOOL_CALL_OPEN)
    if i >= 0:
        return i
    for k in range(len(TOOL_CALL_OPEN) - 1, 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:k]):
            return len(text) - k
    return len(text)


# -- messages ------------------------------------------------------------------
def _role(msg: BaseMessage) -> str:
    if isinstance(msg, SystemMessage):
        return "system"
    if isinstance(msg, HumanMessage):
        return "user"
    if isinstance(msg, AIMessage):
        return "assistant"
    if isinstance(msg, ToolMessage):
        return "tool"
    if isinstance(msg, ChatMessage):
        return {"human": "user", "ai": "assistant"}.get(msg.role, msg.role)
    return {"human": "user", "ai": "assistant"}.get(msg.type, msg.type)


def to_hf_messages(messages: Sequence[BaseMessage], *, tools: list[dict[str, Any]] | None, native: bool,
                   tool_choice: Any = None) -> list[dict[str, Any]]:
    """LangChain messages -> chat-template dicts, rendering tools for the chosen protocol."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        role, text = _role(msg), content_text(msg.content)
        if role == "assistant" and isinstance(msg, AIMessage) and msg.tool_calls:
            if native:
                out.append({"role": "assistant", "content": text,
                            "tool_calls": [{"id": tc.get("id"), "type": "function",
                                            "function": {"name": tc["name"], "arguments": tc["args"]}}
                                           for tc in msg.tool_calls]})
            else:
                blocks = "\n".join(f"{TOOL_CALL_OPEN}\n{json.dumps({'name': tc['name'], 'arguments': tc['args']})}\n"
                                   f"{TOOL_CALL_CLOSE}" for tc in msg.tool_calls)
                out.append({"role": "assistant", "content": (text + "\n" + blocks).strip()})
        elif role == "tool":
            name = getattr(msg, "name", None)
            if native:
                d = {"role": "tool", "content": text, "tool_call_id": getattr(msg, "tool_call_id", None)}
                if name:
                    d["name"] = name
                out.append(d)
            else:
                body = json.dumps({"name": name, "content": text}, ensure_ascii=False)
                out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
        else:
            out.append({"role": role, "content": text})
    if tools and not native:
        instr = TOOL_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if tool_choice in ("any", "required"):
            instr += "\nYou must call one of the tools now."
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none"):
            instr += f"\nYou must call the tool {tool_choice} now."
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instr}
        else:
            out.insert(0, {"role": "system", "content": instr})
    return out


def _normalise_tool_choice(tool_choice: Any, tools: list[dict[str, Any]]) -> Any:
    if tool_choice is None or tool_choice in ("auto", "none", "any", "required"):
        return tool_choice
    if tool_choice is True:
        return "any"
    if isinstance(tool_choice, dict):  # {"type": "function", "function": {"name": ...}}
        tool_choice = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    if isinstance(tool_choice, str):
        if tool_choice not in _tool_names(tools):
            raise ValueError(f"tool_choice {tool_choice!r} is not one of the bound tools "
                             f"({', '.join(sorted(_tool_names(tools)))})")
        return tool_choice
    raise ValueError(f"unsupported tool_choice {tool_choice!r}")


# -- the chat model --------------------------------------------------------------
class SleepChatModel(BaseChatModel):
    """The agent's own model as a LangChain chat model; follows promotions.

    ``SleepChatModel(home=home)`` runs in-process on ``home.engine`` (a Home,
    a path, or None for $AGENTSLEEP_HOME). ``SleepChatModel(backend=...)`` uses
    any :class:`ChatBackend` or callable instead (e.g. a vLLM client).
    """

    home: Any = None
    backend: Any = None
    max_new_tokens: int | None = None
    tool_protocol: Literal["auto", "template", "json"] = "auto"

    model_config = ConfigDict(arbitrary_types_allowed=True)
    _backend: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "agentsleep"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"backend": type(self.resolved_backend()).__name__ if self._backend else "unresolved",
                "max_new_tokens": self.max_new_tokens, "tool_protocol": self.tool_protocol}

    def resolved_backend(self) -> ChatBackend:
        if self._backend is None:
            self._backend = as_backend(self.backend) if self.backend is not None else InProcessBackend(resolve_home(self.home))
        return self._backend

    # tools
    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any], *,
                   tool_choice: str | dict | bool | None = None, **kwargs: Any) -> Runnable[Any, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        tool_choice = _normalise_tool_choice(tool_choice, formatted)
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _prepare(self, messages: list[BaseMessage], kwargs: dict[str, Any]):
        backend = self.resolved_backend()
        tools = kwargs.get("tools") or None
        tool_choice = kwargs.get("tool_choice")
        if tool_choice == "none":
            tools = None
        native = False
        if tools:
            if self.tool_protocol == "template":
                if not backend.supports_tools:
                    raise ValueError("tool_protocol='template' but this model's chat template does not render tools; "
                                     "use tool_protocol='auto' or 'json'")
                native = True
            elif self.tool_protocol == "auto":
                native = bool(backend.supports_tools)
        hf = to_hf_messages(messages, tools=tools, native=native, tool_choice=tool_choice)
        max_new = kwargs.get("max_new_tokens") or self.max_new_tokens
        return backend, hf, tools, native, max_new

    @staticmethod
    def _metadata(version: str | None) -> dict[str, Any]:
        return {"model_version": version, "model_provider": "agentsleep", "model_name": "agentsleep"}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        backend, hf, tools, native, max_new = self._prepare(messages, kwargs)
        comp = backend.generate(hf, tools=tools if native else None, max_new_tokens=max_new, stop=stop)
        if tools:
            content, calls, invalid = parse_tool_calls(comp.text, tools)
        else:
            content, calls, invalid = comp.text, [], []
        meta = self._metadata(comp.version)
        msg = AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid, response_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info={"model_version": comp.version})],
                          llm_output={"model_version": comp.version, "model_name": "agentsleep"})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        backend, hf, tools, native, max_new = self._prepare(messages, kwargs)
        full, sent, version = "", 0, None

        def emit(text: str, **extra: Any) -> ChatGenerationChunk:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, **extra))
            if run_manager:
                run_manager.on_llm_new_token(text, chunk=chunk)
            return chunk

        for piece in backend.stream(hf, tools=tools if native else None, max_new_tokens=max_new, stop=stop):
            version = piece.version or version
            full += piece.text
            visible = full.lstrip()
            if tools:  # hold back what may be a tool call until the end
                limit = 0 if visible.startswith(("{", "```")) else _maybe_tool_call_start(visible)
            else:
                limit = len(visible)
            if limit > sent:
                yield emit(visible[sent:limit])
                sent = limit
        visible = full.strip()
        calls: list[dict] = []
        invalid: list[dict] = []
        if tools:
            content, calls, invalid = parse_tool_calls(visible, tools)
        else:
            content = visible
        rest = content[sent:] if content.startswith(visible[:sent]) else ""
        chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                  for i, c in enumerate(calls)]
        chunks += [tool_call_chunk(name=c.get("name"), args=c.get("args"), id=c.get("id"), index=len(calls) + i)
                   for i, c in enumerate(invalid)]
        yield emit(rest, tool_call_chunks=chunks, response_metadata=self._metadata(version), chunk_position="last")
