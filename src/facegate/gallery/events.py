"""The event log and the webhooks, stored in the gallery's database (SQLite here; ``pg_events`` for PostgreSQL).

An event names a person by id with ``ON DELETE CASCADE``: deleting the person deletes their events in
the same transaction (and the gallery's WAL purge that follows empties the log of them), so a deleted
person's name and crops are gone from events too. Names, crops and webhook secrets are sealed with the
gallery's key when encryption at rest is on. The store has its own connection, so an event written
never waits on (nor holds up) the gallery's lock that searches take.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from facegate.events.model import Event
from facegate.security.encryption import Sealer
from .schema import connect, write_tx
from .sqltext import SqlText

log = logging.getLogger(__name__)

#: Delivery log rows kept per webhook (the oldest go first).
DELIVERIES_KEEP = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    started_at REAL NOT NULL,
    decided_at REAL NOT NULL,
    status TEXT NOT NULL,
    person_id INTEGER REFERENCES people(id) ON DELETE CASCADE,
    name TEXT,
    similarity REAL,
    track_id INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    identified INTEGER NOT NULL,
    liveness REAL,
    decision TEXT,
    crop BLOB
);
CREATE INDEX IF NOT EXISTS events_person ON events(person_id);
CREATE INDEX IF NOT EXISTS events_camera ON events(camera, seq);
CREATE INDEX IF NOT EXISTS events_decided ON events(decided_at);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    filters TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_hook ON webhook_deliveries(webhook_id, seq);
"""

_COLUMNS = "seq, id, camera, started_at, decided_at, status, person_id, name, similarity, track_id, frames, identified, liveness, decision"


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: ``seq`` orders the log (newest highest) and is the pagination cursor."""

    seq: int
    event: Event
    has_crop: bool


@dataclass(frozen=True)
class Webhook:
    id: str
    url: str
    secret: str
    #: Which events it gets: lists of statuses, decisions and cameras (empty: all).
    statuses: tuple[str, ...]
    decisions: tuple[str, ...]
    cameras: tuple[str, ...]
    created_at: float

    def wants(self, event: Event) -> bool:
        return (
            (not self.statuses or event.status in self.statuses)
            and (not self.decisions or event.decision in self.decisions)
            and (not self.cameras or event.camera in self.cameras)
        )


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    event_id: str
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_ms: float


def seal_event_rows(cur: sqlite3.Cursor, sealer: Sealer) -> int:
    """Seal the event log's names and crops and the webhooks' secrets stored in the clear, in the
    caller's transaction (``facegate gallery encrypt``, or the first open with a key); the rows sealed.
    Marked in ``meta`` so that it happens once."""
    if not sealer.active or cur.execute("SELECT 1 FROM meta WHERE key = 'events' AND value = 'sealed'").fetchone():
        return 0
    n = 0
    if cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone():
        for seq, name, crop in cur.execute("SELECT seq, name, crop FROM events").fetchall():
            cur.execute(
                "UPDATE events SET name = ?, crop = ? WHERE seq = ?",
                (None if name is None else sealer.seal_text(name), sealer.seal(crop), seq),
            )
            n += 1
        for hook, secret in cur.execute("SELECT id, secret FROM webhooks").fetchall():
            cur.execute("UPDATE webhooks SET secret = ? WHERE id = ?", (sealer.seal_text(secret), hook))
            n += 1
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('events', 'sealed')")
    return n


class EventSQL(SqlText):
    """The queries both backends share (``?`` placeholders; the PostgreSQL store rewrites them).

    Subclasses give ``_tx`` (one transaction, yielding something with ``execute``) and ``_read``.
    """

    def _after_add(self, cur, seq: int) -> None:
        """Hook inside the insert's transaction (PostgreSQL: NOTIFY the other servers)."""

    # ------------------------------------------------------------------ events
    def add(self, event: Event) -> int | None:
        """Store ``event``; its ``seq``, or None when the person it names was deleted meanwhile (dropped:
        a deleted person's events are gone, even one decided just before the delete)."""
        e = event
        with self._tx() as cur:
            if e.person_id is not None and self._x(cur, "SELECT 1 FROM people WHERE id = ?", (e.person_id,)).fetchone() is None:
                return None
            row = self._x(
                cur,
                "INSERT INTO events (id, camera, started_at, decided_at, status, person_id, name, similarity, track_id, frames, "
                "identified, liveness, decision, crop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                (
                    e.id, e.camera, e.started_at, e.decided_at, e.status, e.person_id,
                    None if e.name is None else self._sealer.seal_text(e.name),
                    e.similarity, e.track_id, e.frames, e.identified, e.liveness, e.decision, self._sealer.seal(e.crop_jpeg),
                ),
            ).fetchone()
            seq = int(row[0])
            self._after_add(cur, seq)
        return seq

    def _event(self, r) -> StoredEvent:
        ev = Event(
            camera=r[2], started_at=float(r[3]), decided_at=float(r[4]), status=r[5], person_id=r[6],
            name=None if r[7] is None else self._sealer.open_text(r[7]), similarity=r[8], track_id=int(r[9]),
            frames=int(r[10]), identified=int(r[11]), liveness=r[12], decision=r[13], id=r[1],
        )
        return StoredEvent(int(r[0]), ev, bool(r[14]))

    def list(
        self,
        *,
        camera: str | None = None,
        person_id: int | None = None,
        status: str | None = None,
        since: float | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> list[StoredEvent]:
        """Events matching every filter given, newest first (``after``: oldest first, for catching up a stream)."""
        where, params = [], []
        for clause, value in (
            ("camera = ?", camera), ("person_id = ?", person_id), ("status = ?", status),
            ("decided_at >= ?", since), ("seq < ?", before), ("seq > ?", after),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {_COLUMNS}, crop IS NOT NULL FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'ASC' if after is not None else 'DESC'} LIMIT ?"
        with self._read() as cur:
            rows = self._x(cur, sql, (*params, int(limit))).fetchall()
        return [self._event(r) for r in rows]

    def get(self, event_id: str) -> StoredEvent | None:
        with self._read() as cur:
            r = self._x(cur, f"SELECT {_COLUMNS}, crop IS NOT NULL FROM events WHERE id = ?", (event_id,)).fetchone()
        return self._event(r) if r else None

    def get_seq(self, seq: int) -> StoredEvent | None:
        with self._read() as cur:
            r = self._x(cur, f"SELECT {_COLUMNS}, crop IS NOT NULL FROM events WHERE seq = ?", (seq,)).fetchone()
        return self._event(r) if r else None

    def crop(self, event_id: str) -> bytes | None:
        with self._read() as cur:
            r = self._x(cur, "SELECT crop FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if r is None or r[0] is None else self._sealer.open(bytes(r[0]))

    def count(self) -> int:
        with self._read() as cur:
            return int(self._x(cur, "SELECT COUNT(*) FROM events").fetchone()[0])

    def prune(self, keep_days: float | None, keep_max: int | None, now: float | None = None) -> int:
        """Delete events older than ``keep_days`` and beyond the newest ``keep_max``; the count deleted."""
        n = 0
        with self._tx() as cur:
            if keep_days is not None:
                cutoff = (now if now is not None else time.time()) - keep_days * 86400.0
                n += self._x(cur, "DELETE FROM events WHERE decided_at < ?", (cutoff,)).rowcount
            if keep_max is not None:
                r = self._x(cur, "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (int(keep_max),)).fetchone()
                if r is not None:
                    n += self._x(cur, "DELETE FROM events WHERE seq <= ?", (int(r[0]),)).rowcount
            for (hook,) in self._x(cur, "SELECT id FROM webhooks").fetchall():
                r = self._x(
                    cur, "SELECT seq FROM webhook_deliveries WHERE webhook_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?", (hook, DELIVERIES_KEEP)
                ).fetchone()
                if r is not None:
                    self._x(cur, "DELETE FROM webhook_deliveries WHERE webhook_id = ? AND seq <= ?", (hook, int(r[0])))
        return n

    # ------------------------------------------------------------------ webhooks
    def add_webhook(self, url: str, secret: str, statuses: Sequence[str], decisions: Sequence[str], cameras: Sequence[str]) -> Webhook:
        hook = Webhook(uuid.uuid4().hex[:16], url, secret, tuple(statuses), tuple(decisions), tuple(cameras), time.time())
        filters = json.dumps({"statuses": hook.statuses, "decisions": hook.decisions, "cameras": hook.cameras})
        with self._tx() as cur:
            self._x(
                cur, "INSERT INTO webhooks (id, url, secret, filters, created_at) VALUES (?, ?, ?, ?, ?)",
                (hook.id, url, self._sealer.seal_text(secret), filters, hook.created_at),
            )
        return hook

    def _hook(self, r) -> Webhook:
        f = json.loads(r[3])
        return Webhook(r[0], r[1], self._sealer.open_text(r[2]), tuple(f["statuses"]), tuple(f["decisions"]), tuple(f["cameras"]), float(r[4]))

    def webhooks(self) -> list[Webhook]:
        with self._read() as cur:
            rows = self._x(cur, "SELECT id, url, secret, filters, created_at FROM webhooks ORDER BY created_at, id").fetchall()
        return [self._hook(r) for r in rows]

    def webhook(self, hook_id: str) -> Webhook | None:
        with self._read() as cur:
            r = self._x(cur, "SELECT id, url, secret, filters, created_at FROM webhooks WHERE id = ?", (hook_id,)).fetchone()
        return self._hook(r) if r else None

    def delete_webhook(self, hook_id: str) -> bool:
        with self._tx() as cur:
            self._x(cur, "DELETE FROM webhook_deliveries WHERE webhook_id = ?", (hook_id,))
            return self._x(cur, "DELETE FROM webhooks WHERE id = ?", (hook_id,)).rowcount > 0

    def add_delivery(self, d: Delivery) -> None:
        with self._tx() as cur:
            if self._x(cur, "SELECT 1 FROM webhooks WHERE id = ?", (d.webhook_id,)).fetchone() is None:
                return  # deleted while delivering
            self._x(
                cur,
                "INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, at, status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (d.webhook_id, d.event_id, d.attempt, d.at, d.status_code, d.error, d.duration_ms),
            )

    def deliveries(self, hook_id: str, limit: int = 100) -> list[Delivery]:
        with self._read() as cur:
            rows = self._x(
                cur,
                "SELECT webhook_id, event_id, attempt, at, status_code, error, duration_ms FROM webhook_deliveries "
                "WHERE webhook_id = ? ORDER BY seq DESC LIMIT ?",
                (hook_id, int(limit)),
            ).fetchall()
        return [Delivery(r[0], r[1], int(r[2]), float(r[3]), r[4], r[5], float(r[6])) for r in rows]


class SqliteEventStore(EventSQL):
    """The event log in the embedded gallery's SQLite file, on a connection of its own."""

    #: Events written by another server reach this one's stream only through PostgreSQL.
    notifies = False

    def __init__(self, db_path: Path, encryption_key: str | None = None) -> None:
        self._sealer = Sealer(encryption_key)
        self._db = connect(Path(db_path))
        self._lock = threading.Lock()
        with self._tx() as cur:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            # events stored before the gallery had a key (sealed in place by `facegate gallery encrypt`, or here)
            sealed = seal_event_rows(cur, self._sealer)
        if sealed:
            log.info("sealed %d event rows and webhook secrets stored before the gallery was encrypted", sealed)
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.execute("VACUUM")  # no plain page left behind
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with write_tx(self._db, self._lock) as cur:
            yield cur

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._db.cursor()

    def prune(self, keep_days: float | None, keep_max: int | None, now: float | None = None) -> int:
        n = super().prune(keep_days, keep_max, now)
        if n:
            with self._lock:  # the pruned rows' old pages (crops) out of the -wal file, if no reader holds it
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.OperationalError:
                    pass
        return n

    def close(self) -> None:
        with self._lock:
            self._db.close()
