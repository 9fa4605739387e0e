"""Liveness challenges in the PostgreSQL gallery's database (migration ``0004_challenges.sql``).

The same statements as the SQLite store (``facegate.gallery.challenges``). Spending is a row-locking
``UPDATE ... WHERE state = 'open' RETURNING``: of two answers at once, on any servers, the second waits for
the first to commit and then matches nothing. Counting the open challenges and inserting a new one hold
a transaction-scoped advisory lock, so two servers cannot both take the last slot; the purge is done by
one server at a time (``pg_try_advisory_xact_lock``: the others skip it).
"""

from __future__ import annotations

from facegate.security.encryption import Sealer
from .challenges import ChallengeSQL
from .sqltext import PgSqlText
from .postgres import MIGRATION_LOCK, migrated_pool

#: Advisory lock keys of ``add`` and ``purge`` (apart from the migration lock's).
NEW_LOCK = MIGRATION_LOCK - 1
PURGE_LOCK = MIGRATION_LOCK - 2


class PgChallengeStore(PgSqlText, ChallengeSQL):
    """Same interface as ``SqliteChallengeStore``; a small pool of its own, apart from searches'."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sealer = Sealer(None)  # the PostgreSQL gallery refuses encryption_key (pgvector reads the vectors)
        self._pool = migrated_pool(url, "facegate-challenges")

    def _lock_new(self, cur) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (NEW_LOCK,))

    def _may_purge(self, cur) -> bool:
        return bool(cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (PURGE_LOCK,)).fetchone()[0])

    def close(self) -> None:
        self._pool.close()
