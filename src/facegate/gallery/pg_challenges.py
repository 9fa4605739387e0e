"""Liveness challenges in the PostgreSQL gallery's database (migration ``0004_challenges.sql``).

The same statements as the SQLite store (``facegate.gallery.challenges``). Spending is a row-locking
``UPDATE ... WHERE state = 'open' RETURNING``: of two answers at once, on any servers, the second waits for
the first to commit and then matches nothing. Counting the open challenges and inserting a new one hold
a transaction-scoped advisory lock, so two servers cannot both take the last slot; the purge is done by
one server at a time (``pg_try_advisory_xact_lock``: the others skip it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from facegate.security.encryption import Sealer
from .challenges import ChallengeSQL
from .postgres import MIGRATION_LOCK, _connect, _import_psycopg, migrate

#: Advisory lock keys of ``add`` and ``purge`` (apart from the migration lock's).
NEW_LOCK = MIGRATION_LOCK - 1
PURGE_LOCK = MIGRATION_LOCK - 2


class PgChallengeStore(ChallengeSQL):
    """Same interface as ``SqliteChallengeStore``; a small pool of its own, apart from searches'."""

    def __init__(self, url: str) -> None:
        _import_psycopg()
        from psycopg_pool import ConnectionPool

        self.url = url
        self._sealer = Sealer(None)  # the PostgreSQL gallery refuses encryption_key (pgvector reads the vectors)
        with _connect(url) as con:
            con.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                migrate(con)
            finally:
                con.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        self._pool = ConnectionPool(
            url, min_size=1, max_size=4, kwargs={"autocommit": True}, check=ConnectionPool.check_connection, open=True,
            name="facegate-challenges",
        )

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def _tx(self) -> Iterator:
        with self._pool.connection() as con, con.transaction():
            yield con

    def _lock_new(self, cur) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (NEW_LOCK,))

    def _may_purge(self, cur) -> bool:
        return bool(cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (PURGE_LOCK,)).fetchone()[0])

    def close(self) -> None:
        self._pool.close()
