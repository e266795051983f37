"""Lexical index: SQLite FTS5 (BM25) beside the ledger, kept in step with the Chroma collection.

Dense MiniLM misses exact words (names, places, rare terms); BM25 finds them.
Chroma's own sparse/BM25 Search API is not implemented for local Chroma
(embedded PersistentClient or `chroma run`: "Search is not implemented for
Local Chroma" in chromadb 1.5), so the words live here, in SQLite, which is
safe with several processes and rides along in the home directory.

Rows carry the same filter fields as the Chroma metadata (namespace, kind,
source, session, trust, times, speaker), so a lexical hit obeys the same hard
namespace partition and filters as a dense one. Each row also indexes its
session neighbours' text (`ctx`, weighted low), so a reply is found by the
words of the question it answers; the rowid order within a session is the
turn order used to attach neighbouring turns to a hit.
"""
from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .ledger import connect

SCHEMA_VERSION = "2"
_IN_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    rowid      INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    namespace  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    source     TEXT NOT NULL,
    session    TEXT,
    trust      TEXT NOT NULL,
    created_ts REAL NOT NULL,
    event_ts   REAL NOT NULL,
    speaker    TEXT,
    text       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_session ON docs(namespace, session, rowid);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, ctx, ent, tokenize='porter unicode61');
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Words that carry no topic: left out of the query so BM25 ranks on the content words.
STOPWORDS = frozenset("""
a about after again all also am an and any are as at be been before being both but by can could did do does
doing done during each few for from had has have having he her here hers herself him himself his how i if in
into is it its itself just me more most my myself no nor not now of off on once only or other our ours out over
own same she should so some such than that the their theirs them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your yours
yourself ever kind sort thing things get got go going went lot like likely might may much many
""".split())

_WORD = re.compile(r"\w+", re.UNICODE)
_CAPITAL = re.compile(r"\b[A-Z][\w'-]+")


def query_terms(text: str) -> list[str]:
    """Content words of a query, lower-cased, in order, without repeats."""
    words = [w.lower() for w in _WORD.findall(text)]
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())))


def entities(text: str) -> list[str]:
    """Capitalised words not at a sentence start: a cheap, language-light stand-in for named entities."""
    out = []
    for m in _CAPITAL.finditer(text):
        before = text[:m.start()].rstrip()
        if before and before[-1] not in ".!?:\"'[(":
            out.append(m.group(0).strip("'-"))
    return list(dict.fromkeys(out))


@dataclass
class Row:
    id: str
    namespace: str
    kind: str
    source: str
    session: str | None
    trust: str
    created_ts: float
    event_ts: float
    speaker: str | None
    text: str


@dataclass
class Filters:
    """The filters recall applies on both indexes (None = not filtered)."""
    namespace: str | None = None
    kind: str | None = None
    source: str | None = None
    session: str | None = None
    trust: str | None = None
    speaker: str | None = None
    since_ts: float | None = None
    until_ts: float | None = None

    def sql(self) -> tuple[str, list]:
        conds, args = [], []
        for col in ("namespace", "kind", "source", "session", "trust", "speaker"):
            v = getattr(self, col)
            if v is not None:
                conds.append(f"d.{col} = ?")
                args.append(v)
        if self.since_ts is not None:
            conds.append("d.event_ts >= ?")
            args.append(self.since_ts)
        if self.until_ts is not None:
            conds.append("d.event_ts < ?")
            args.append(self.until_ts)
        return (" AND ".join(conds) or "1"), args


class LexicalIndex:
    def __init__(self, path: Path, *, ctx_weight: float = 0.3, ent_weight: float = 0.5):
        self.path = path
        self.ctx_weight, self.ent_weight = ctx_weight, ent_weight
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self):
        return connect(self.path)

    # -- meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._conn() as c:
            r = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return r[0] if r else None

    def set_meta(self, key: str, value: str) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writes -------------------------------------------------------------
    def add(self, rows: list[Row]) -> None:
        """Index rows (one transaction); each row's session neighbours' text goes into its `ctx` column."""
        if not rows:
            return
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    self._insert(c, r)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def _insert(self, c: sqlite3.Connection, r: Row) -> None:
        c.execute("DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE id = ?)", (r.id,))
        c.execute("DELETE FROM docs WHERE id = ?", (r.id,))
        prev = None
        if r.session is not None:
            prev = c.execute("SELECT rowid, text FROM docs WHERE namespace = ? AND session = ? ORDER BY rowid DESC LIMIT 1",
                             (r.namespace, r.session)).fetchone()
        cur = c.execute("INSERT INTO docs (id, namespace, kind, source, session, trust, created_ts, event_ts, speaker, text) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (r.id, r.namespace, r.kind, r.source, r.session, r.trust, r.created_ts, r.event_ts, r.speaker, r.text))
        rowid = cur.lastrowid
        ent = " ".join(([r.speaker] if r.speaker else []) + entities(r.text))
        c.execute("INSERT INTO fts (rowid, text, ctx, ent) VALUES (?,?,?,?)", (rowid, r.text, prev[1] if prev else "", ent))
        if prev:  # the previous turn now also has this one as context
            old = c.execute("SELECT text, ctx, ent FROM fts WHERE rowid = ?", (prev[0],)).fetchone()
            if old is not None:
                c.execute("DELETE FROM fts WHERE rowid = ?", (prev[0],))
                c.execute("INSERT INTO fts (rowid, text, ctx, ent) VALUES (?,?,?,?)",
                          (prev[0], old[0], (old[1] + "\n" + r.text).strip(), old[2]))

    def delete(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                for s in range(0, len(ids), _IN_BATCH):
                    part = ids[s:s + _IN_BATCH]
                    q = ",".join("?" * len(part))
                    c.execute(f"DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE id IN ({q}))", part)
                    c.execute(f"DELETE FROM docs WHERE id IN ({q})", part)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def rebuild(self, rows: list[Row]) -> None:
        """Replace the whole index with these rows (in turn order)."""
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("DELETE FROM fts")
                c.execute("DELETE FROM docs")
                for r in rows:
                    self._insert(c, r)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    # -- reads --------------------------------------------------------------
    def count(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT count(*) FROM docs").fetchone()[0])

    def ids(self) -> set[str]:
        with self._conn() as c:
            return {r[0] for r in c.execute("SELECT id FROM docs")}

    def search(self, query: str, limit: int, filters: Filters, *, ctx_weight: float | None = None,
               ent_weight: float | None = None, skip: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, float]]:
        """(id, BM25 score, higher is better) for the best `limit` rows matching any content word of `query`
        (less the lower-case words in `skip`, unless nothing else is left)."""
        terms = query_terms(query)
        terms = [t for t in terms if t not in skip] or terms
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        cond, args = filters.sql()
        sql = (f"SELECT d.id, bm25(fts, 1.0, ?, ?) AS s FROM fts JOIN docs d ON d.rowid = fts.rowid "
               f"WHERE fts MATCH ? AND {cond} ORDER BY s LIMIT ?")
        with self._conn() as c:
            try:
                rows = c.execute(sql, [self.ctx_weight if ctx_weight is None else ctx_weight,
                                       self.ent_weight if ent_weight is None else ent_weight, match, *args, limit]).fetchall()
            except sqlite3.OperationalError:  # a query FTS5 cannot parse finds nothing lexically
                return []
        return [(i, -float(s)) for i, s in rows]

    def adjacent(self, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """id -> (the turn before it, the turn after it) in its session, for these ids (one query)."""
        if not ids:
            return {}
        with self._conn() as c:
            q = ",".join("?" * len(ids))
            keys = c.execute(f"SELECT DISTINCT namespace, session FROM docs WHERE id IN ({q}) AND session IS NOT NULL",
                             ids).fetchall()
            out: dict[str, tuple[str | None, str | None]] = {}
            for ns, sess in keys:
                rows = [r[0] for r in c.execute("SELECT id FROM docs WHERE namespace = ? AND session = ? ORDER BY rowid",
                                                (ns, sess))]
                for n, i in enumerate(rows):
                    out[i] = (rows[n - 1] if n else None, rows[n + 1] if n + 1 < len(rows) else None)
        return out

    def session_of(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        """id -> (namespace, session) for those of these ids that have a session (one query per 500 ids)."""
        out: dict[str, tuple[str, str]] = {}
        with self._conn() as c:
            for s in range(0, len(ids), _IN_BATCH):
                part = ids[s:s + _IN_BATCH]
                q = ",".join("?" * len(part))
                for i, ns, sess in c.execute(f"SELECT id, namespace, session FROM docs WHERE id IN ({q}) "
                                             "AND session IS NOT NULL", part):
                    out[i] = (ns, sess)
        return out

    def last_in_session(self, namespace: str, session: str, n: int) -> list[str]:
        """The texts of the last `n` rows of a session, oldest first (speaker-prefixed when known)."""
        with self._conn() as c:
            rows = c.execute("SELECT speaker, text FROM docs WHERE namespace = ? AND session = ? ORDER BY rowid DESC LIMIT ?",
                             (namespace, session, n)).fetchall()
        return [t if not sp or t.startswith(f"{sp}:") else f"{sp}: {t}" for sp, t in reversed(rows)]

    def neighbours(self, ids: list[str], window: int) -> dict[str, list[str]]:
        """id -> the ids of up to `window` turns before and after it in its session (turn order), itself excluded."""
        out: dict[str, list[str]] = {}
        if window < 1:
            return out
        with self._conn() as c:
            for i in ids:
                r = c.execute("SELECT rowid, namespace, session FROM docs WHERE id = ?", (i,)).fetchone()
                if r is None or r[2] is None:
                    continue
                before = c.execute("SELECT id FROM docs WHERE namespace = ? AND session = ? AND rowid < ? "
                                   "ORDER BY rowid DESC LIMIT ?", (r[1], r[2], r[0], window)).fetchall()
                after = c.execute("SELECT id FROM docs WHERE namespace = ? AND session = ? AND rowid > ? "
                                  "ORDER BY rowid LIMIT ?", (r[1], r[2], r[0], window)).fetchall()
                out[i] = [x[0] for x in reversed(before)] + [x[0] for x in after]
        return out
