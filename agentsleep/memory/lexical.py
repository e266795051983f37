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

import os
import re
import sqlite3
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .ledger import connect


def spoken(text: str, speaker: str | None) -> str:
    """A turn as the dense vectors read it: the speaker's name first (questions name people), unless the
    text already starts with it."""
    return text if not speaker or text.startswith(f"{speaker}:") else f"{speaker}: {text}"

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
# Scripts written without spaces between words (Han, kana, and Hangul, whose words carry their particles):
# FTS5's unicode61 tokenizer would take a whole run ("私の猫の名前はミケです") as one token, so no other
# wording could ever match it. Such runs are indexed and queried as overlapping character pairs instead,
# as Lucene's CJK analyzer does; a lone character stays itself.
_CJK_RUN = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
                      "\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+")
TOKENS_VERSION = "cjk-bigrams"  # how index_text splits words; an index written otherwise is rebuilt


def _bigrams(m: re.Match) -> str:
    run = m.group(0)
    return " " + (" ".join(run[i:i + 2] for i in range(len(run) - 1)) if len(run) > 1 else run) + " "


def index_text(text: str) -> str:
    """Text as the lexical index holds it: runs of CJK characters as overlapping pairs (see _CJK_RUN)."""
    return _CJK_RUN.sub(_bigrams, text) if text else text


def query_terms(text: str, *, pairs: bool = True) -> list[str]:
    """Content words of a query, lower-cased, in order, without repeats (CJK runs as character pairs,
    unless `pairs` is False: words as written, for an index made before the pairs, or for a dense query)."""
    words = [w.lower() for w in _WORD.findall(index_text(text) if pairs else text)]
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS
                              and (len(w) > 1 or w.isdigit() or _CJK_RUN.fullmatch(w))))


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


COMMON_FLOOR = 1000  # a query word is left out as common only when more rows than this hold it (_uncommon)


def _phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


_META_COLS = "d.namespace, d.speaker, d.session, d.event_ts, d.created_ts"


def _meta(r) -> dict:
    return {"namespace": r[0], "speaker": r[1], "session": r[2], "event_ts": r[3], "created_ts": r[4]}


class LexicalIndex:
    def __init__(self, path: Path, *, ctx_weight: float = 0.3, ent_weight: float = 0.5):
        self.path = path
        self.ctx_weight, self.ent_weight = ctx_weight, ent_weight
        self._local = threading.local()  # each thread's read connection
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self):
        return connect(self.path)

    @contextmanager
    def _read(self):
        """This thread's read connection, kept open (opening one per query cost about 0.2 ms, and a recall
        makes several; recall's lexical query runs in a thread of its own). Autocommit WAL: each query reads
        the latest committed state, whoever wrote it; a forked child opens its own."""
        c = getattr(self._local, "conn", None)
        if c is None or self._local.pid != os.getpid():
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            self._local.conn, self._local.pid = c, os.getpid()
            with self._readers_lock:
                self._readers.append(c)
        yield c

    def close(self) -> None:
        """Close every thread's read connection (a later query opens a new one)."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for c in readers:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

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
        ent = index_text(" ".join(([r.speaker] if r.speaker else []) + entities(r.text)))
        c.execute("INSERT INTO fts (rowid, text, ctx, ent) VALUES (?,?,?,?)",
                  (rowid, index_text(r.text), index_text(prev[1]) if prev else "", ent))
        if prev:  # the previous turn now also has this one as context
            old = c.execute("SELECT text, ctx, ent FROM fts WHERE rowid = ?", (prev[0],)).fetchone()
            if old is not None:
                c.execute("DELETE FROM fts WHERE rowid = ?", (prev[0],))
                c.execute("INSERT INTO fts (rowid, text, ctx, ent) VALUES (?,?,?,?)",
                          (prev[0], old[0], (old[1] + "\n" + index_text(r.text)).strip(), old[2]))

    def delete(self, ids: Iterable[str]) -> None:
        """Drop these rows, and their words from their session neighbours' context column: a forgotten
        turn must not be found through the turn before or after it."""
        ids = list(ids)
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                gone: list[tuple[str, str, int]] = []
                for s in range(0, len(ids), _IN_BATCH):
                    part = ids[s:s + _IN_BATCH]
                    q = ",".join("?" * len(part))
                    gone += c.execute(f"SELECT namespace, session, rowid FROM docs WHERE id IN ({q}) "
                                      "AND session IS NOT NULL", part).fetchall()
                    c.execute(f"DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE id IN ({q}))", part)
                    c.execute(f"DELETE FROM docs WHERE id IN ({q})", part)
                near = {(ns, sess, r[0]) for ns, sess, rowid in gone for r in self._around(c, ns, sess, rowid) if r}
                for ns, sess, rowid in near:
                    self._reset_context(c, ns, sess, rowid)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def present(self, ids: list[str]) -> list[str]:
        """Which of these ids the index holds."""
        out: list[str] = []
        with self._conn() as c:
            for s in range(0, len(ids), _IN_BATCH):
                part = ids[s:s + _IN_BATCH]
                out += [r[0] for r in c.execute(f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(part))})", part)]
        return out

    @staticmethod
    def _around(c: sqlite3.Connection, ns: str, sess: str, rowid: int) -> list[tuple[int, str] | None]:
        """(rowid, text) of the rows just before and after `rowid` in its session, None where there is none
        (`rowid` itself need not exist any more)."""
        return [c.execute(f"SELECT rowid, text FROM docs WHERE namespace = ? AND session = ? AND rowid {op} ? "
                          f"ORDER BY rowid {order} LIMIT 1", (ns, sess, rowid)).fetchone()
                for op, order in (("<", "DESC"), (">", "ASC"))]

    def _reset_context(self, c: sqlite3.Connection, ns: str, sess: str, rowid: int) -> None:
        """A row's context column from the turns now around it (what `_insert` would have written)."""
        before, after = self._around(c, ns, sess, rowid)
        old = c.execute("SELECT text, ent FROM fts WHERE rowid = ?", (rowid,)).fetchone()
        if old is not None:
            c.execute("DELETE FROM fts WHERE rowid = ?", (rowid,))
            c.execute("INSERT INTO fts (rowid, text, ctx, ent) VALUES (?,?,?,?)",
                      (rowid, old[0], index_text((before[1] if before else "") + "\n" + (after[1] if after else "")).strip(),
                       old[1]))

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
    def count(self, namespace: str | None = None) -> int:
        """Rows (chunks counted), of one namespace or all."""
        with self._conn() as c:
            if namespace is None:
                return int(c.execute("SELECT count(*) FROM docs").fetchone()[0])
            return int(c.execute("SELECT count(*) FROM docs WHERE namespace = ?", (namespace,)).fetchone()[0])

    def ids(self) -> set[str]:
        with self._conn() as c:
            return {r[0] for r in c.execute("SELECT id FROM docs")}

    def search(self, query: str, limit: int, filters: Filters, *, ctx_weight: float | None = None,
               ent_weight: float | None = None, skip: set[str] | frozenset[str] = frozenset(),
               meta: dict[str, dict] | None = None, common_share: float = 0.0) -> list[tuple[str, float]]:
        """(id, BM25 score, higher is better) for the best `limit` rows matching any content word of `query`
        (less the lower-case words in `skip`, and less the common words `_uncommon` leaves out, unless
        nothing else is left). `meta`, when given, receives each hit's fusion metadata (as `meta()` returns it)."""
        cond, args = filters.sql()
        sql = (f"SELECT d.id, bm25(fts, 1.0, ?, ?) AS s, {_META_COLS} FROM fts JOIN docs d ON d.rowid = fts.rowid "
               f"WHERE fts MATCH ? AND {cond} ORDER BY s LIMIT ?")
        with self._read() as c:
            # an index made before the character pairs (a read-only open before a writer rebuilt it) holds
            # whole CJK runs: query it the same way
            pairs = not _CJK_RUN.search(query) or self._tokens(c) == TOKENS_VERSION
            terms = query_terms(query, pairs=pairs)
            terms = [t for t in terms if t not in skip] or terms
            if not terms:
                return []
            try:
                match = " OR ".join(_phrase(t) for t in self._uncommon(c, terms, common_share))
                rows = c.execute(sql, [self.ctx_weight if ctx_weight is None else ctx_weight,
                                       self.ent_weight if ent_weight is None else ent_weight, match, *args, limit]).fetchall()
            except sqlite3.OperationalError:  # a query FTS5 cannot parse finds nothing lexically
                return []
        if meta is not None:
            meta.update((r[0], _meta(r[2:])) for r in rows)
        return [(r[0], -float(r[1])) for r in rows]

    @staticmethod
    def _tokens(c: sqlite3.Connection) -> str | None:
        r = c.execute("SELECT value FROM meta WHERE key = 'tokens'").fetchone()
        return r[0] if r else None

    @staticmethod
    def _uncommon(c: sqlite3.Connection, terms: list[str], share: float) -> list[str]:
        """`terms` less those found in more than `share` of the rows and in more than COMMON_FLOOR rows,
        unless that leaves none. Such words weigh little in BM25 (idf about ln(1/share)) and cost the most:
        BM25 scores, joins and sorts every row a query word matches. Each count stops at the threshold, so
        the check costs at most that many doclist entries per word; stores under COMMON_FLOOR / share rows
        are never pruned."""
        if share <= 0 or len(terms) < 2:
            return terms
        n = c.execute("SELECT max(rowid) FROM docs").fetchone()[0] or 0
        cap = max(COMMON_FLOOR, int(share * n))
        if n <= cap:
            return terms
        keep = [t for t in terms if c.execute("SELECT count(*) FROM (SELECT 1 FROM fts WHERE fts MATCH ? LIMIT ?)",
                                              (_phrase(t), cap + 1)).fetchone()[0] <= cap]
        return keep or terms

    def meta(self, ids: list[str], filters: Filters) -> tuple[dict[str, dict], set[str]]:
        """(id -> {namespace, speaker, session, event_ts, created_ts} for those of `ids` that pass `filters`,
        the ids this index holds at all), one query per 500 ids: how recall keeps the dense hits of one
        namespace, and what fusion's boosts read, without asking Chroma for metadata."""
        cond, args = filters.sql()
        out: dict[str, dict] = {}
        known: set[str] = set()
        with self._read() as c:
            for s in range(0, len(ids), _IN_BATCH):
                part = ids[s:s + _IN_BATCH]
                q = ",".join("?" * len(part))
                for r in c.execute(f"SELECT d.id, {_META_COLS}, ({cond}) FROM docs d WHERE d.id IN ({q})", [*args, *part]):
                    known.add(r[0])
                    if r[-1]:
                        out[r[0]] = _meta(r[1:-1])
        return out, known

    def adjacent(self, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """id -> (the turn before it, the turn after it) in its session, for these ids (one query)."""
        if not ids:
            return {}
        with self._read() as c:
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
        with self._read() as c:
            for s in range(0, len(ids), _IN_BATCH):
                part = ids[s:s + _IN_BATCH]
                q = ",".join("?" * len(part))
                for i, ns, sess in c.execute(f"SELECT id, namespace, session FROM docs WHERE id IN ({q}) "
                                             "AND session IS NOT NULL", part):
                    out[i] = (ns, sess)
        return out

    def last_in_session(self, namespace: str, session: str, n: int) -> list[str]:
        """The texts of the last `n` rows of a session, oldest first (speaker-prefixed when known)."""
        with self._read() as c:
            rows = c.execute("SELECT speaker, text FROM docs WHERE namespace = ? AND session = ? ORDER BY rowid DESC LIMIT ?",
                             (namespace, session, n)).fetchall()
        return [spoken(t, sp) for sp, t in reversed(rows)]

    @staticmethod
    def _place(c: sqlite3.Connection, episode_id: str) -> tuple | None:
        """(rowid, namespace, session) of a stored turn that has a session, else None."""
        r = c.execute("SELECT rowid, namespace, session FROM docs WHERE id = ?", (episode_id,)).fetchone()
        return None if r is None or r[2] is None else r

    @staticmethod
    def _turns(c: sqlite3.Connection, place: tuple, n: int, later: bool, cols: str = "id") -> list[tuple]:
        """`cols` of up to `n` turns after (`later`) or before the one at `place` in its session, nearest first."""
        op, order = (">", "ASC") if later else ("<", "DESC")
        return c.execute(f"SELECT {cols} FROM docs WHERE namespace = ? AND session = ? AND rowid {op} ? "
                         f"ORDER BY rowid {order} LIMIT ?", (place[1], place[2], place[0], n)).fetchall()

    def following(self, ids: list[str], n: int) -> list[str]:
        """The ids of up to `n` turns after each of these in its session (turn order), the given ids left out."""
        out: dict[str, None] = {}
        skip = set(ids)
        with self._read() as c:
            for i in ids:
                place = self._place(c, i)
                for (j,) in self._turns(c, place, n, later=True) if place else []:
                    if j not in skip:
                        out[j] = None
        return list(out)

    def before_in_session(self, episode_id: str, n: int) -> list[str]:
        """The texts of up to `n` turns before this one in its session, oldest first (speaker-prefixed when
        known), as `last_in_session` gives them for a new turn."""
        if n < 1:
            return []
        with self._read() as c:
            place = self._place(c, episode_id)
            rows = self._turns(c, place, n, later=False, cols="speaker, text") if place else []
        return [spoken(t, sp) for sp, t in reversed(rows)]

    def neighbours(self, ids: list[str], window: int) -> dict[str, list[str]]:
        """id -> the ids of up to `window` turns before and after it in its session (turn order), itself excluded."""
        out: dict[str, list[str]] = {}
        if window < 1:
            return out
        with self._read() as c:
            for i in ids:
                place = self._place(c, i)
                if place is None:
                    continue
                before = self._turns(c, place, window, later=False)
                after = self._turns(c, place, window, later=True)
                out[i] = [x[0] for x in reversed(before)] + [x[0] for x in after]
        return out
