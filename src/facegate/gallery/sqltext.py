"""One SQL text for SQLite and PostgreSQL: the stores write ``?`` placeholders; PostgreSQL's rewrite them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from facegate.security.encryption import Sealer


class SqlText:
    """Base of the event and challenge stores' shared statements.

    Subclasses give ``_tx`` (one write transaction, yielding something with ``execute``) and, for
    PostgreSQL, a ``_q`` that rewrites the placeholders.
    """

    _sealer: Sealer

    @contextmanager
    def _tx(self) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _q(self, sql: str) -> str:
        return sql

    def _x(self, cur, sql: str, params: Sequence = ()) -> Any:
        return cur.execute(self._q(sql), tuple(params))


class PgSqlText(SqlText):
    """PostgreSQL's side: ``%s`` placeholders, and each ``_tx`` a transaction on a connection of the store's pool."""

    _pool: Any  # a psycopg_pool.ConnectionPool (``postgres.migrated_pool``)

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def _tx(self) -> Iterator:
        with self._pool.connection() as con, con.transaction():
            yield con
