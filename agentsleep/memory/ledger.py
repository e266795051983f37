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
from pathlib import Path

_IN_BATCH = 500  # SQLite's default limit on bound variables is 999 (older builds)

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
"""


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

    def mark(self, episode_ids: list[str], version: str, sleep_id: str) -> None:
        """Record that `version` absorbed these episodes (one transaction)."""
        now = time.time()
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany("INSERT OR REPLACE INTO consolidation VALUES (?,?,?,?)",
                              [(e, version, sleep_id, now) for e in episode_ids])
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def unmark_versions(self, versions: list[str]) -> None:
        """Forget the consolidation records of these versions (after a rollback past them)."""
        with self._conn() as c:
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
                for s in range(0, len(ids), _IN_BATCH):
                    part = ids[s:s + _IN_BATCH]
                    rows += c.execute(q + f" WHERE episode_id IN ({','.join('?' * len(part))}) ORDER BY at, rowid",
                                      part).fetchall()
        return {e: v for e, v in rows}

    def episodes_in(self, version: str) -> list[str]:
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT episode_id FROM consolidation WHERE version = ?", (version,))]

    def forget(self, episode_ids: list[str], reason: str = "") -> None:
        now = time.time()
        with self._conn() as c:
            c.executemany("INSERT OR REPLACE INTO forgotten VALUES (?,?,?)", [(e, now, reason) for e in episode_ids])

    def forgotten(self) -> dict[str, float]:
        with self._conn() as c:
            return dict(c.execute("SELECT episode_id, at FROM forgotten").fetchall())
