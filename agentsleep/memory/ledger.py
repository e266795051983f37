"""Consolidation ledger: which episode went into which model version.

Kept in SQLite beside the Chroma store rather than in Chroma metadata, so a
sleep can record its work while another process holds the store's single
writer slot (SQLite itself is safe with several processes).
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

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


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    def mark(self, episode_ids: list[str], version: str, sleep_id: str) -> None:
        """Record that `version` absorbed these episodes (one transaction)."""
        now = time.time()
        with self._conn() as c:
            c.execute("BEGIN")
            c.executemany("INSERT OR REPLACE INTO consolidation VALUES (?,?,?,?)",
                          [(e, version, sleep_id, now) for e in episode_ids])
            c.execute("COMMIT")

    def unmark_versions(self, versions: list[str]) -> None:
        """Forget the consolidation records of these versions (after a rollback past them)."""
        with self._conn() as c:
            c.executemany("DELETE FROM consolidation WHERE version = ?", [(v,) for v in versions])

    def versions_of(self, episode_ids: list[str] | None = None) -> dict[str, str]:
        """episode id -> the latest version that absorbed it."""
        with self._conn() as c:
            rows = c.execute("SELECT episode_id, version FROM consolidation ORDER BY at").fetchall()
        want = None if episode_ids is None else set(episode_ids)
        return {e: v for e, v in rows if want is None or e in want}

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
