"""Consolidation ledger: which episode went into which model version.

Kept in SQLite beside the Chroma store rather than in Chroma metadata, so a
sleep can record its work while another process holds the store's single
writer slot (SQLite itself is safe with several processes).
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_IN_BATCH = 500  # SQLite's default limit on bound variables is 999 (older builds)


def _batches(ids: list[str]) -> Iterator[tuple[list[str], str]]:
    """`ids` in slices SQLite can bind, each with its "?,?,..." placeholders."""
    for s in range(0, len(ids), _IN_BATCH):
        part = ids[s:s + _IN_BATCH]
        yield part, ",".join("?" * len(part))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consolidation (
    episode_id TEXT NOT NULL,
    version    TEXT NOT NULL,
    sleep_id   TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (episode_id, version)
);
CREATE INDEX IF NOT EXISTS consolidation_version ON consolidation(version);
CREATE TABLE IF NOT EXISTS forgotten (
    episode_id TEXT PRIMARY KEY,
    at         REAL NOT NULL,
    reason     TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS forget_pending (
    episode_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS forget_fallback (
    episode_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS probe (
    probe_id   TEXT PRIMARY KEY,
    episode_id TEXT NOT NULL,
    question   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    since      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS probe_episode ON probe(episode_id);
CREATE TABLE IF NOT EXISTS probe_result (
    probe_id TEXT NOT NULL,
    version  TEXT NOT NULL,
    hit      INTEGER NOT NULL,
    at       REAL NOT NULL,
    PRIMARY KEY (probe_id, version)
);
CREATE TABLE IF NOT EXISTS attempt (
    episode_id TEXT PRIMARY KEY,
    failures   INTEGER NOT NULL,
    wait_until INTEGER NOT NULL,
    sleep_id   TEXT NOT NULL,
    failed     TEXT NOT NULL DEFAULT '',
    reason     TEXT NOT NULL DEFAULT '',
    at         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

CANDIDATE = "candidate:"  # probe results of a sleep's expert before the gate has spoken: "candidate:<sleep id>"
SKIPPED = "skipped:"      # the consolidation mark of a set-aside (quarantined) episode: "skipped:<sleep id>"


def probe_id(question: str, answer: str) -> str:
    """A probe's stable id: the same question and answer are the same fact in every sleep and manifest."""
    import hashlib

    return hashlib.sha256(f"{question.strip()}\x1f{answer.strip()}".encode()).hexdigest()[:20]


@dataclass
class Attempt:
    """An episode's failed consolidations: how many, until which sleep it waits, and why it failed last."""

    episode_id: str
    failures: int
    wait_until: int       # the sleep count (`Ledger.sleeps()`) from which it may be taken again
    sleep_id: str         # the last sleep that failed with it
    failed: str           # the checks that failed ("retention,recall_gain"), or "no_dreams"
    reason: str
    quarantined: bool = False

    def waiting(self, now: int) -> bool:
        """Still waiting out its backoff at sleep count `now` (not yet due again)."""
        return self.wait_until > now


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One autocommit WAL connection, closed on exit. sqlite3's own `with connection` only commits:
    it never closes, so every call leaked a connection (and its WAL handles) until GC."""
    c = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        c.execute("PRAGMA journal_mode=WAL")
        yield c
    finally:
        c.close()


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self):
        return connect(self.path)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: every row of a multi-row write lands, or none (and one fsync, not one a row)."""
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def store_id(self, *, create: bool) -> str | None:
        """This home's store's own id, made once (`create`): what a shared Chroma server's collection is
        claimed with, so that two homes never read and write one collection by mistake."""
        with self._conn() as c:
            if create:
                import uuid

                c.execute("INSERT OR IGNORE INTO info VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            row = c.execute("SELECT value FROM info WHERE key = 'store_id'").fetchone()
        return row[0] if row else None

    def mark(self, episode_ids: list[str], version: str, sleep_id: str) -> None:
        """Record that `version` absorbed these episodes (one transaction)."""
        now = time.time()
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO consolidation VALUES (?,?,?,?)",
                          [(e, version, sleep_id, now) for e in episode_ids])

    def unmark_versions(self, versions: list[str]) -> None:
        """Forget the consolidation records of these versions (after a rollback past them)."""
        with self._tx() as c:
            c.executemany("DELETE FROM consolidation WHERE version = ?", [(v,) for v in versions])

    def versions_of(self, episode_ids: list[str] | None = None) -> dict[str, str]:
        """episode id -> the latest version that absorbed it."""
        q = "SELECT episode_id, version FROM consolidation"
        with self._conn() as c:
            if episode_ids is None:
                rows = c.execute(q + " ORDER BY at, rowid").fetchall()
            else:
                ids = list(dict.fromkeys(episode_ids))
                rows = []
                for part, marks in _batches(ids):
                    rows += c.execute(q + f" WHERE episode_id IN ({marks}) ORDER BY at, rowid", part).fetchall()
        return {e: v for e, v in rows}

    def episodes_in(self, version: str) -> list[str]:
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT episode_id FROM consolidation WHERE version = ?", (version,))]

    def forget(self, episode_ids: list[str], reason: str = "", *, fallback: bool = False) -> None:
        """Record the forgetting, and drop what the ledger held of these episodes' text (their probes' questions
        and answers, with every version's answers to them) and their failed attempts. `fallback` (serve the
        clean version at once) is recorded with it, so that a forget cut short is finished as it was asked."""
        now = time.time()
        with self._tx() as c:  # probe(episode_id) is indexed: each delete finds its rows, never a scan
            if fallback:
                c.executemany("INSERT OR IGNORE INTO forget_fallback VALUES (?)", [(e,) for e in episode_ids])
            c.executemany("INSERT OR REPLACE INTO forgotten VALUES (?,?,?)", [(e, now, reason) for e in episode_ids])
            c.executemany("INSERT OR IGNORE INTO forget_pending VALUES (?)", [(e,) for e in episode_ids])
            for e in episode_ids:
                c.execute("DELETE FROM probe_result WHERE probe_id IN (SELECT probe_id FROM probe WHERE episode_id = ?)",
                          (e,))
                c.execute("DELETE FROM probe WHERE episode_id = ?", (e,))
                c.execute("DELETE FROM attempt WHERE episode_id = ?", (e,))

    def forgotten(self) -> dict[str, float]:
        with self._conn() as c:
            return dict(c.execute("SELECT episode_id, at FROM forgotten").fetchall())

    def forgotten_among(self, episode_ids: list[str]) -> set[str]:
        """Which of these ids were forgotten (recall and get hide them even before the stores have
        deleted them: a forget cut short is finished on the next writable open)."""
        out: set[str] = set()
        with self._conn() as c:
            for part, marks in _batches(episode_ids):
                out |= {r[0] for r in c.execute(f"SELECT episode_id FROM forgotten WHERE episode_id IN ({marks})", part)}
        return out

    def pending_forgets(self) -> list[str]:
        """Forgotten episodes the stores may still hold (the forget has not confirmed both deletes)."""
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT episode_id FROM forget_pending")]

    def pending_fallbacks(self) -> set[str]:
        """Of the forgets not yet finished, the episodes whose forget asked to serve the clean version at once."""
        with self._conn() as c:
            return {r[0] for r in c.execute("SELECT episode_id FROM forget_fallback")}

    def forget_done(self, episode_ids: list[str]) -> None:
        with self._tx() as c:
            for part, marks in _batches(episode_ids):
                c.execute(f"DELETE FROM forget_pending WHERE episode_id IN ({marks})", part)
                c.execute(f"DELETE FROM forget_fallback WHERE episode_id IN ({marks})", part)

    # -- the per-probe record: what each version answered (the gate's memory across nights) --------

    def record_probes(self, probes: list[tuple[str, str, str, str]]) -> None:
        """Register probes as (probe id, episode id, question, answer); the first registration stays."""
        with self._tx() as c:
            c.executemany("INSERT OR IGNORE INTO probe (probe_id, episode_id, question, answer) VALUES (?,?,?,?)",
                          probes)

    def set_probe_since(self, since: dict[str, str]) -> None:
        """probe id -> the version that consolidated its fact, where not known yet (the first one stays)."""
        with self._tx() as c:
            c.executemany("UPDATE probe SET since = ? WHERE probe_id = ? AND since = ''",
                          [(v, p) for p, v in since.items()])

    def probe_since(self, probe_ids: list[str]) -> dict[str, str]:
        return {p: s for p, s in self._select("SELECT probe_id, since FROM probe", "probe_id", probe_ids) if s}

    def record_results(self, version: str, hits: dict[str, bool]) -> None:
        """Whether `version` (or CANDIDATE + sleep id) answered each probe; a re-measure replaces the row."""
        now = time.time()
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO probe_result VALUES (?,?,?,?)",
                          [(p, version, int(h), now) for p, h in hits.items()])

    def name_candidate(self, sleep_id: str, version: str) -> None:
        """A promoted sleep's candidate results become the published version's."""
        with self._conn() as c:
            c.execute("UPDATE OR REPLACE probe_result SET version = ? WHERE version = ?", (version, CANDIDATE + sleep_id))

    def results(self, probe_ids: list[str]) -> dict[str, dict[str, bool]]:
        """probe id -> {version: answered}."""
        out: dict[str, dict[str, bool]] = {}
        for p, v, h in self._select("SELECT probe_id, version, hit FROM probe_result", "probe_id", probe_ids):
            out.setdefault(p, {})[v] = bool(h)
        return out

    def missed_by(self, version: str) -> set[str]:
        """Episodes with a probe that `version` was asked and missed (the gate records every version's
        answers to the items it re-asks): the memories at risk, rehearsed first (sleep/select.py)."""
        q = "SELECT DISTINCT p.episode_id FROM probe p JOIN probe_result r ON r.probe_id = p.probe_id " \
            "WHERE r.version = ? AND r.hit = 0"
        with self._conn() as c:
            return {r[0] for r in c.execute(q, (version,))}

    def _select(self, q: str, col: str, ids: list[str]) -> list[tuple]:
        ids = list(dict.fromkeys(ids))
        rows: list[tuple] = []
        with self._conn() as c:
            for part, marks in _batches(ids):
                rows += c.execute(q + f" WHERE {col} IN ({marks})", part).fetchall()
        return rows

    # -- attempts: per-episode backoff and quarantine, so that a failing episode holds nobody back ------

    def sleeps(self) -> int:
        """How many sleeps have run in this home (the clock backoff is counted in)."""
        with self._conn() as c:
            row = c.execute("SELECT value FROM counter WHERE name = 'sleeps'").fetchone()
        return int(row[0]) if row else 0

    def tick(self) -> int:
        """One more sleep has run; returns the new count."""
        with self._conn() as c:
            c.execute("INSERT INTO counter VALUES ('sleeps', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1")
            return int(c.execute("SELECT value FROM counter WHERE name = 'sleeps'").fetchone()[0])

    def attempts(self, episode_ids: list[str] | None = None) -> dict[str, Attempt]:
        """episode id -> its failed attempts (only episodes that failed since they last succeeded)."""
        q = "SELECT episode_id, failures, wait_until, sleep_id, failed, reason FROM attempt"
        if episode_ids is None:
            with self._conn() as c:
                rows = c.execute(q).fetchall()
        else:
            rows = self._select(q, "episode_id", episode_ids)
        marks = self.versions_of([r[0] for r in rows]) if rows else {}
        out = {r[0]: Attempt(*r, quarantined=marks.get(r[0], "").startswith(SKIPPED)) for r in rows}
        q = "SELECT episode_id, sleep_id FROM consolidation WHERE version LIKE ?"
        with self._conn() as c:  # set aside before attempts were counted: shown and released the same way
            skipped = c.execute(q, (SKIPPED + "%",)).fetchall()
        wanted = None if episode_ids is None else set(episode_ids)
        for e, sid in skipped:
            if e not in out and (wanted is None or e in wanted):
                out[e] = Attempt(e, 1, 0, sid, "no_dreams", "set aside by an earlier sleep", quarantined=True)
        return out

    def backing_off(self, episode_ids: list[str] | None = None) -> set[str]:
        """Episodes waiting out a backoff after failed sleeps (not yet due again): a sleep skips them, and
        the daemon does not count them as waiting."""
        now = self.sleeps()
        return {e for e, a in self.attempts(episode_ids).items() if a.waiting(now)}

    def fail(self, episode_ids: list[str], sleep_id: str, failed: str, reason: str, *, now_sleep: int,
             backoff: int, quarantine_after: int, quarantine_now: bool = False,
             extra_wait: int = 0) -> dict[str, Attempt]:
        """Count one failed attempt for each episode: it waits `backoff * 2**(failures - 2)` sleeps from its
        second failure on (the first is retried at once, with a changed plan), plus `extra_wait`, and after
        `quarantine_after` failures (or at once with `quarantine_now`) it is set aside as SKIPPED + sleep id
        until released."""
        now = time.time()
        prev = self.attempts(episode_ids)
        out: dict[str, Attempt] = {}
        for e in dict.fromkeys(episode_ids):
            k = (prev[e].failures if e in prev else 0) + 1
            wait = 0 if k < 2 else backoff * 2 ** min(k - 2, 16) + extra_wait
            out[e] = Attempt(e, k, now_sleep + 1 + wait, sleep_id, failed, reason,
                             quarantined=quarantine_now or (quarantine_after > 0 and k >= quarantine_after))
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO attempt VALUES (?,?,?,?,?,?,?)",
                          [(a.episode_id, a.failures, a.wait_until, a.sleep_id, a.failed, a.reason, now)
                           for a in out.values()])
            c.executemany("INSERT OR REPLACE INTO consolidation VALUES (?,?,?,?)",
                          [(a.episode_id, SKIPPED + sleep_id, sleep_id, now) for a in out.values() if a.quarantined])
        return out

    def succeed(self, episode_ids: list[str]) -> None:
        """Consolidated at last: their failed attempts are history."""
        with self._tx() as c:
            for part, marks in _batches(episode_ids):
                c.execute(f"DELETE FROM attempt WHERE episode_id IN ({marks})", part)

    def release(self, episode_ids: list[str] | None = None) -> list[str]:
        """Give set-aside or backed-off episodes (all with None) a fresh start: the next sleep takes them.
        Returns the ids released."""
        wanted = None if episode_ids is None else set(episode_ids)
        with self._tx() as c:
            held = [r[0] for r in c.execute("SELECT episode_id FROM attempt")]
            held += [r[0] for r in c.execute("SELECT episode_id FROM consolidation WHERE version LIKE ?",
                                             (SKIPPED + "%",))]
            ids = [e for e in dict.fromkeys(held) if wanted is None or e in wanted]
            for e in ids:
                c.execute("DELETE FROM attempt WHERE episode_id = ?", (e,))
                c.execute("DELETE FROM consolidation WHERE episode_id = ? AND version LIKE ?", (e, SKIPPED + "%"))
        return ids
