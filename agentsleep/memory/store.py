"""EpisodeStore: episodes on Chroma (embedded or server), with one writer per embedded store.

Two processes writing one embedded Chroma directory silently corrupt its
vector index, so a writable embedded store holds an exclusive file lock for
its lifetime; a second writer gets a clear error. Readers may be many: they
notice new writes through a generation file and refresh Chroma's cache.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..config import MemoryConfig
from ..errors import AgentsleepError, HomeError, InputError, StoreLockedError, StoreUnavailableError
from .episode import KINDS, Episode, RememberResult, chunk_text, content_hash, new_episode_id, utcnow
from .ledger import Ledger

CHROMA_MAX_BATCH = 5000  # Chroma refuses more than 5,461 records per call
# Chunks are embedded and added this many at a time: bounded memory per call,
# and a failure part-way is rolled back so a retry is not taken for a duplicate.
ADD_BATCH = 256


class EpisodeStore:
    """remember / recall / get / list / delete / count over one Chroma collection."""

    def __init__(self, cfg: MemoryConfig, root: Path, *, writable: bool = True):
        self.cfg = cfg
        self.root = root
        self.writable = writable
        self._lock: FileLock | None = None
        self._client: Any = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.ledger = Ledger(root / "ledger.sqlite")
        except OSError as e:
            raise HomeError(f"memory store {root}: cannot create ({e.strerror}); check permissions or pass another --home") from None
        except Exception as e:  # sqlite3.OperationalError on a read-only dir
            raise HomeError(f"memory store {root}: cannot open the ledger ({e}); is the home read-only?") from None
        if cfg.backend == "embedded" and writable:
            self._acquire_writer()
        self._gen_seen = self._generation()
        self._open()

    # -- connection -----------------------------------------------------
    def _open(self) -> None:
        import chromadb
        from chromadb.config import Settings

        from .embedder import MiniLMEmbedding

        settings = Settings(anonymized_telemetry=False)
        try:
            if self.cfg.backend == "embedded":
                self._client = chromadb.PersistentClient(path=str(self.root / "chroma"), settings=settings)
            else:
                if self.cfg.token:
                    settings = Settings(
                        anonymized_telemetry=False,
                        chroma_client_auth_provider="chromadb.auth.token_authn.TokenAuthClientProvider",
                        chroma_client_auth_credentials=self.cfg.token,
                    )
                self._client = chromadb.HttpClient(host=self.cfg.host, port=self.cfg.port, ssl=self.cfg.ssl, settings=settings)
            self._coll = self._client.get_or_create_collection(
                self.cfg.collection,
                embedding_function=MiniLMEmbedding(self.cfg.embedder),
                metadata={"hnsw:space": "cosine"},
            )
        except AgentsleepError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001
            self.close()
            detail = _one_line(e)
            if self.cfg.backend == "server" and _auth_refused(e):
                raise StoreUnavailableError(
                    f"episode store: Chroma server {self.cfg.host}:{self.cfg.port} refused the credentials; "
                    f"{'check' if self.cfg.token else 'set'} memory.token (or AGENTSLEEP_MEMORY__TOKEN)") from None
            if self.cfg.backend == "server":
                raise StoreUnavailableError(
                    f"episode store: cannot reach Chroma server {self.cfg.host}:{self.cfg.port} ({detail}); "
                    "start it (chroma run --path DIR --host 127.0.0.1 --port N) or fix memory.host/port") from None
            raise StoreUnavailableError(f"episode store: cannot open embedded Chroma at {self.root / 'chroma'} ({detail})") from None

    def _acquire_writer(self) -> None:
        lock = FileLock(str(self.root / "writer.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            owner = self._owner()
            raise StoreLockedError(
                f"episode store {self.root} is open for writing by {owner}; Chroma allows one writer per "
                "embedded store: stop that process, open this one read-only, or set memory.backend = 'server'"
            ) from None
        except OSError as e:
            raise HomeError(f"memory store {self.root}: cannot lock ({e.strerror}); is the home read-only?") from None
        self._lock = lock
        info = {"pid": os.getpid(), "cmd": " ".join(sys.argv)[:120], "since": utcnow().isoformat(timespec="seconds")}
        try:
            (self.root / "writer.json").write_text(json.dumps(info))
        except OSError as e:
            self.close()
            raise HomeError(f"memory store {self.root}: cannot write writer.json ({e.strerror}); is the home read-only?") from None

    def _owner(self) -> str:
        try:
            info = json.loads((self.root / "writer.json").read_text())
            return f"pid {info['pid']} ({info['cmd']}, since {info['since']})"
        except Exception:  # noqa: BLE001
            return "another process"

    def close(self) -> None:
        """Release Chroma (its cached system, when no other store in this process uses it) and the writer lock."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not mask the real error
                pass
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- freshness for readers -----------------------------------------
    # The writer replaces `generation` with a new random token after every
    # change. A token, not the file's mtime: two writes within one clock tick
    # (coarse on Linux) would leave the mtime unchanged and a reader stale.
    def _generation(self) -> str:
        try:
            return (self.root / "generation").read_text()
        except OSError:
            return ""

    def _bump(self) -> None:
        if self.cfg.backend != "embedded":
            return
        g = self.root / "generation"
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        tmp = g.with_name(f".generation.{token}.tmp")  # unique: threads of one writer (batch calls) bump at once
        tmp.write_text(token)
        os.replace(tmp, g)
        self._gen_seen = token

    def _fresh(self) -> None:
        """A reader reloads Chroma's cached index when a writer has written since.

        Closing our client drops Chroma's cached system for this path (unless
        another store in this process still uses it, e.g. the writer, whose
        system is current anyway), so reopening reads the index from disk.
        """
        if self.cfg.backend != "embedded" or self.writable:
            return
        g = self._generation()
        if g != self._gen_seen:
            client, self._client = self._client, None
            if client is not None:
                client.close()
            self._open()
            self._gen_seen = g

    def _require_writer(self) -> None:
        if not self.writable:
            raise InputError("episode store is open read-only; open it writable to change it")

    def _call(self, what: str, fn, *a, **kw):
        if self._client is None:
            raise StoreUnavailableError(f"episode store: {what} on a closed store; open it again")
        try:
            return fn(*a, **kw)
        except AgentsleepError:  # e.g. ModelError from the embedder: already a clear message
            raise
        except Exception as e:  # noqa: BLE001
            if self.cfg.backend == "server":
                raise StoreUnavailableError(
                    f"episode store: {what} failed on Chroma server {self.cfg.host}:{self.cfg.port} ({_one_line(e)})"
                ) from None
            raise

    # -- API ------------------------------------------------------------
    def remember(self, text: str, *, kind: str = "fact", source: str = "user", session: str | None = None,
                 trust: str = "trusted", provenance: dict[str, Any] | None = None,
                 created_at: datetime | None = None) -> RememberResult:
        """Store a memory. Exact duplicates are detected and not stored twice."""
        self._require_writer()
        if not isinstance(text, str):
            raise InputError(f"remember: text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError("remember: text is empty; give the memory some content")
        if len(text) > self.cfg.max_text_chars:
            raise InputError(f"remember: text is {len(text):,} characters, over memory.max_text_chars = {self.cfg.max_text_chars:,}; split it or raise the limit")
        if "\x00" in text:
            raise InputError("remember: text contains NUL bytes; is it binary?")
        if kind not in KINDS:
            raise InputError(f"remember: unknown kind '{kind}'; use one of {', '.join(KINDS)}")
        if trust not in ("trusted", "untrusted"):
            raise InputError(f"remember: trust must be 'trusted' or 'untrusted', got '{trust}'")
        text = text.strip()
        h = content_hash(text)
        self._fresh()
        found = self._call("duplicate check", self._coll.get, where={"content_hash": h}, limit=1, include=["metadatas"])
        if found["ids"]:
            md = found["metadatas"][0]
            root = md.get("parent_id") or found["ids"][0]
            return RememberResult(id=root, chunk_ids=[], duplicate=True, kind=md.get("kind", kind), chars=len(text))
        pieces = chunk_text(text, self.cfg.chunk_chars)
        root = new_episode_id()
        ids = [root] if len(pieces) == 1 else [f"{root}:{i}" for i in range(len(pieces))]
        now = created_at or utcnow()
        if now.tzinfo is None:  # naive = UTC, as in the `since` filter
            now = now.replace(tzinfo=timezone.utc)
        prov = {k: v for k, v in (provenance or {}).items() if isinstance(v, (str, int, float, bool))}
        eps = [Episode(id=i, text=p, kind=kind, source=source, session=session, created_at=now, trust=trust,
                       parent_id=None if len(pieces) == 1 else root, chunk_index=n, chunk_count=len(pieces),
                       content_hash=h, provenance=prov) for n, (i, p) in enumerate(zip(ids, pieces))]
        try:
            step = max(1, min(ADD_BATCH, CHROMA_MAX_BATCH))
            for s in range(0, len(eps), step):
                batch = eps[s:s + step]
                self._call("add", self._coll.add, ids=[e.id for e in batch], documents=[e.text for e in batch],
                           metadatas=[e.to_metadata() for e in batch])
        except BaseException:
            # Without this, a retry would find the first chunks' content_hash
            # and report a duplicate of a memory that was never fully stored.
            try:
                self._coll.delete(ids=ids)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise
        finally:
            self._bump()
        return RememberResult(id=root, chunk_ids=ids, duplicate=False, kind=kind, chars=len(text))

    def recall(self, query: str, k: int | None = None, *, kind: str | None = None, source: str | None = None,
               session: str | None = None, since: datetime | None = None, trust: str | None = None) -> list[Episode]:
        """Top-k episodes by cosine similarity to `query`, optionally filtered."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("recall: query is empty")
        k = self.cfg.recall_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"recall: k must be at least 1, got {k}")
        self._fresh()
        n = self.count()
        if n == 0:
            return []
        where = _where(kind=kind, source=source, session=session, since=since, trust=trust)
        res = self._call("query", self._coll.query, query_texts=[query], n_results=min(k, n), where=where,
                         include=["documents", "metadatas", "distances"])
        out = []
        led = self.ledger.versions_of(res["ids"][0])
        for i, doc, md, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0]):
            ep = Episode.from_record(i, doc, md, score=round(1.0 - float(dist), 4))
            ep.consolidated_in = led.get(i)
            out.append(ep)
        return out

    def get(self, episode_id: str) -> Episode:
        """One episode by id; a chunked memory's id returns its reassembled text."""
        self._fresh()
        res = self._call("get", self._coll.get, ids=[episode_id], include=["documents", "metadatas"])
        if res["ids"]:
            ep = Episode.from_record(res["ids"][0], res["documents"][0], res["metadatas"][0])
        else:
            res = self._call("get", self._coll.get, where={"parent_id": episode_id}, include=["documents", "metadatas"])
            if not res["ids"]:
                raise InputError(f"no episode with id '{episode_id}'")
            parts = sorted(zip(res["metadatas"], res["documents"], res["ids"]), key=lambda t: t[0]["chunk_index"])
            ep = Episode.from_record(episode_id, "", parts[0][0])
            ep.text = "".join(d for _, d, _ in parts)
            ep.parent_id, ep.chunk_index = None, 0
        ep.consolidated_in = self.ledger.versions_of([ep.id]).get(ep.id)
        return ep

    def list(self, *, since: datetime | None = None, kind: str | None = None, session: str | None = None,
             unconsolidated_only: bool = False, limit: int | None = None) -> list[Episode]:
        """Episodes (chunks included) oldest first."""
        self._fresh()
        where = _where(kind=kind, session=session, since=since)
        res = self._call("list", self._coll.get, where=where, include=["documents", "metadatas"])
        led = self.ledger.versions_of()
        forgotten = self.ledger.forgotten()
        eps = []
        for i, doc, md in zip(res["ids"], res["documents"], res["metadatas"]):
            if i in forgotten:
                continue
            ep = Episode.from_record(i, doc, md)
            ep.consolidated_in = led.get(i)
            if unconsolidated_only and ep.consolidated_in:
                continue
            eps.append(ep)
        eps.sort(key=lambda e: (e.created_at, e.id))
        return eps[:limit] if limit else eps

    def delete(self, episode_id: str) -> list[str]:
        """Delete an episode (and its chunks). Returns the ids removed."""
        self._require_writer()
        self._fresh()
        ids = self._call("get", self._coll.get, ids=[episode_id])["ids"]
        ids += self._call("get", self._coll.get, where={"parent_id": episode_id})["ids"]
        if not ids:
            raise InputError(f"no episode with id '{episode_id}'")
        self._call("delete", self._coll.delete, ids=ids)
        self._bump()
        return ids

    def count(self) -> int:
        self._fresh()
        return int(self._call("count", self._coll.count))


def _auth_refused(e: BaseException) -> bool:
    """Chroma's HTTP client raises its own error types for 401/403 (names vary by version)."""
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("autherror", "forbidden", "unauthorized", "authentication", " 401", " 403"))


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _where(*, kind=None, source=None, session=None, since=None, trust=None) -> dict | None:
    conds: list[dict] = []
    if kind:
        if kind not in KINDS:
            raise InputError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}")
        conds.append({"kind": kind})
    if source:
        conds.append({"source": source})
    if session:
        conds.append({"session": session})
    if trust:
        conds.append({"trust": trust})
    if since:
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        conds.append({"created_ts": {"$gte": since.timestamp()}})
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"$and": conds}
