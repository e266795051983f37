"""LangChain views of the episode store: a retriever and a chat message history."""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any, Literal, Sequence

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from ._common import content_text, emit_failure, resolve_home


def episode_document(ep: Any) -> Document:
    """An Episode as a Document: text as page_content, the rest as metadata."""
    md = {"id": ep.id, "kind": ep.kind, "source": ep.source, "trust": ep.trust,
          "created_at": ep.created_at.isoformat() if ep.created_at else None}
    md["namespace"] = getattr(ep, "namespace", "default")
    if getattr(ep, "event_time", None) is not None:
        md["event_time"] = ep.event_time.isoformat()
    for key in ("session", "score", "consolidated_in", "parent_id", "speaker"):
        val = getattr(ep, key, None)
        if val is not None:
            md[key] = val
    return Document(page_content=ep.text, metadata=md, id=ep.id)


class EpisodeRetriever(BaseRetriever):
    """Top-k episodes for a query, as Documents (metadata: id, kind, source, session, score, ...).

    ``home`` is a Home, a path, or None ($AGENTSLEEP_HOME). ``namespace`` is the
    hard partition searched (a user, an agent, a conversation; never crossed).
    Filters (``kind``, ``source``, ``session``, ``trust``, ``since``, ``until``) are passed to ``Home.recall``;
    ``min_score`` drops weak matches. With ``on_error="warn"`` a store that
    cannot be reached gives no documents, a logged warning and an
    ``agentsleep_memory_error`` callback event instead of an exception.
    """

    home: Any = None
    k: int = 4
    kind: str | None = None
    source: str | None = None
    session: str | None = None
    trust: str | None = None
    namespace: str = "default"
    since: Any = None
    until: Any = None
    min_score: float | None = None
    on_error: Literal["raise", "warn"] = "raise"

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _filters(self) -> dict[str, Any]:
        return {k: v for k, v in (("kind", self.kind), ("source", self.source), ("session", self.session),
                                  ("trust", self.trust), ("namespace", self.namespace), ("since", self.since),
                                  ("until", self.until)) if v is not None}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        try:
            eps = resolve_home(self.home).recall(query, self.k, **self._filters())
        except Exception as e:  # noqa: BLE001 - reported below, or re-raised
            if self.on_error == "raise":
                raise
            emit_failure(run_manager, "retrieve", e)
            return []
        if self.min_score is not None:
            eps = [e for e in eps if e.score is None or e.score >= self.min_score]
        return [episode_document(e) for e in eps]


# -- chat message history ---------------------------------------------------------
_PREFIX = {"human": "User: ", "ai": "Assistant: ", "system": "System: ", "tool": "Tool result: "}


class EpisodeChatMessageHistory(BaseChatMessageHistory):
    """A session's messages, stored as episodes (so they are remembered and consolidated).

    Each message is one episode with ``session=session_id``: human and AI
    messages as ``kind="turn"`` (text ``"User: ..."`` / ``"Assistant: ..."``),
    tool results as ``kind="tool"`` (``source="tool:<name>"``, ``trust=tool_trust``),
    system messages as ``kind="observation"`` (only with ``record_system=True``;
    by default they are not stored). Role, order and tool calls are kept in the
    episode's provenance, so messages round-trip.

    The store drops an exact duplicate of a turn within a session (and of a
    tool result or system message anywhere in the namespace); when a message
    repeats one (e.g. "User: thanks" twice), it is stored with a
    ``[session #n]`` header so the history stays complete.

    ``clear()`` forgets this history's episodes, consolidated ones included
    (``Home.forget``: the next sleep rebuilds the weights without them).
    """

    def __init__(self, session_id: str, home: Any = None, *, record_system: bool = False,
                 tool_trust: str = "untrusted", source: str = "user", namespace: str = "default"):
        from agentsleep.memory.episode import check_namespace

        if not session_id:
            raise ValueError("EpisodeChatMessageHistory needs a session_id")
        check_namespace(namespace, "EpisodeChatMessageHistory: namespace")
        self.session_id = str(session_id)
        self.namespace = namespace  # the hard partition (per user) its turns are stored and read in
        self._home_arg = home
        self.record_system = record_system
        self.tool_trust = tool_trust
        self.source = source

    @property
    def home(self) -> Any:
        return resolve_home(self._home_arg)

    # episodes of this history, grouped per message (chunks reassembled)
    def _records(self) -> list[tuple[dict[str, Any], str, str]]:
        eps = self.home.episodes(session=self.session_id, namespace=self.namespace)
        groups: dict[str, list[Any]] = defaultdict(list)
        for ep in eps:
            if "lc_role" in ep.provenance:
                groups[ep.parent_id or ep.id].append(ep)
        out = []
        for root, parts in groups.items():
            parts.sort(key=lambda e: e.chunk_index)
            out.append((parts[0].provenance, "".join(p.text for p in parts), root))
        out.sort(key=lambda r: int(r[0].get("lc_seq", 0)))
        return out

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        msgs: list[BaseMessage] = []
        for prov, text, ep_id in self._records():
            start = int(prov.get("lc_prefix", 0))
            content = text[start:start + int(prov.get("lc_len", len(text)))]
            role = prov["lc_role"]
            if role == "human":
                msgs.append(HumanMessage(content=content, id=ep_id))
            elif role == "ai":
                calls = json.loads(prov["lc_tool_calls"]) if prov.get("lc_tool_calls") else []
                msgs.append(AIMessage(content=content, tool_calls=calls, id=ep_id))
            elif role == "tool":
                msgs.append(ToolMessage(content=content, tool_call_id=str(prov.get("lc_tool_call_id", "")),
                                        name=prov.get("lc_name") or None, id=ep_id))
            elif role == "system":
                msgs.append(SystemMessage(content=content, id=ep_id))
            else:
                msgs.append(ChatMessage(role=str(prov.get("lc_chat_role", role)), content=content, id=ep_id))
        return msgs

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        with _session_lock(self.home.root, self.namespace, self.session_id):  # two writers: no equal lc_seq
            self._add(messages)

    def _add(self, messages: Sequence[BaseMessage]) -> None:
        home = self.home
        seq = max((int(p.get("lc_seq", 0)) for p, _, _ in self._records()), default=0)
        for msg in messages:
            role = msg.type if msg.type in _PREFIX else "chat"
            if role == "system" and not self.record_system:
                continue
            seq += 1
            content = content_text(msg.content).strip()
            prov: dict[str, Any] = {"lc_role": role, "lc_seq": seq, "lc_len": len(content),
                                    "adapter": "langchain.history"}
            kind, source, trust = "turn", self.source, "trusted"
            text = content
            if role == "ai" and isinstance(msg, AIMessage) and msg.tool_calls:
                prov["lc_tool_calls"] = json.dumps([{"name": c["name"], "args": c["args"], "id": c.get("id")}
                                                    for c in msg.tool_calls])
                calls = "; ".join(f"{c['name']}({json.dumps(c['args'], ensure_ascii=False)})" for c in msg.tool_calls)
                text = (content + "\n" if content else "") + f"[calls {calls}]"
            elif role == "tool":
                name = getattr(msg, "name", None) or ""
                prov.update(lc_tool_call_id=str(getattr(msg, "tool_call_id", "")), lc_name=name)
                kind, source, trust = "tool", f"tool:{name or 'unknown'}", self.tool_trust
            elif role == "system":
                kind = "observation"
            elif role == "chat":
                prov["lc_chat_role"] = getattr(msg, "role", "chat")
            prefix = _PREFIX.get(role, f"{prov.get('lc_chat_role', 'chat').capitalize()}: ")
            if not text:
                text = "(empty)"  # the store refuses empty memories; lc_len = 0 restores ""
            prov["lc_prefix"] = len(prefix)
            res = home.remember(prefix + text, kind=kind, source=source, session=self.session_id, trust=trust,
                                provenance=prov, namespace=self.namespace)
            if res.duplicate:
                prefix = f"[{self.session_id} #{seq}] " + prefix
                prov["lc_prefix"] = len(prefix)
                home.remember(prefix + text, kind=kind, source=source, session=self.session_id, trust=trust,
                              provenance=prov, namespace=self.namespace)

    def clear(self) -> None:
        """Forget the whole history at once (while a sleep runs this raises before anything is forgotten)."""
        with _session_lock(self.home.root, self.namespace, self.session_id):
            ids = [ep_id for _, _, ep_id in self._records()]
            if ids:
                self.home.forget(ids)


_LOCKS: dict[tuple, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _session_lock(root: Any, namespace: str, session: str) -> threading.Lock:
    """One lock per history in this process: reading the last sequence number and writing after it is one step."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((str(root), namespace, session), threading.Lock())
