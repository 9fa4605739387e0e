"""The SQLite gallery's schema, connection and transactions: the tables, how the file is opened
(WAL, full sync, foreign keys, secure delete), one write transaction, and the model check at open."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from facegate.security import audit
from .common import mixed_models_error

SCHEMA_VERSION = 1
DB_NAME = "gallery.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    crop BLOB,
    source TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_person ON faces(person_id);
CREATE TABLE IF NOT EXISTS changes (
    generation INTEGER PRIMARY KEY,
    op TEXT NOT NULL,
    person_id INTEGER NOT NULL,
    first_face INTEGER,
    last_face INTEGER
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """The gallery's connection: autocommit (transactions are explicit), shared by threads, WAL."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA secure_delete=ON")  # deleted biometric data is overwritten, not left in free pages
    return db


def create_tables(cur: sqlite3.Cursor) -> None:
    """The gallery's tables and the audit log's, where missing, in the caller's transaction."""
    for stmt in _SCHEMA.strip().split(";"):
        if stmt.strip():
            cur.execute(stmt)
    cur.execute(audit.AUDIT_SCHEMA)


def stored_model(db: Path) -> tuple[str, int] | None:
    """(model id, dimension) recorded in the database file ``db`` (opened read-only), or None if
    there is no such file, it is not a gallery, or no model was recorded yet."""
    if not db.is_file():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'dim')").fetchall())
    except sqlite3.DatabaseError:
        return None
    finally:
        con.close()
    if "model_id" not in meta:
        return None
    return meta["model_id"], int(meta["dim"])


@contextmanager
def write_tx(db: sqlite3.Connection, lock) -> Iterator[sqlite3.Cursor]:
    """One write transaction on ``db`` under ``lock``; ``BEGIN IMMEDIATE`` takes the write lock up front so
    writers never deadlock. Rolled back on any error (KeyboardInterrupt too), else committed."""
    with lock:
        cur = db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")


class Transactions:
    """``Gallery``'s transactions and meta rows (``_db`` and ``_lock`` are the gallery's)."""

    _db: sqlite3.Connection
    _lock: threading.RLock
    model_id: str
    dim: int

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction (``write_tx`` on the gallery's connection and lock)."""
        with write_tx(self._db, self._lock) as cur:
            yield cur

    def _check_model(self, cur: sqlite3.Cursor) -> None:
        row = cur.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        others = cur.execute(
            "SELECT model_id, COUNT(*) FROM faces WHERE model_id != ? GROUP BY model_id", (self.model_id,)
        ).fetchall()
        if others:
            raise mixed_models_error(others, self.model_id, "start a new data directory")
        if row is None or row[0] != self.model_id:
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('model_id', ?)", (self.model_id,))
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(self.dim),))

    def _generation(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
