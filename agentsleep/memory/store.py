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
from .episode import (DEFAULT_NAMESPACE, KINDS, Episode, RememberResult, check_namespace, chunk_text, content_hash,
                      new_episode_id, utcnow)
from .ledger import Ledger
from .lexical import SCHEMA_VERSION, TOKENS_VERSION, Filters, LexicalIndex, Row, query_terms, spoken
from .supersede import superseded

CHROMA_MAX_BATCH = 5000  # Chroma refuses more than 5,461 records per call
# Chunks are embedded and added this many at a time: bounded memory per call,
# and a failure part-way is rolled back so a retry is not taken for a duplicate.
ADD_BATCH = 256
DENSE_CTX_KEY = "dense_ctx"  # metadata: how many earlier turns of its session a vector was embedded with
DENSE_CONTEXT_MAX = 4  # the most memory.dense_context_turns allows
DENSE_OVERFETCH = 4  # unfiltered dense hits asked per wanted one, kept when they pass the filters (_dense)


OWNER_KEY = "agentsleep_store"  # the collection metadata naming the home store it belongs to


class EpisodeStore:
    """remember / recall / get / list / delete / count over one Chroma collection and its lexical index.

    Every write goes to both indexes (Chroma first, then the SQLite FTS5 index
    in lexical.sqlite); a failure in either rolls the other back. Opening a
    writable store brings the lexical index in step with Chroma when they
    disagree (an older store, a crash between the two writes), and gives
    records stored before namespaces their "default" namespace.
    """

    def __init__(self, cfg: MemoryConfig, root: Path, *, writable: bool = True, sync: bool = True,
                 claim: bool = True, writer_wait: float = 0.0):
        self.cfg = cfg
        self.root = root
        self.writable = writable
        self._writer_wait = writer_wait  # seconds to wait for another writer to finish (0: refuse at once)
        self._claim = claim and writable  # False: check a server collection's owner, stamp it later (claim())
        self._lock: FileLock | None = None
        self._client: Any = None
        self._vectors_ok = True  # Chroma returns stored vectors (not its Python server: see _cosines)
        self._pool: Any = None    # the lexical query's thread (_side)
        self._pool_pid = 0
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.ledger = Ledger(root / "ledger.sqlite")
            self.lexical = LexicalIndex(root / "lexical.sqlite", ctx_weight=cfg.lexical_context_weight,
                                        ent_weight=cfg.lexical_entity_weight)
        except OSError as e:
            raise HomeError(f"memory store {root}: cannot create ({e.strerror}); check permissions or pass another --home") from None
        except Exception as e:  # sqlite3.OperationalError on a read-only dir
            raise HomeError(f"memory store {root}: cannot open the ledger ({e}); is the home read-only?") from None
        if cfg.backend == "embedded" and writable:
            self._acquire_writer()
        self._gen_seen = self._generation()
        self._open()
        self._reranker: Any = None
        if sync and writable:
            try:
                self.finish_forgets()
                self.sync_lexical()
            except BaseException:
                self.close()
                raise
        # A store never synced (older, opened read-only) holds only "default" episodes and no lexical rows.
        self._legacy = self.lexical.get_meta("schema") != SCHEMA_VERSION

    # -- the lexical index --------------------------------------------------
    def sync_lexical(self, *, force: bool = False) -> dict[str, int]:
        """Make the lexical index hold exactly Chroma's records (and give old records a namespace and an
        event time). Cheap when they already agree: one count on each side."""
        self._require_writer()
        n = int(self._call("count", self._coll.count))
        if (not force and self.lexical.get_meta("schema") == SCHEMA_VERSION and self.lexical.count() == n
                and self.lexical.get_meta("tokens") == TOKENS_VERSION):
            return {"records": n, "backfilled": 0, "indexed": 0}
        raw = self._call("read all", self._coll.get, include=["documents", "metadatas"])
        fix_ids, fix_mds = [], []
        for i, md in zip(raw["ids"], raw["metadatas"]):
            if "namespace" not in md or "event_ts" not in md:
                md = {**md, "namespace": md.get("namespace") or DEFAULT_NAMESPACE,
                      "event_ts": md.get("event_ts", md.get("created_ts", 0.0))}
                fix_ids.append(i)
                fix_mds.append(md)
        for s in range(0, len(fix_ids), CHROMA_MAX_BATCH):
            self._call("backfill", self._coll.update, ids=fix_ids[s:s + CHROMA_MAX_BATCH],
                       metadatas=fix_mds[s:s + CHROMA_MAX_BATCH])
        fixed = dict(zip(fix_ids, fix_mds))
        rows = [_row(i, doc, fixed.get(i, md)) for i, doc, md in zip(raw["ids"], raw["documents"], raw["metadatas"])]
        chunk = {i: int(md.get("chunk_index") or 0) for i, md in zip(raw["ids"], raw["metadatas"])}
        # turn order: by time, a long memory's chunks in their order (ids would put ":10" before ":2")
        rows.sort(key=lambda r: (r.event_ts, r.created_ts, r.id.split(":")[0], chunk[r.id], r.id))
        self.lexical.rebuild(rows)
        self.lexical.set_meta("schema", SCHEMA_VERSION)
        self.lexical.set_meta("tokens", TOKENS_VERSION)
        self._legacy = False
        if fix_ids:
            self._bump()
        return {"records": len(rows), "backfilled": len(fix_ids), "indexed": len(rows)}

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
            if self.cfg.backend == "server":
                self._check_owner(stamp=self._claim)
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

    def _check_owner(self, *, stamp: bool) -> None:
        """A collection on a Chroma server holds one home's episodes. The first writer claims it with the
        store's id (in the collection's metadata); a home whose id differs is refused, instead of reading
        and writing another home's episodes (two homes left on the default name `episodes`)."""
        mine = self.ledger.store_id(create=self.writable)
        owner = (self._coll.metadata or {}).get(OWNER_KEY)
        if owner is not None and owner != mine:
            raise HomeError(f"episode store: collection '{self.cfg.collection}' on Chroma server {self.cfg.host}:"
                            f"{self.cfg.port} holds another home's episodes; give this home a collection of its "
                            "own (memory.collection in its config.toml)")
        if owner is None and stamp:
            meta = {k: v for k, v in (self._coll.metadata or {}).items() if not k.startswith("hnsw:")}  # fixed once made
            self._call("claim", self._coll.modify, metadata={**meta, OWNER_KEY: mine})

    def claim(self) -> None:
        """Stamp this store's id on its server collection (see _check_owner); `migrate` does it once the
        copy is verified, so that a refused migration leaves the target as it was. The owner is read
        again first: another home may have claimed the collection since this store opened it."""
        from .embedder import MiniLMEmbedding

        self._require_writer()
        self._coll = self._call("claim", self._client.get_collection, self.cfg.collection,
                                embedding_function=MiniLMEmbedding(self.cfg.embedder))
        self._check_owner(stamp=True)  # refuses a foreign owner; stamps ours when there is none

    def _acquire_writer(self) -> None:
        lock = FileLock(str(self.root / "writer.lock"), timeout=self._writer_wait)
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
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None
        self.lexical.close()
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
                 created_at: datetime | None = None, namespace: str = DEFAULT_NAMESPACE,
                 event_time: datetime | None = None, speaker: str | None = None) -> RememberResult:
        """Store a memory in `namespace`. Exact duplicates are detected and not stored twice: the same text in
        the same namespace, and for a turn (kind "turn") the same session and speaker too (a "Thanks!" said by
        the other speaker or in another session is another turn of the conversation, not a repeat).

        `event_time` is when it happened (e.g. the date of the conversation); it defaults to now."""
        return self.remember_many([dict(text=text, kind=kind, source=source, session=session, trust=trust,
                                        provenance=provenance, created_at=created_at, namespace=namespace,
                                        event_time=event_time, speaker=speaker)])[0]

    def remember_many(self, items: list[dict[str, Any]]) -> list[RememberResult]:
        """`remember` for many memories at once (each a dict of remember's arguments), in order: one
        embedding batch, one duplicate check and one lexical transaction instead of one per memory.
        Every item is validated before anything is stored; a failure stores none of them."""
        self._require_writer()
        if not isinstance(items, list):
            raise InputError(f"remember_many: expected a list of dicts, got {type(items).__name__}")
        prepared = [self._prepare(it if isinstance(it, dict) else {"text": it}) for it in items]
        if not prepared:
            return []
        self._fresh()
        hashes = list(dict.fromkeys(p["hash"] for p in prepared))
        have: dict[tuple, tuple[str, str]] = {}  # identity (see _identity) -> (stored memory, its kind)
        parts: dict[tuple, list[str]] = {}  # (identity, memory) -> its stored chunks
        need: dict[tuple, tuple[int, str]] = {}  # -> (chunks it was stored in, kind)
        for s in range(0, len(hashes), 500):
            found = self._call("duplicate check", self._coll.get, where={"content_hash": {"$in": hashes[s:s + 500]}},
                               include=["metadatas"])
            for i, md in zip(found["ids"], found["metadatas"]):
                key = (_identity(md.get("content_hash", ""), md.get("namespace") or DEFAULT_NAMESPACE,
                                 md.get("kind", "fact"), md.get("session"), md.get("speaker")), md.get("parent_id") or i)
                parts.setdefault(key, []).append(i)
                need[key] = (int(md.get("chunk_count") or 1), md.get("kind", "fact"))
        gone = self.ledger.forgotten_among([i for ids in parts.values() for i in ids])
        # a long memory a crash left half stored, or one forgotten whose delete was cut short, is no duplicate:
        # it goes, and the memory is stored again below under a new id
        fragments = [i for key, ids in parts.items() if len(ids) < need[key][0] or set(ids) & gone for i in ids]
        if fragments:
            self.delete_ids(fragments)
        dropped = set(fragments)
        for (ident, root), ids in parts.items():
            if ids[0] not in dropped:  # a memory's chunks go together
                have.setdefault(ident, (root, need[(ident, root)][1]))
        results: list[RememberResult] = []
        eps: list[Episode] = []
        from .embedder import MiniLMEmbedding

        fits = MiniLMEmbedding(self.cfg.embedder).fits  # a chunk the embedder would cut short is split again
        for p in prepared:
            key = _identity(p["hash"], p["namespace"], p["kind"], p["session"], p["speaker"])
            if key in have:
                root, kind = have[key]
                results.append(RememberResult(id=root, chunk_ids=[], duplicate=True, kind=kind, chars=len(p["text"])))
                continue
            pieces = chunk_text(p["text"], self.cfg.chunk_chars, lambda c, sp=p["speaker"]: fits(spoken(c, sp)))
            root = new_episode_id()
            ids = [root] if len(pieces) == 1 else [f"{root}:{i}" for i in range(len(pieces))]
            eps += [Episode(id=i, text=piece, kind=p["kind"], source=p["source"], session=p["session"],
                            created_at=p["created_at"], trust=p["trust"], parent_id=None if len(pieces) == 1 else root,
                            chunk_index=n, chunk_count=len(pieces), content_hash=p["hash"], provenance=p["provenance"],
                            namespace=p["namespace"], event_time=p["event_time"], speaker=p["speaker"])
                    for n, (i, piece) in enumerate(zip(ids, pieces))]
            have[key] = (root, p["kind"])
            results.append(RememberResult(id=root, chunk_ids=ids, duplicate=False, kind=p["kind"], chars=len(p["text"])))
        if not eps:
            return results
        all_ids = [e.id for e in eps]
        try:
            vecs, ctx = self._embed_documents(eps, with_context_counts=True)
            if any(ctx) and self.lexical.get_meta(DENSE_CTX_KEY) != "1":
                self.lexical.set_meta(DENSE_CTX_KEY, "1")  # deletes from now on look for turns to embed again
            step = max(1, min(ADD_BATCH, CHROMA_MAX_BATCH))
            for s in range(0, len(eps), step):
                batch = eps[s:s + step]
                mds = [{**e.to_metadata(), **({DENSE_CTX_KEY: n} if n else {})} for e, n in zip(batch, ctx[s:s + step])]
                self._call("add", self._coll.add, ids=[e.id for e in batch], documents=[e.text for e in batch],
                           metadatas=mds, embeddings=vecs[s:s + step])
            self.lexical.add([_row(e.id, e.text, e.to_metadata()) for e in eps])
        except BaseException:
            # Without this, a retry would find the first chunks' content_hash
            # and report a duplicate of a memory that was never fully stored.
            try:
                self._coll.delete(ids=all_ids)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            try:
                self.lexical.delete(all_ids)
            except Exception:  # noqa: BLE001
                pass
            raise
        finally:
            self._bump()
        return results

    def _prepare(self, it: dict[str, Any]) -> dict[str, Any]:
        """One remember call's arguments, checked and normalised (one-line InputErrors)."""
        unknown = set(it) - {"text", "kind", "source", "session", "trust", "provenance", "created_at", "namespace",
                             "event_time", "speaker"}
        if unknown:
            raise InputError(f"remember: unknown argument(s) {', '.join(sorted(unknown))}")
        text, kind, trust = it.get("text"), it.get("kind"), it.get("trust")
        kind = "fact" if kind is None else kind  # only a missing value takes the default: "" is a mistake
        trust = "trusted" if trust is None else trust
        namespace = it.get("namespace", DEFAULT_NAMESPACE)
        event_time, speaker = it.get("event_time"), it.get("speaker")
        if not isinstance(text, str):
            raise InputError(f"remember: text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError("remember: text is empty; give the memory some content")
        if len(text) > self.cfg.max_text_chars:
            raise InputError(f"remember: text is {len(text):,} characters, over memory.max_text_chars = {self.cfg.max_text_chars:,}; split it or raise the limit")
        if "\x00" in text:
            raise InputError("remember: text contains NUL bytes; is it binary?")
        for name in ("text", "source", "session", "speaker", "namespace"):
            _encodable(it.get(name), f"remember: {name}")
        if kind not in KINDS:
            raise InputError(f"remember: unknown kind '{kind}'; use one of {', '.join(KINDS)}")
        if trust not in ("trusted", "untrusted"):
            raise InputError(f"remember: trust must be 'trusted' or 'untrusted', got '{trust}'")
        check_namespace(namespace, "remember: namespace")
        if event_time is not None and not isinstance(event_time, datetime):
            raise InputError(f"remember: event_time must be a datetime, got {type(event_time).__name__}")
        if speaker is not None and (not isinstance(speaker, str) or not speaker.strip() or len(speaker) > 200):
            raise InputError("remember: speaker must be a non-empty string of at most 200 characters")
        for name in ("session", "source"):
            if it.get(name) is not None and not isinstance(it.get(name), str):
                raise InputError(f"remember: {name} must be a string, got {type(it.get(name)).__name__}")
        if it.get("provenance") is not None and not isinstance(it.get("provenance"), dict):
            raise InputError(f"remember: provenance must be a dict, got {type(it.get('provenance')).__name__}")
        text = text.strip()
        now = _utc(it.get("created_at") or utcnow())
        prov = {k: v for k, v in (it.get("provenance") or {}).items() if isinstance(v, (str, int, float, bool))}
        return {"text": text, "hash": content_hash(text), "kind": kind, "source": it.get("source") or "user",
                "session": it.get("session"), "trust": trust, "provenance": prov, "created_at": now,
                "namespace": namespace, "event_time": _utc(event_time or now),
                "speaker": speaker.strip() if speaker else None}

    def _embed_documents(self, eps: list[Episode], context: bool = True, *, with_context_counts: bool = False):
        """Dense vectors of what a turn means in its place: the speaker's name before the words (questions
        name people), and with memory.dense_context_turns the turns before it in its session (new turns only:
        `context=False` embeds a stored one alone). With `with_context_counts`, (vectors, how many earlier
        turns each vector holds): a forget must embed again the turns that hold the forgotten one."""
        n_ctx = self.cfg.dense_context_turns if context else 0
        texts, counts, recent = [], [], {}
        for e in eps:
            body = spoken(e.text, e.speaker)
            ctx: list[str] = []
            if n_ctx and e.session is not None:
                key = (e.namespace, e.session)
                if key not in recent:
                    recent[key] = self.lexical.last_in_session(e.namespace, e.session, n_ctx)
                ctx = recent[key][-n_ctx:]
                recent[key] = (recent[key] + [body])[-n_ctx:]
            texts.append("\n".join(ctx + [body]))
            counts.append(len(ctx))
        vecs = self._embed_texts(texts)
        return (vecs, counts) if with_context_counts else vecs

    def _embed_texts(self, texts: list[str]) -> list[list[float]]:
        from .embedder import MiniLMEmbedding

        return [[float(x) for x in v] for v in MiniLMEmbedding(self.cfg.embedder)(texts)] if texts else []

    def _embed_again_without(self, later: list[str]) -> None:
        """Embed again the turns whose vectors were made with earlier turns of their session as context
        (memory.dense_context_turns), from the turns now before them: after a forget, a later turn's
        vector must not carry the forgotten words (found by meaning through its neighbour)."""
        if not later:
            return
        got = self._call("get", self._coll.get, ids=later, include=["documents", "metadatas"])
        todo = [(i, doc, md) for i, doc, md in zip(got["ids"], got["documents"], got["metadatas"])
                if md and int(md.get(DENSE_CTX_KEY, 0) or 0) > 0]
        if not todo:
            return
        texts, mds = [], []
        for i, doc, md in todo:
            ctx = self.lexical.before_in_session(i, int(md[DENSE_CTX_KEY]))
            texts.append("\n".join(ctx + [spoken(doc or "", md.get("speaker"))]))
            mds.append({**md, DENSE_CTX_KEY: len(ctx)})  # Chroma merges metadata on update: 0, not dropped
        self._call("update", self._coll.update, ids=[t[0] for t in todo], embeddings=self._embed_texts(texts),
                   metadatas=mds)

    def recall(self, query: str, k: int | None = None, *, namespace: str = DEFAULT_NAMESPACE, kind: str | None = None,
               source: str | None = None, session: str | None = None, since: datetime | None = None,
               until: datetime | None = None, trust: str | None = None, speaker: str | None = None,
               neighbours: int | None = None, rerank: bool | None = None, now: datetime | None = None,
               hybrid: bool | None = None) -> list[Episode]:
        """Top-k episodes of one namespace for `query`: dense (MiniLM cosine) and lexical (BM25) rankings fused
        by reciprocal rank, with boosts for a speaker or name the query mentions and for event times inside a
        time the query names ("last week", "in May 2023"; relative to `now`). Filters are hard: recall never
        returns an episode of another namespace or outside since <= event time < until.

        `score` is the cosine similarity to the query (the order is the fused one). `neighbours` turns either
        side of each hit in its session come along in `Episode.context` (default memory.neighbours)."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("recall: query is empty")
        _encodable(query, "recall: query")
        k = self.cfg.recall_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RECALL_K:
            raise InputError(f"recall: k must be 1..{MAX_RECALL_K}, got {k}")
        check_namespace(namespace, "recall: namespace")
        window = self.cfg.neighbours if neighbours is None else neighbours
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 20:
            raise InputError(f"recall: neighbours must be 0..20, got {window}")
        since, until = _utc(since) if since else None, _utc(until) if until else None
        if since and until and since >= until:
            raise InputError("recall: since must be earlier than until")
        self._fresh()
        if self._legacy and namespace != DEFAULT_NAMESPACE:
            return []  # an older store not yet synced holds only the default namespace
        filt = Filters(namespace=None if self._legacy else namespace, kind=kind, source=source, session=session,
                       trust=trust, speaker=speaker, since_ts=since.timestamp() if since else None,
                       until_ts=until.timestamp() if until else None)
        if kind and kind not in KINDS:
            raise InputError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}")
        where = _where_filters(filt)
        use_lex = (self.cfg.hybrid if hybrid is None else hybrid) and not self._legacy
        rr = self.cfg.rerank != "off" if rerank is None else rerank
        pool = max(k, self.cfg.candidates, self.cfg.rerank_candidates if rr else 0)
        lex_meta: dict[str, dict] = {}

        def lexical(skip: set[str]) -> list[tuple[str, float]]:
            lex_meta.clear()
            return self.lexical.search(query, pool, filt, ctx_weight=self.cfg.lexical_context_weight,
                                       ent_weight=self.cfg.lexical_entity_weight, skip=skip, meta=lex_meta,
                                       common_share=self.cfg.lexical_common_share)

        # the BM25 query runs beside the query embedding and the dense search (SQLite and ONNX release the GIL)
        pending = self._side().submit(lexical, set()) if use_lex else None
        qvec = self._embed_query(query)
        # meta: id -> the fields fusion reads (speaker, times) for candidates known to pass the filters
        dense, cos, meta = self._dense(qvec, pool, where, filt)
        lex_hits = pending.result() if pending else []
        if use_lex and self.cfg.lexical_skip_speakers:
            # a speaker's name in the query says who said it; in a turn's words it mostly marks the other
            # speaker addressing them, so as a BM25 term it finds the wrong side of the conversation: asked
            # again without the dense hits' speakers when the query names one
            skip = {str(meta[i]["speaker"]).lower() for i in dense if meta[i].get("speaker")}
            if skip & set(query_terms(query)):
                lex_hits = lexical(skip)
        meta.update(lex_meta)
        lex = [i for i, _ in lex_hits]
        lists = [(self.cfg.dense_weight, dense), (self.cfg.lexical_weight, lex)]
        own_scores = [cos, dict(lex_hits)]  # what fusion = "max" reads; the rankings added below have none
        words = " ".join(query_terms(query, pairs=False))  # embedded as words, never as character pairs
        if self.cfg.keyword_dense_weight and words and words != query.strip().lower():
            # the query's content words alone, embedded: a question's form ("what did ... do") pulls its
            # vector toward other questions; its words alone sit nearer the statements that answer it
            lists.append((self.cfg.keyword_dense_weight, self._dense(self._embed_query(words), pool, where, filt, meta)[0]))
        if self.cfg.context_dense_weight and not self._legacy:
            lists.append((self.cfg.context_dense_weight, self._context_ranking(qvec, [i for _, r in lists for i in r])))
        order = self._fuse(query, lists, meta, now=now, scores=own_scores)
        if self.cfg.feedback_weight and order:
            lists.append((self.cfg.feedback_weight, self._feedback_ranking(qvec, order[:self.cfg.feedback_docs],
                                                                           pool, where, filt, meta)))
            order = self._fuse(query, lists, meta, now=now, scores=own_scores)
        order = [i for i in order if i in meta]
        m = max(k, self.cfg.rerank_candidates) if rr else k
        recs = self._records(order, m, filt, qvec, cos)
        order = [i for i in order if i in recs]
        gone = self.ledger.forgotten_among(order[:max(m, k)])  # a forget cut short: recorded, not yet deleted
        order = [i for i in order if i not in gone]
        if rr and order:
            order = self._rerank(query, order[:m], recs) + order[m:]
        order = order[:k]
        led = self.ledger.versions_of(order)
        sup = superseded(self.ledger.path, order)
        out = []
        for i in order:
            ep = Episode.from_record(i, recs[i][0], recs[i][1], score=cos.get(i))
            ep.consolidated_in = led.get(i)
            ep.superseded_by = sup.get(i)
            out.append(ep)
        if window and out:
            self._attach_neighbours(out, window, Filters(trust=trust, kind=kind, source=source))
        return out

    def _dense(self, qvec: list[float], n: int, where: dict | None, filt: Filters,
               meta: dict[str, dict] | None = None) -> tuple[list[str], dict[str, float], dict[str, dict]]:
        """The `n` nearest episodes that pass the filters: (ids best first, id -> cosine, id -> fusion
        metadata; `meta` is filled in place when given).

        Chroma's filtered search scans every episode its filter matches (measured at 30k episodes in one
        namespace: ~100 ms; unfiltered HNSW: ~5 ms), and returning metadata costs more than the search. So
        ask unfiltered, for ids and distances only, DENSE_OVERFETCH times as many, and keep those the
        lexical index (in step with Chroma, holding the same filter fields) says pass; when fewer than `n`
        do and the collection holds more, run the filtered search (a small namespace among large ones: a
        short scan). A store whose lexical index is not yet synced reads Chroma's metadata instead."""
        meta = {} if meta is None else meta
        if self._legacy:
            res = self._call("query", self._coll.query, query_embeddings=[qvec], n_results=n, where=where,
                             include=["metadatas", "distances"])
            ids = res["ids"][0]
            meta.update((i, md) for i, md in zip(ids, res["metadatas"][0]))
            return ids, {i: round(1.0 - float(d), 4) for i, d in zip(ids, res["distances"][0])}, meta
        m = n * DENSE_OVERFETCH
        res = self._call("query", self._coll.query, query_embeddings=[qvec], n_results=m, include=["distances"])
        ids, dist = res["ids"][0], res["distances"][0]
        ok = self._passing(ids, filt)
        keep = [(i, d) for i, d in zip(ids, dist) if i in ok]
        if len(keep) < n and len(ids) >= m:
            res = self._call("query", self._coll.query, query_embeddings=[qvec], n_results=n, where=where,
                             include=["distances"])
            ok = self._passing(res["ids"][0], filt)
            keep = [(i, d) for i, d in zip(res["ids"][0], res["distances"][0]) if i in ok]
        keep = keep[:n]
        meta.update((i, ok[i]) for i, _ in keep)
        return [i for i, _ in keep], {i: round(1.0 - float(d), 4) for i, d in keep}, meta

    def _side(self):
        """A one-thread pool for the lexical query that runs beside the dense one (made on first use)."""
        if self._pool is None or self._pool_pid != os.getpid():  # a forked child has no thread behind a parent's pool
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentsleep-lexical")
            self._pool_pid = os.getpid()
        return self._pool

    def _passing(self, ids: list[str], filt: Filters) -> dict[str, dict]:
        """id -> fusion metadata for those of `ids` that pass the filters, read from the lexical index; ids
        it does not hold (another home writing to the same Chroma server collection) from Chroma."""
        ok, known = self.lexical.meta(ids, filt)
        unknown = [i for i in ids if i not in known]
        if unknown:
            got = self._call("get", self._coll.get, ids=unknown, include=["metadatas"])
            ok.update((i, md) for i, md in zip(got["ids"], got["metadatas"]) if _matches(md, filt))
        return ok

    def _records(self, order: list[str], m: int, filt: Filters, qvec: list[float],
                 cos: dict[str, float]) -> dict[str, tuple[str, dict]]:
        """id -> (document, Chroma metadata) for the first `m` of `order` that Chroma holds and whose metadata
        passes the filters (Chroma has the last word over the lexical rows), fetched `m` at a time; the
        cosine of those only the lexical ranking found comes from their stored vectors."""
        recs: dict[str, tuple[str, dict]] = {}
        start = 0
        while len(recs) < m and start < len(order):
            part = order[start:start + m]
            start += m
            need = [i for i in part if i not in cos]
            got = self._call("get", self._coll.get, ids=part, include=["documents", "metadatas"])
            for i, doc, md in zip(got["ids"], got["documents"], got["metadatas"]):
                if _matches(md, filt):
                    recs[i] = (doc, md)
            cos.update(self._cosines(qvec, [i for i in need if i in recs]))
        return recs

    def _cosines(self, qvec: list[float], ids: list[str]) -> dict[str, float]:
        """The query's cosine to these stored episodes: from their stored vectors, or, where Chroma's Python
        server cannot return vectors, from a query over these ids (slower: it scans)."""
        if not ids:
            return {}

        def by_query() -> dict[str, float]:
            got = self._call("query", self._coll.query, query_embeddings=[qvec], ids=ids, n_results=len(ids),
                             include=["distances"])
            return {i: round(1.0 - float(d), 4) for i, d in zip(got["ids"][0], got["distances"][0])}

        return self._with_vectors(ids, lambda vecs: {i: round(float(sum(a * b for a, b in zip(qvec, e))), 4)
                                                     for i, e in vecs.items()}, by_query)

    def _vectors(self, ids: list[str]) -> dict[str, list[float]]:
        """These episodes' stored vectors; where Chroma's Python server cannot return them, the episodes' texts
        embedded again (the same vectors unless memory.dense_context_turns embedded a turn with the turns
        before it)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}

        def embedded_again() -> dict[str, list[float]]:
            got = self._call("get", self._coll.get, ids=ids, include=["documents", "metadatas"])
            eps = [Episode.from_record(i, doc, md) for i, doc, md in zip(got["ids"], got["documents"], got["metadatas"])]
            return dict(zip(got["ids"], self._embed_documents(eps, context=False)))

        return self._with_vectors(ids, lambda vecs: vecs, embedded_again)

    def _with_vectors(self, ids: list[str], use, fallback):
        """`use` the stored vectors of these episodes (by id), or, where the Chroma server fails to return them
        (its Python server fails serialising them), the `fallback`'s answer. The server is marked as one
        that cannot only when the fallback then works: an outage does not turn the vector path off."""
        failed = False
        if self._vectors_ok:
            try:
                got = self._call("get", self._coll.get, ids=ids, include=["embeddings"])
                return use({i: [float(x) for x in e] for i, e in zip(got["ids"], got["embeddings"])})
            except StoreUnavailableError:
                if self.cfg.backend != "server":
                    raise
                failed = True
        out = fallback()
        if failed:  # the server answers, so it was the vectors it could not return: stop asking
            self._vectors_ok = False
        return out

    def _feedback_ranking(self, qvec: list[float], top: list[str], pool: int, where: dict | None, filt: Filters,
                          meta: dict[str, dict]) -> list[str]:
        """Pseudo-relevance feedback (Rocchio): the query's vector moved toward the mean of the first fused hits'
        stored vectors, searched again; finds turns that share the hits' topic but not the question's words
        (one Chroma get and one Chroma query per recall, no new embedding)."""
        import numpy as np

        vecs = list(self._vectors(top).values())
        if not vecs:
            return []
        q = np.asarray(qvec, dtype=np.float32)
        v = q + self.cfg.feedback_mix * np.mean(np.asarray(vecs, dtype=np.float32), axis=0)
        v /= float(np.linalg.norm(v)) or 1.0
        return self._dense(v.tolist(), pool, where, filt, meta)[0]

    def _context_ranking(self, qvec: list[float], cands: list[str]) -> list[str]:
        """The candidates ranked by the query's cosine to each one's view in its place: its stored vector plus
        `context_view_mix` times those of the turns just before and after it in its session (stored vectors,
        no new embedding: one SQLite query and one Chroma get per recall)."""
        import numpy as np

        cands = list(dict.fromkeys(cands))
        if not cands:
            return []
        adj = self.lexical.adjacent(cands)
        need = list(dict.fromkeys(cands + [j for pair in adj.values() for j in pair if j]))
        vec = {i: np.asarray(e, dtype=np.float32) for i, e in self._vectors(need).items()}
        q = np.asarray(qvec, dtype=np.float32)
        mix = self.cfg.context_view_mix
        score = {}
        for i in cands:
            if i not in vec:
                continue
            v = vec[i].copy()
            for j in adj.get(i, (None, None)):
                if j in vec:
                    v += mix * vec[j]
            score[i] = float(q @ v) / (float(np.linalg.norm(v)) or 1.0)
        return sorted(score, key=lambda i: -score[i])

    def _embed_query(self, query: str) -> list[float]:
        from .embedder import MiniLMEmbedding

        return [float(x) for x in MiniLMEmbedding(self.cfg.embedder)([query])[0]]

    def _fuse(self, query: str, lists: list[tuple[float, list[str]]], meta: dict[str, dict],
              now: datetime | None, scores: list[dict[str, float]] | None = None) -> list[str]:
        """Fusion of (weight, ranking) lists (memory.fusion: reciprocal rank, or `max_fusion` on the rankings'
        own `scores`), then multiplicative boosts (speaker / name mentioned, time named), then lifts from a
        hit's neighbours and from its session's other hits."""
        c = self.cfg
        score: dict[str, float] = {}
        if c.fusion == "max":
            score = max_fusion(lists, scores or [], c.fusion_both_bonus)
        else:
            for w, ranking in lists:
                for r, i in enumerate(ranking, 1):
                    score[i] = score.get(i, 0.0) + w / (c.rrf_k + r)
        if not score:
            return []
        words = set(query_terms(query))
        from .timeparse import time_window

        win = time_window(query, now) if c.time_boost else None
        lo, hi = (win[0].timestamp(), win[1].timestamp()) if win else (None, None)
        for i in score:
            if i not in meta:
                continue
            md = meta[i]
            boost = 1.0
            sp = md.get("speaker")
            if c.speaker_boost and sp and sp.lower() in words:
                boost += c.speaker_boost
            if win and lo <= float(md.get("event_ts", md.get("created_ts", 0.0))) < hi:
                boost += c.time_boost
            score[i] *= boost
        if c.neighbour_weight and not self._legacy:
            # a turn next to a strong hit is likely part of the same exchange (the question and its answer)
            adj = self.lexical.adjacent(list(score))
            base = dict(score)
            for i, (before, after) in adj.items():
                if i in score:
                    score[i] += c.neighbour_weight * max(base.get(before, 0.0), base.get(after, 0.0))
        if c.session_weight and not self._legacy:
            # a session where several candidates score is about the query: its hits lift one another
            # (the best `session_top` other candidates of the same session add this share of their scores)
            of = self.lexical.session_of(list(score))
            base = dict(score)
            members: dict[tuple[str, str], list[float]] = {}
            for i, key in of.items():
                members.setdefault(key, []).append(base[i])
            for key in members:
                members[key].sort(reverse=True)
            for i, key in of.items():
                others = list(members[key])
                others.remove(base[i])
                score[i] += c.session_weight * sum(others[:c.session_top])
        return sorted(score, key=lambda i: -score[i])

    def _rerank(self, query: str, ids: list[str], recs: dict[str, tuple[str, dict]]) -> list[str]:
        from .rerank import make_reranker

        if self._reranker is None:
            self._reranker = make_reranker(self.cfg)
        docs = [Episode.from_record(i, recs[i][0], recs[i][1]).prompt_text() for i in ids]
        scores = self._reranker.score(query, docs)
        return [i for _, i in sorted(zip(scores, ids), key=lambda t: -t[0])]

    def _attach_neighbours(self, hits: list[Episode], window: int, filt: Filters | None = None) -> None:
        """Each hit's session neighbours as its `context`, those that pass the recall's trust, kind and source
        filters (an untrusted turn must not ride in beside a trusted hit when recall asked for trusted ones)."""
        near = self.lexical.neighbours([h.id for h in hits], window)
        want = list(dict.fromkeys(j for js in near.values() for j in js))
        gone = self.ledger.forgotten_among(want) if want else set()
        want = [j for j in want if j not in gone]
        if not want:
            return
        got = self._call("get", self._coll.get, ids=want, include=["documents", "metadatas"])
        byid = {i: Episode.from_record(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}
        mds = dict(zip(got["ids"], got["metadatas"]))
        ok = {j for j in byid if filt is None or _matches(mds[j] or {}, filt)}
        for h in hits:
            h.context = [byid[j] for j in near.get(h.id, []) if j in ok and byid[j].namespace == h.namespace]

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
        if self.ledger.forgotten_among([episode_id] + list(res["ids"])):
            raise InputError(f"no episode with id '{episode_id}' (it was forgotten)")
        ep.consolidated_in = self.ledger.versions_of([ep.id]).get(ep.id)
        ep.superseded_by = superseded(self.ledger.path, [ep.id]).get(ep.id)
        return ep

    def list(self, *, since: datetime | None = None, kind: str | None = None, session: str | None = None,
             unconsolidated_only: bool = False, limit: int | None = None,
             namespace: str | None = None) -> list[Episode]:
        """Episodes (chunks included) oldest first; of one namespace, or of all when `namespace` is None
        (the sleep consolidates every namespace: one model per home)."""
        self._fresh()
        if namespace is not None:
            check_namespace(namespace, "list: namespace")
            if self._legacy and namespace != DEFAULT_NAMESPACE:
                return []
        where = _where(kind=kind, session=session, since=since,
                       namespace=None if self._legacy else namespace)
        res = self._call("list", self._coll.get, where=where, include=["documents", "metadatas"])
        led = self.ledger.versions_of()
        forgotten = self.ledger.forgotten()
        sup = superseded(self.ledger.path)
        eps = []
        for i, doc, md in zip(res["ids"], res["documents"], res["metadatas"]):
            if i in forgotten:
                continue
            ep = Episode.from_record(i, doc, md)
            ep.consolidated_in = led.get(i)
            ep.superseded_by = sup.get(i)
            if unconsolidated_only and ep.consolidated_in:
                continue
            eps.append(ep)
        eps.sort(key=lambda e: (e.created_at, e.id))
        return eps[:limit] if limit else eps

    def similar(self, episode_id: str, k: int, *, namespace: str) -> list[tuple[Episode, float]]:
        """The `k` episodes of `namespace` nearest to a stored one (its own stored vector, cosine), itself
        excluded: the candidates an updated fact may supersede (memory/supersede.py)."""
        self._fresh()
        vec = self._vectors([episode_id]).get(episode_id)
        if vec is None:
            raise InputError(f"no episode with id '{episode_id}'")
        res = self._call("query", self._coll.query, query_embeddings=[vec],
                         n_results=min(k + 1, max(self.count(), 1)), where={"namespace": namespace},
                         include=["documents", "metadatas", "distances"])
        ids = [i for i in res["ids"][0] if i != episode_id]
        led = self.ledger.versions_of(ids)
        out = []
        for i, doc, md, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0]):
            if i == episode_id:
                continue
            ep = Episode.from_record(i, doc, md)
            ep.consolidated_in = led.get(i)
            out.append((ep, round(1.0 - float(dist), 4)))
        return out[:k]

    def family(self, episode_id: str) -> list[str]:
        """The ids stored for one memory: the episode, or every chunk of a long one (a chunk's id names
        its whole memory: forgetting part of a text forgets the text)."""
        self._fresh()
        got = self._call("get", self._coll.get, ids=[episode_id], include=["metadatas"])
        md = (got["metadatas"][0] or {}) if got["ids"] else {}
        root = md.get("parent_id") or episode_id
        ids = [episode_id] if got["ids"] and root == episode_id else []
        ids += self._call("get", self._coll.get, where={"parent_id": root})["ids"]
        if not ids:
            raise InputError(f"no episode with id '{episode_id}'")
        return list(dict.fromkeys(ids))

    def delete(self, episode_id: str) -> list[str]:
        """Delete a memory (an episode and its chunks). Returns the ids removed."""
        self._require_writer()
        ids = self.family(episode_id)
        self.delete_ids(ids)
        return ids

    def delete_ids(self, ids: list[str]) -> None:
        """Delete these records from both indexes (ids not stored are ignored), and embed again the later
        turns of their sessions whose vectors were made with them as context."""
        self._require_writer()
        # only a store where some vector was embedded with its session's earlier turns pays for this
        used = self.cfg.dense_context_turns > 0 or self.lexical.get_meta(DENSE_CTX_KEY) == "1"
        later = self.lexical.following(ids, DENSE_CONTEXT_MAX) if used else []
        try:
            for s in range(0, len(ids), CHROMA_MAX_BATCH):
                self._call("delete", self._coll.delete, ids=ids[s:s + CHROMA_MAX_BATCH])
        finally:  # whatever Chroma did, the words must not outlive the episode
            self.lexical.delete(ids)
            self._bump()
        for s in range(0, len(later), CHROMA_MAX_BATCH):
            self._embed_again_without(later[s:s + CHROMA_MAX_BATCH])

    def finish_forgets(self) -> list[str]:
        """Delete what the ledger says was forgotten and a store may still hold: `Home.forget` records the
        forgetting before it deletes, so a crash or a store error in between is finished here, on the next
        writable open (only forgets not yet confirmed are looked at; `Home` confirms them once it has also
        planned the rebuild). Returns the ids deleted."""
        self._require_writer()
        pending = self.ledger.pending_forgets()
        if not pending:
            return []
        held: set[str] = set()
        for s in range(0, len(pending), CHROMA_MAX_BATCH):
            held |= set(self._call("get", self._coll.get, ids=pending[s:s + CHROMA_MAX_BATCH], include=[])["ids"])
        held |= set(self.lexical.present(pending))
        left = [i for i in pending if i in held]
        if left:
            self.delete_ids(left)
        return left

    def drop_server_collection(self) -> str | None:
        """Purge: delete this store's collection on a Chroma server (an embedded store lives in the home's
        folder and goes with it). Every home configured with the same server and collection shares its
        episodes, so they all lose them. Returns what was deleted."""
        if self.cfg.backend != "server":
            return None
        self._require_writer()
        self._call("purge", self._client.delete_collection, self.cfg.collection)
        return f"{self.cfg.host}:{self.cfg.port}/{self.cfg.collection}"

    def count(self) -> int:
        """Stored rows: a long memory counts once per chunk (see `tally` for memories)."""
        self._fresh()
        return int(self._call("count", self._coll.count))

    def tally(self) -> dict[str, int]:
        """What a person counts: memories (a long one chunked is one), those still waiting for a sleep (any
        chunk not consolidated), and the stored chunks. Forgotten ones count nowhere. Reads every row's
        metadata: for status, not for a hot path."""
        eps = self.list()
        return {"memories": len({e.parent_id or e.id for e in eps}),
                "unconsolidated": len({e.parent_id or e.id for e in eps if not e.consolidated_in}),
                "chunks": len(eps)}


def _identity(content_hash: str, namespace: str, kind: str, session: str | None, speaker: str | None) -> tuple:
    """What makes two memories the same one: their text and namespace; for a turn of a conversation, also its
    session and speaker (a "Thanks!" said again by the other speaker, or in another session, is another turn,
    while a fact told in two sessions is one fact)."""
    if kind == "turn":
        return (content_hash, namespace, "turn", session or None, speaker or None)
    return (content_hash, namespace)


def _encodable(value: Any, what: str) -> None:
    """Refuse text holding bytes that were not UTF-8 (a shell passes them on as lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{what} holds bytes that are not UTF-8 text; check the terminal's or file's encoding") from None


MAX_RECALL_K = 100_000  # more is no recall but a listing (`list` / `agentsleep export`)


def _auth_refused(e: BaseException) -> bool:
    """Chroma's HTTP client raises its own error types for 401/403 (names vary by version)."""
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("autherror", "forbidden", "unauthorized", "authentication", " 401", " 403"))


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _utc(t: datetime) -> datetime:
    """`t` in UTC; a naive `t` is local time, as Python reads naive times (and as recall's time words do)."""
    if not isinstance(t, datetime):
        raise InputError(f"expected a datetime, got {type(t).__name__}")
    try:
        u = t.astimezone(timezone.utc)
        u.timestamp()  # what the indexes store
    except (OverflowError, ValueError, OSError):
        raise InputError(f"time {t.isoformat()} is out of the range that can be stored (years 2 to 9998)") from None
    return u


def _row(i: str, doc: str, md: dict[str, Any]) -> Row:
    created = float(md.get("created_ts", 0.0))
    return Row(id=i, namespace=md.get("namespace") or DEFAULT_NAMESPACE, kind=md.get("kind", "fact"),
               source=md.get("source", "user"), session=md.get("session"), trust=md.get("trust", "trusted"),
               created_ts=created, event_ts=float(md.get("event_ts", created)), speaker=md.get("speaker"), text=doc or "")


def max_fusion(lists: list[tuple[float, list[str]]], scores: list[dict[str, float]], bonus: float) -> dict[str, float]:
    """Score-aware fusion: each ranking's own scores (cosine, BM25; by rank for a ranking without scores)
    min-max scaled to 0..1 over its candidates and weighted; a candidate takes its best scaled score plus
    `bonus` times its second best. Unlike reciprocal rank, a clear BM25 winner stays ahead of a dense
    runner-up, whose cosines are all close together."""
    per: dict[str, list[float]] = {}
    for j, (w, ranking) in enumerate(lists):
        if not ranking:
            continue
        own = scores[j] if j < len(scores) else {}
        if own and all(i in own for i in ranking):
            lo, hi = min(own[i] for i in ranking), max(own[i] for i in ranking)
            scaled = {i: (own[i] - lo) / (hi - lo) if hi > lo else 1.0 for i in ranking}
        else:
            scaled = {i: 1.0 - r / len(ranking) for r, i in enumerate(ranking)}
        for i in ranking:
            per.setdefault(i, []).append(w * scaled[i])
    out = {}
    for i, v in per.items():
        v.sort(reverse=True)
        out[i] = v[0] + (bonus * v[1] if len(v) > 1 else 0.0)
    return out


def _matches(md: dict[str, Any], f: Filters) -> bool:
    for key in ("namespace", "kind", "source", "session", "trust", "speaker"):
        want = getattr(f, key)
        if want is not None and (md.get(key) or (DEFAULT_NAMESPACE if key == "namespace" else None)) != want:
            return False
    ts = float(md.get("event_ts", md.get("created_ts", 0.0)))
    return not ((f.since_ts is not None and ts < f.since_ts) or (f.until_ts is not None and ts >= f.until_ts))


def _where_filters(f: Filters) -> dict | None:
    conds: list[dict] = [{k: getattr(f, k)} for k in ("namespace", "kind", "source", "session", "trust", "speaker")
                         if getattr(f, k) is not None]
    if f.since_ts is not None:
        conds.append({"event_ts": {"$gte": f.since_ts}})
    if f.until_ts is not None:
        conds.append({"event_ts": {"$lt": f.until_ts}})
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"$and": conds}


def _where(*, kind=None, source=None, session=None, since=None, trust=None, namespace=None) -> dict | None:
    conds: list[dict] = []
    if namespace:
        conds.append({"namespace": namespace})
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
        conds.append({"created_ts": {"$gte": _utc(since).timestamp()}})
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"$and": conds}
