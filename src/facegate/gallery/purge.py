"""Emptying SQLite's write-ahead log after a deletion, and saying when it could not be done yet.

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
import sqlite3
import threading

log = logging.getLogger(__name__)

#: How long a deletion waits for readers to finish before leaving the purge to the background.
PURGE_WAIT_S = 0.5
#: Pause between background tries while a reader blocks the purge.
PURGE_RETRY_S = 0.2


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
