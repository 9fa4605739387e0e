"""Emptying SQLite's write-ahead log (and rewriting PostgreSQL's tables) after a deletion, and saying
when it could not be done yet.

A deleted person's rows are overwritten in the database file (``secure_delete``), but the pages as
they were before the delete stay in the ``-wal`` file until a checkpoint copies the log back and
truncates it. ``wal_checkpoint(TRUNCATE)`` cannot do that while another connection holds a read
transaction (``sqlite3 .backup``, a long query, another process's snapshot): it answers "busy"
and the log keeps the person's name, lookup key and crop. So the answer is checked; when a reader
blocks it the purge is *pending* (``WalPurger.pending``: the delete's answer and ``/healthz`` say so)
and is retried in the background until the reader goes.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading

log = logging.getLogger(__name__)

#: How long a deletion waits for readers to finish before leaving the purge to the background.
PURGE_WAIT_S = 0.5
#: Pause between background tries while a reader blocks the purge.
PURGE_RETRY_S = 0.2
#: Pause between background tries of PostgreSQL's purge (a VACUUM FULL rewrites whole tables).
PG_PURGE_RETRY_S = 1.0


class WalPurger:
    """Checkpoints and truncates the WAL of ``db`` (used under ``lock``, the connection's lock)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, where: str) -> None:
        self._db = db
        self._lock = lock
        self._where = where
        self._pending = False
        self._closing = threading.Event()
        self._retrying = False  # a background retry thread is running (both under the lock)

    @property
    def pending(self) -> bool:
        """True while deleted data may still be in the ``-wal`` file because a reader blocked its purge."""
        return self._pending

    def _checkpoint(self, wait_s: float) -> bool:
        """One ``wal_checkpoint(TRUNCATE)`` waiting at most ``wait_s`` for readers; True when it completed."""
        with self._lock:
            before = self._db.execute("PRAGMA busy_timeout").fetchone()[0]
            self._db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
            try:
                busy, frames, done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError as exc:  # "database table is locked" and the like: try again later
                log.debug("checkpoint of %s failed: %s", self._where, exc)
                return False
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(before)}")
        # Completed: not busy, and every frame of the log copied back (0 and 0 once truncated).
        return busy == 0 and frames == done

    def purge(self, wait_s: float = PURGE_WAIT_S) -> bool:
        """Empty the WAL now if the readers allow within ``wait_s``; else mark the purge pending and
        retry in the background. True when the WAL is empty."""
        with self._lock:
            if self._checkpoint(wait_s):
                if self._pending:
                    log.info("the pending purge of %s finished: no deleted data is left in its -wal file", self._where)
                self._pending = False
                return True
            if not self._pending:
                log.warning(
                    "a reader (a backup? another process?) blocks the checkpoint of %s: deleted data stays in its -wal "
                    "file until it goes; retrying every %.1f s (/healthz: purge_pending)", self._where, PURGE_RETRY_S,
                )
            self._pending = True
            if not self._retrying:
                self._retrying = True
                threading.Thread(target=self._retry, name="facegate-wal-purge", daemon=True).start()
            return False

    def _retry(self) -> None:
        while not self._closing.wait(PURGE_RETRY_S):
            with self._lock:
                if not self._pending or self._closing.is_set():  # a later purge() finished it, or closing
                    break
                if self._checkpoint(0.0):
                    self._pending = False
                    log.info("the pending purge of %s finished: no deleted data is left in its -wal file", self._where)
                    break
        with self._lock:
            self._retrying = False

    def close(self) -> None:
        """Stop retrying; one last try (SQLite also checkpoints when the last connection closes)."""
        self._closing.set()
        if self._pending and not self._checkpoint(PURGE_WAIT_S):
            log.warning("closing with a purge pending: deleted data stays in the -wal file of %s until the next "
                        "checkpoint (the next deletion, or the last connection closing)", self._where)


#: The tables whose deleted rows hold a person's name, name key, vectors and crops (and their TOAST
#: tables and indexes, which VACUUM FULL rewrites with them).
PG_TABLES = ("people", "faces")
_NOT_REMOVABLE = re.compile(r"(\d+) dead row versions cannot be removed yet")


class PgPurger:
    """Rewrites PostgreSQL's tables after a deletion so the deleted rows leave the data files.

    A DELETE on PostgreSQL only marks rows dead: their bytes stay in the table's heap, TOAST and index
    pages, and a plain VACUUM frees that space without overwriting it (measured: the name, its key and
    the crop were all still in the files after ``VACUUM`` and a checkpoint). ``VACUUM FULL`` writes the
    live rows into new files and removes the old ones, so this runs it on ``PG_TABLES``. Two things stop
    it: another transaction using the tables (its lock: waited for ``PURGE_WAIT_S`` at most, so readers
    are never queued behind it for long), and a snapshot older than the delete anywhere in the cluster
    (a ``pg_dump``, a long REPEATABLE READ transaction), for which VACUUM FULL must copy the dead rows
    ("N dead row versions cannot be removed yet"). Either way the purge is *pending* and retried in the
    background, as ``WalPurger`` does for SQLite. What it cannot reach: the write-ahead log (``pg_wal``
    keeps the rows until its segments are reused), WAL archives, replicas and backups.
    """

    def __init__(self, connection, where: str, tables: tuple[str, ...] = PG_TABLES) -> None:
        """``connection``: a context manager giving an autocommit psycopg connection (VACUUM runs outside
        a transaction), e.g. a pool's ``connection``."""
        self._connection = connection
        self._where = where
        self._tables = tables
        self._due: set[str] = set()  # tables with deleted rows still in their files (rewritten at the next try)
        self._lock = threading.Lock()
        self._pending = False
        self._closing = threading.Event()
        self._retrying = False

    @property
    def pending(self) -> bool:
        """True while deleted rows may still be in the tables' data files."""
        return self._pending

    def _vacuum(self, wait_s: float) -> bool:
        """One VACUUM FULL of the tables due; True when no dead row had to be kept."""
        notes: list[str] = []
        tables = [*self._tables, *sorted(self._due - set(self._tables))]
        try:
            with self._connection() as con:
                con.add_notice_handler(lambda d: notes.append(d.message_detail or ""))
                con.execute(f"SET lock_timeout = '{int(wait_s * 1000)}ms'")
                try:
                    con.execute(f"VACUUM (FULL, VERBOSE) {', '.join(tables)}")
                finally:
                    con.execute("RESET lock_timeout")
        except Exception as exc:  # lock timeout, a restart: tried again later
            log.debug("VACUUM FULL of %s failed: %s", self._where, exc)
            return False
        kept = sum(int(m.group(1)) for n in notes for m in _NOT_REMOVABLE.finditer(n))
        return kept == 0

    def purge(self, wait_s: float = PURGE_WAIT_S, also: tuple[str, ...] = ()) -> bool:
        """Rewrite the tables now if no one holds them for more than ``wait_s``; else mark the purge pending
        and retry in the background. True when no deleted row is left in the tables' files. ``also``: more
        tables this deletion left rows in (the event log, only when the person had events: it may be large)."""
        with self._lock:
            self._due.update(also)
            if self._vacuum(wait_s):
                self._due.clear()
                if self._pending:
                    log.info("the pending purge of %s finished: no deleted row is left in its tables' files", self._where)
                self._pending = False
                return True
            if not self._pending:
                log.warning(
                    "another transaction (a pg_dump? a long query?) keeps deleted rows of %s in its data files: "
                    "retrying VACUUM FULL every %.1f s (/healthz: purge_pending)", self._where, PG_PURGE_RETRY_S,
                )
            self._pending = True
            if not self._retrying:
                self._retrying = True
                threading.Thread(target=self._retry, name="facegate-pg-purge", daemon=True).start()
            return False

    def _retry(self) -> None:
        while not self._closing.wait(PG_PURGE_RETRY_S):
            with self._lock:
                if not self._pending or self._closing.is_set():
                    break
                if self._vacuum(PURGE_WAIT_S):
                    self._pending = False
                    self._due.clear()
                    log.info("the pending purge of %s finished: no deleted row is left in its tables' files", self._where)
                    break
        with self._lock:
            self._retrying = False

    def close(self) -> None:
        """Stop retrying (before the pool closes); a purge still pending is said in the log."""
        self._closing.set()
        if self._pending:
            log.warning("closing with a purge pending: deleted rows stay in the data files of %s until the next "
                        "VACUUM FULL (the next deletion, or run it yourself)", self._where)
