"""AgentSleepStore: a LangGraph ``BaseStore`` whose items are episodes the sleep consolidates.

    from langgraph.prebuilt import create_react_agent
    from agentsleep.adapters.langgraph import AgentSleepStore

    store = AgentSleepStore(home)                   # a Home, a path, or None ($AGENTSLEEP_HOME)
    agent = create_react_agent(model, tools, store=store)
    store.put(("memories", "alice"), "tea", {"content": "Alice drinks jasmine tea."})
    store.search(("memories", "alice"), query="what does she drink?")

Each LangGraph namespace is one hard namespace of the episode store (recall
never crosses it): the tuple is encoded as ``"lg:" + JSON`` (``["memories","alice"]``),
which no two tuples share. An item is one episode in that namespace: its text
is the value's ``content`` / ``text`` / ``memory`` string when it has one (LangMem
writes ``{"content": ...}``), the fields named by ``index=[...]`` when given, else
the value as JSON; its provenance says ``via = langgraph.store`` with the
namespace and key. The key and the value themselves live in a small SQLite table
beside the store (``<home>/langgraph/items.sqlite``), so get / put / delete by
key are exact and values come back as they were put.

Replacing or deleting an item forgets its episode the way ``Home.forget`` does
(the weights are rebuilt without it at the next sleep); while a sleep runs that
is refused with a clear error and nothing changes. An episode forgotten by other
means (``agentsleep forget``, MCP) takes its item with it. Two keys whose texts
are equal share one episode (the store keeps no exact duplicates); it is
forgotten when the last of them goes.

search: with ``query``, the namespaces under the prefix are recalled (dense plus
lexical, as everywhere) and items come back best first with their cosine score;
without, most recently updated first. ``filter`` applies to the value's fields
(equality, nested dicts, ``$eq $ne $gt $gte $lt $lte``), then ``offset`` / ``limit``.
TTL is not supported (``supports_ttl = False``).
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.base.embed import get_text_at_path, tokenize_path

from agentsleep.errors import InputError
from agentsleep.memory.store import MAX_RECALL_K


class StoreInputError(InputError, ValueError):
    """Bad input to the store: an agentsleep InputError that is also the ValueError LangGraph's own stores
    raise for it (callers catching ValueError catch both)."""

PREFIX = "lg:"
VIA = "langgraph.store"
TEXT_FIELDS = ("content", "text", "memory")
_SCHEMA = """CREATE TABLE IF NOT EXISTS items (
    ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, episode_id TEXT NOT NULL,
    indexed INTEGER NOT NULL DEFAULT 1, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (ns, key));
CREATE INDEX IF NOT EXISTS items_episode ON items (episode_id);"""


def episode_namespace(namespace: tuple[str, ...]) -> str:
    """The episode store's namespace for a LangGraph namespace (for Home.recall(..., namespace=...))."""
    return PREFIX + json.dumps(list(namespace), ensure_ascii=False, separators=(",", ":"))


def _tuple(ns: str) -> tuple[str, ...]:
    return tuple(json.loads(ns))


def _key(ns: tuple[str, ...]) -> str:
    return json.dumps(list(ns), ensure_ascii=False, separators=(",", ":"))


def _check_labels(namespace: Any, what: str) -> tuple[str, ...]:
    """LangGraph's namespace rules, as one-line errors (InvalidNamespaceError is a ValueError)."""
    if not isinstance(namespace, tuple):
        raise InvalidNamespaceError(f"{what}: a namespace is a tuple of strings, got {type(namespace).__name__}")
    for label in namespace:
        if not isinstance(label, str) or not label:
            raise InvalidNamespaceError(f"{what}: namespace labels are non-empty strings, got {label!r} in {namespace}")
        if "." in label or "\x00" in label:
            raise InvalidNamespaceError(f"{what}: namespace label {label!r} contains '.' or a NUL byte")
    return namespace


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def text_of(value: Mapping[str, Any], index: Optional[list[str]] = None) -> str:
    """The text an item is remembered (and recalled) by."""
    if index:
        texts = [t for path in index for t in get_text_at_path(value, tokenize_path(path)) if t]
        if texts:
            return "\n".join(texts)
    for field in TEXT_FIELDS:
        v = value.get(field)
        if isinstance(v, str) and v.strip():
            return v
        if isinstance(v, Mapping):  # e.g. LangMem with a structured schema: {"content": {...}}
            inner = next((v[f] for f in TEXT_FIELDS if isinstance(v.get(f), str) and v[f].strip()), None)
            return inner or json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def matches(value: Any, filt: Mapping[str, Any]) -> bool:
    """LangGraph's filter semantics over a value's fields (those of InMemoryStore)."""
    return all(_compare(value.get(k) if isinstance(value, Mapping) else None, v) for k, v in filt.items())


def _compare(item: Any, want: Any) -> bool:
    if isinstance(want, Mapping):
        if any(str(k).startswith("$") for k in want):
            return all(_operator(item, op, v) for op, v in want.items())
        return isinstance(item, Mapping) and all(_compare(item.get(k), v) for k, v in want.items())
    if isinstance(want, (list, tuple)):
        return isinstance(item, (list, tuple)) and len(item) == len(want) and all(
            _compare(a, b) for a, b in zip(item, want))
    return item == want


def _operator(item: Any, op: str, want: Any) -> bool:
    if op == "$eq":
        return item == want
    if op == "$ne":
        return item != want
    if op not in ("$gt", "$gte", "$lt", "$lte"):
        raise StoreInputError(f"search: unknown filter operator {op!r}; use $eq, $ne, $gt, $gte, $lt or $lte")
    try:
        a, b = float(item), float(want)
    except (TypeError, ValueError):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _ns_matches(cond: MatchCondition, ns: tuple[str, ...]) -> bool:
    path = tuple(cond.path)
    if len(ns) < len(path):
        return False
    pairs = zip(ns, path) if cond.match_type == "prefix" else zip(reversed(ns), reversed(path))
    if cond.match_type not in ("prefix", "suffix"):
        raise StoreInputError(f"list_namespaces: match type {cond.match_type!r}; use prefix or suffix")
    return all(p == "*" or a == p for a, p in pairs)


class AgentSleepStore(BaseStore):
    """LangGraph's store interface over an agentsleep home's episodes (see the module docstring)."""

    supports_ttl = False
    __slots__ = ("home", "kind", "source", "trust", "_db", "_lock")

    def __init__(self, home: Any = None, *, kind: str = "fact", source: str = "langgraph",
                 trust: str = "trusted"):
        """home: a Home, a path (opened once per process, shared with the LangChain adapters) or None.
        kind / source / trust: what the episodes of items are stored as (trust "untrusted" keeps them
        recallable but out of the weights unless sleep.consolidate_untrusted)."""
        from agentsleep.adapters.langchain._common import resolve_home

        from agentsleep.memory.episode import KINDS

        if kind not in KINDS:
            raise StoreInputError(f"AgentSleepStore: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if trust not in ("trusted", "untrusted"):
            raise StoreInputError(f"AgentSleepStore: trust must be 'trusted' or 'untrusted', got {trust!r}")
        self.home = resolve_home(home)
        self.kind, self.source, self.trust = kind, source, trust
        d = Path(self.home.root) / "langgraph"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(d / "items.sqlite"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        self._db.close()

    # -- BaseStore --------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the operations in order (a put is seen by the ops after it)."""
        ops = list(ops)
        for op in ops:  # everything is checked before anything changes
            self._validate(op)
        out: list[Result] = []
        with self._lock:
            for op in ops:
                if isinstance(op, GetOp):
                    out.append(self._get(op))
                elif isinstance(op, PutOp):
                    self._delete(op.namespace, op.key) if op.value is None else self._put(op)
                    out.append(None)
                elif isinstance(op, SearchOp):
                    out.append(self._search(op))
                else:
                    out.append(self._list_namespaces(op))
        return out

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    # -- the operations -----------------------------------------------------------------
    def _validate(self, op: Op) -> None:
        if isinstance(op, GetOp):
            _check_labels(op.namespace, "get")
            if not isinstance(op.key, str):
                raise StoreInputError(f"get: key must be a string, got {type(op.key).__name__}")
        elif isinstance(op, PutOp):
            ns = _check_labels(op.namespace, "put")
            if not ns:
                raise InvalidNamespaceError("put: the namespace is empty; use e.g. ('memories', user_id)")
            if ns[0] == "langgraph":
                raise InvalidNamespaceError(f"put: a namespace may not start with 'langgraph', got {ns}")
            if not isinstance(op.key, str) or not op.key:
                raise StoreInputError(f"put: key must be a non-empty string, got {op.key!r}")
            if op.ttl is not None:
                raise NotImplementedError("AgentSleepStore does not support TTL; leave ttl out")
            if op.value is not None:
                if not isinstance(op.value, Mapping) or not all(isinstance(k, str) for k in op.value):
                    raise StoreInputError("put: value must be a dict with string keys")
                try:
                    json.dumps(op.value, ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise StoreInputError(f"put: value is not JSON-serialisable ({e})") from None
                text = text_of(op.value, op.index or None)
                if not text.strip():
                    raise StoreInputError("put: value has no text to remember")
                limit = self.home.config.memory.max_text_chars
                if len(text) > limit:  # as remember checks it, here before the batch's earlier ops change anything
                    raise StoreInputError(f"put: the value's text is {len(text):,} characters, over "
                                          f"memory.max_text_chars = {limit:,}")
                from agentsleep.memory.episode import check_namespace

                try:
                    check_namespace(episode_namespace(ns), "put: the encoded namespace")
                except InputError as e:
                    raise StoreInputError(str(e)) from None
        elif isinstance(op, SearchOp):
            _check_labels(op.namespace_prefix, "search")
            if op.filter is not None and not isinstance(op.filter, Mapping):
                raise StoreInputError(f"search: filter must be a dict, got {type(op.filter).__name__}")
            for name in ("limit", "offset"):
                v = getattr(op, name)
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise StoreInputError(f"search: {name} must be a non-negative integer, got {v!r}")
            if op.query is not None and (not isinstance(op.query, str)):
                raise StoreInputError(f"search: query must be a string, got {type(op.query).__name__}")
        elif isinstance(op, ListNamespacesOp):
            for c in op.match_conditions or ():
                _check_labels(tuple(x for x in c.path if x != "*"), "list_namespaces")
        else:
            raise StoreInputError(f"unknown store operation {type(op).__name__}")

    def _row(self, ns: tuple[str, ...], key: str) -> Optional[tuple]:
        return self._db.execute("SELECT value, episode_id, indexed, created_at, updated_at FROM items "
                                "WHERE ns = ? AND key = ?", (_key(ns), key)).fetchone()

    def _alive(self, episode_id: str) -> bool:
        try:
            self.home.get(episode_id)
            return True
        except InputError:  # forgotten by other means: the item goes with it
            return False

    def _get(self, op: GetOp) -> Optional[Item]:
        row = self._row(op.namespace, op.key)
        if row is None:
            return None
        if not self._alive(row[1]):
            self._db.execute("DELETE FROM items WHERE episode_id = ?", (row[1],))
            return None
        return Item(value=json.loads(row[0]), key=op.key, namespace=op.namespace,
                    created_at=_utc(row[3]), updated_at=_utc(row[4]))

    def _put(self, op: PutOp) -> None:
        ns, value = op.namespace, dict(op.value)
        old = self._row(ns, op.key)
        encoded = json.dumps(value, ensure_ascii=False)  # key order kept: get() gives back what was put
        indexed = 0 if op.index is False else 1
        r = self.home.remember(text_of(value, op.index or None), kind=self.kind, source=self.source, trust=self.trust,
                               namespace=episode_namespace(ns),
                               provenance={"via": VIA, "langgraph_namespace": _key(ns), "langgraph_key": op.key})
        if old is not None and old[1] != r.id and not self._shared(old[1], ns, op.key):
            try:
                self._forget(old[1])
            except Exception:
                if not self.home.store.ledger.forgotten_among([old[1]]):
                    if not r.duplicate:  # undo: the new episode was only just added; the item keeps its old value
                        self.home.store.delete(r.id)
                    raise
                # the forget was recorded before its delete failed (the next open finishes it): the item takes
                # its new value rather than point at a forgotten episode
        now = time.time()
        self._db.execute("INSERT INTO items (ns, key, value, episode_id, indexed, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
                         "episode_id = excluded.episode_id, indexed = excluded.indexed, updated_at = excluded.updated_at",
                         (_key(ns), op.key, encoded, r.id, indexed, old[3] if old else now, now))

    def _shared(self, episode_id: str, ns: tuple[str, ...], key: str) -> bool:
        """Does another item hold this episode (equal texts share one)?"""
        return self._db.execute("SELECT 1 FROM items WHERE episode_id = ? AND NOT (ns = ? AND key = ?) LIMIT 1",
                                (episode_id, _key(ns), key)).fetchone() is not None

    def _forget(self, episode_id: str) -> None:
        try:
            self.home.forget(episode_id)
        except InputError as e:
            if "no episode with id" not in str(e):  # already gone: nothing to forget
                raise

    def _delete(self, ns: tuple[str, ...], key: str) -> None:
        row = self._row(ns, key)
        if row is None:
            return
        if not self._shared(row[1], ns, key):
            self._forget(row[1])
        self._db.execute("DELETE FROM items WHERE ns = ? AND key = ?", (_key(ns), key))

    def _rows_under(self, prefix: tuple[str, ...]) -> dict[tuple[str, ...], list[tuple]]:
        """The live items of every namespace under `prefix` (items whose episode is gone are dropped)."""
        by_ns: dict[tuple[str, ...], list[tuple]] = {}
        for ns, key, value, eid, indexed, created, updated in self._db.execute(
                "SELECT ns, key, value, episode_id, indexed, created_at, updated_at FROM items"):
            t = _tuple(ns)
            if t[:len(prefix)] == prefix:
                by_ns.setdefault(t, []).append((key, value, eid, indexed, created, updated))
        for t, rows in list(by_ns.items()):
            live = {e.parent_id or e.id for e in self.home.episodes(namespace=episode_namespace(t))}
            gone = {r[2] for r in rows if r[2] not in live}
            if gone:
                self._db.executemany("DELETE FROM items WHERE episode_id = ?", [(g,) for g in gone])
                by_ns[t] = [r for r in rows if r[2] in live]
        return by_ns

    def _search(self, op: SearchOp) -> list[SearchItem]:
        by_ns = self._rows_under(tuple(op.namespace_prefix))
        found: list[tuple[float, SearchItem]] = []
        query = bool(op.query and op.query.strip())
        for ns, rows in by_ns.items():
            scores: dict[str, float] = {}
            indexed = [r for r in rows if r[3]]
            if query and indexed:
                # k counts episodes, and a long item is stored as several chunks: ask for all of them, or a
                # long item would take the places of the short ones the limit leaves room for
                k = self._episodes_in(ns)
                for e in self.home.recall(op.query, min(max(k, len(indexed)), MAX_RECALL_K), namespace=episode_namespace(ns),
                                          neighbours=0):
                    root = e.parent_id or e.id
                    scores[root] = max(scores.get(root, -1.0), e.score if e.score is not None else 0.0)
            for key, value, eid, is_indexed, created, updated in rows:
                if query and is_indexed and eid not in scores:
                    continue
                v = json.loads(value)
                if op.filter and not matches(v, op.filter):
                    continue
                score = scores.get(eid) if query and is_indexed else None
                item = SearchItem(namespace=ns, key=key, value=v, created_at=_utc(created), updated_at=_utc(updated),
                                  score=score)
                # with a query, scored items first (best first), then the items put with index=False, which
                # a query search still returns (without a score), as LangGraph's own stores do
                order = (1, score, updated) if score is not None else (0, 0.0, updated)
                found.append((order, item))
        found.sort(key=lambda t: t[0], reverse=True)
        return [item for _, item in found[op.offset:op.offset + op.limit]]

    def _episodes_in(self, ns: tuple[str, ...]) -> int:
        """Episodes (chunks counted) of one namespace, from the lexical index (one SQLite count)."""
        return self.home.store.lexical.count(namespace=episode_namespace(ns))

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        spaces = [_tuple(r[0]) for r in self._db.execute("SELECT DISTINCT ns FROM items")]
        spaces = [ns for ns in spaces if all(_ns_matches(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            spaces = list({ns[:op.max_depth] for ns in spaces})
        return sorted(spaces)[op.offset:op.offset + op.limit]
