"""The event log and webhooks in the PostgreSQL gallery's database (migration ``0003_events.sql``).

Each stored event is announced with ``NOTIFY facegate_events, '<seq>'`` in its own transaction, so
every server LISTENing (``listen``) learns of events written by any server, once they are committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from facegate.security.encryption import Sealer
from .events import EventSQL
from .sqltext import PgSqlText
from .postgres import _import_psycopg, migrated_pool, redact

log = logging.getLogger(__name__)

#: The channel events are announced on (payload: the event's ``seq``).
CHANNEL = "facegate_events"


class PgEventStore(PgSqlText, EventSQL):
    """Same interface as ``SqliteEventStore``; a small pool of its own, apart from searches'."""

    notifies = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._sealer = Sealer(None)  # the PostgreSQL gallery refuses encryption_key (pgvector reads the vectors)
        self._pool = migrated_pool(url, "facegate-events")
        self._closing = threading.Event()

    @contextmanager
    def _read(self) -> Iterator:
        with self._pool.connection() as con:
            yield con

    def _after_add(self, cur, seq: int) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))

    def listen(self, on_seq: Callable[[int], None]) -> threading.Thread:
        """Call ``on_seq(seq)`` for every event committed by any server, from a thread that reconnects
        on its own until ``close``."""

        def run() -> None:
            psycopg = _import_psycopg()
            while not self._closing.is_set():
                try:
                    with psycopg.connect(self.url, autocommit=True) as con:
                        con.execute(f"LISTEN {CHANNEL}")
                        while not self._closing.is_set():
                            for n in con.notifies(timeout=0.5):
                                try:
                                    on_seq(int(n.payload))
                                except Exception:
                                    log.exception("event %s could not be passed on", n.payload)
                except Exception as exc:  # the database restarted or is unreachable: try again shortly
                    if self._closing.wait(1.0):
                        break
                    log.warning("listening for events on %s failed (%s); reconnecting", redact(self.url), exc)

        t = threading.Thread(target=run, name="facegate-events-listen", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self._closing.set()
        self._pool.close()
