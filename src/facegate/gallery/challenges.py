"""Liveness challenges stored in the gallery's database (SQLite here, ``PgChallengeStore`` for PostgreSQL).

Every server process sharing a gallery (``facegate serve --workers N`` on one SQLite file, several
servers on one PostgreSQL database) sees the same challenges: one may be asked of one process and
answered on another. What must hold whichever process answers is decided by the database, in one
statement or transaction: a challenge is spent by a conditional ``UPDATE ... RETURNING`` (two answers
at once: exactly one gets the row), the open-challenge bounds are counted and the row inserted in one
transaction (SQLite's write lock; an advisory lock on PostgreSQL), a frame hash is remembered by an
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (the one that inserted it is first; any other sent it again).

A row is kept after its answer (until ``forget_at``) so that a second answer hears "already answered"
and a late one "expired". The face vector of a passed challenge (what an enrolment must match) is
sealed with the gallery's key when encryption at rest is on, and cleared when the enrolment spends it.
Policy (the random actions, the errors, the lifetimes) is ``facegate.security.challenges``'s.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facegate.security.encryption import Sealer
from .schema import connect, write_tx
from .sqltext import SqlText

_SCHEMA = """
CREATE TABLE IF NOT EXISTS challenges (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    bucket TEXT NOT NULL,
    actions TEXT NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    forget_at REAL NOT NULL,
    vector BLOB,
    passed_until REAL
);
CREATE INDEX IF NOT EXISTS challenges_open ON challenges(state, expires_at);
CREATE INDEX IF NOT EXISTS challenges_bucket ON challenges(bucket, state, expires_at);
CREATE INDEX IF NOT EXISTS challenges_forget ON challenges(forget_at);
CREATE TABLE IF NOT EXISTS challenge_frames (sha256 TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS challenge_frames_seen ON challenge_frames(seen_at)
"""

#: A challenge row's life: open (askable), answered (spent by an answer), passed (spent, and an enrolment
#: may spend it once more), spent (enrolled with).
State = Literal["open", "answered", "passed", "spent"]


@dataclass(frozen=True)
class StoredChallenge:
    id: str
    owner: str
    actions: tuple[str, ...]
    expires_at: float


class ChallengeSQL(SqlText):
    """The statements both backends share (``?`` placeholders; PostgreSQL's store rewrites them).

    Subclasses give ``_tx`` (one write transaction, yielding something with ``execute``) and may lock
    in ``_lock_new`` (PostgreSQL: so that two servers never both take the last open slot).
    """

    def _lock_new(self, cur) -> None:
        """Serialise ``add``'s count and insert between servers (SQLite's write lock already does)."""

    def _may_purge(self, cur) -> bool:
        """Whether this transaction should purge (PostgreSQL: one server at a time)."""
        return True

    def add(self, c: StoredChallenge, bucket: str, *, now: float, forget_at: float, max_open: int, max_open_per_key: int) -> str | None:
        """Store an open challenge unless a bound is reached: None when stored, else "key" or "total"."""
        with self._tx() as cur:
            self._lock_new(cur)
            if self._x(cur, "SELECT COUNT(*) FROM challenges WHERE state = 'open' AND expires_at >= ?", (now,)).fetchone()[0] >= max_open:
                return "total"
            n = self._x(
                cur, "SELECT COUNT(*) FROM challenges WHERE bucket = ? AND state = 'open' AND expires_at >= ?", (bucket, now)
            ).fetchone()[0]
            if n >= max_open_per_key:
                return "key"
            self._x(
                cur,
                "INSERT INTO challenges (id, owner, bucket, actions, expires_at, state, forget_at) VALUES (?, ?, ?, ?, ?, 'open', ?)",
                (c.id, c.owner, bucket, ",".join(c.actions), c.expires_at, forget_at),
            )
        return None

    def take(self, challenge_id: str, owner: str, *, now: float, forget_at: float) -> tuple[str, StoredChallenge | None]:
        """Spend an open, unexpired challenge of ``owner``: ("taken", it), or why not: "unknown" (none, or
        another owner's), "expired" (still open, too late), "used" (already answered)."""
        with self._tx() as cur:
            row = self._x(
                cur,
                "UPDATE challenges SET state = 'answered', forget_at = ? "
                "WHERE id = ? AND owner = ? AND state = 'open' AND expires_at >= ? RETURNING actions, expires_at",
                (forget_at, challenge_id, owner, now),
            ).fetchone()
            if row is not None:
                return "taken", StoredChallenge(challenge_id, owner, tuple(row[0].split(",")), float(row[1]))
            row = self._x(cur, "SELECT state FROM challenges WHERE id = ? AND owner = ?", (challenge_id, owner)).fetchone()
        if row is None:
            return "unknown", None
        return ("expired" if row[0] == "open" else "used"), None

    def mark_passed(self, challenge_id: str, owner: str, vector: bytes, until: float) -> None:
        """Let one enrolment spend this answered challenge until ``until`` (the face's vector, sealed)."""
        with self._tx() as cur:
            self._x(
                cur,
                "UPDATE challenges SET state = 'passed', vector = ?, passed_until = ? WHERE id = ? AND owner = ? AND state = 'answered'",
                (self._sealer.seal(vector), until, challenge_id, owner),
            )

    def spend_passed(self, challenge_id: str, owner: str) -> tuple[bytes, float] | None:
        """Spend a passed challenge of ``owner`` (once, whichever process asks): its vector and until when it was
        spendable (the caller judges lateness), or None when there is no such unspent challenge."""
        with self._tx() as cur:
            row = self._x(
                cur,
                "UPDATE challenges SET state = 'spent' WHERE id = ? AND owner = ? AND state = 'passed' RETURNING vector, passed_until",
                (challenge_id, owner),
            ).fetchone()
            if row is not None:  # RETURNING gives the new row: the vector is cleared in a second statement
                self._x(cur, "UPDATE challenges SET vector = NULL WHERE id = ?", (challenge_id,))
        if row is None or row[0] is None:
            return None
        return self._sealer.open(bytes(row[0])), float(row[1])

    def remember_frames(self, hashes: Sequence[str], now: float) -> set[str]:
        """Remember these frame hashes as seen now; those some earlier call had already remembered (of any
        process; a purged one counts as new). Two answers racing with one frame: exactly one sees it new."""
        old = set()
        with self._tx() as cur:
            for h in sorted(set(hashes)):  # one order for every transaction: no deadlock between two answers
                if self._x(cur, "INSERT INTO challenge_frames (sha256, seen_at) VALUES (?, ?) ON CONFLICT (sha256) DO NOTHING RETURNING sha256", (h, now)).fetchone() is None:
                    old.add(h)
                    self._x(cur, "UPDATE challenge_frames SET seen_at = ? WHERE sha256 = ?", (now, h))
        return old

    def purge(self, *, now: float, frames_before: float, keep_max: int) -> int:
        """Delete challenges past ``forget_at`` and frame hashes seen before ``frames_before``, and clear passed
        faces' vectors past their use; beyond ``keep_max`` rows in either table, the oldest go too (bounded
        whatever the rate). The rows deleted."""
        n = 0
        with self._tx() as cur:
            if not self._may_purge(cur):
                return 0
            n += self._x(cur, "DELETE FROM challenges WHERE forget_at < ?", (now,)).rowcount
            # a passed face never enrolled with: its vector goes once it can no longer be spent
            self._x(cur, "UPDATE challenges SET vector = NULL, state = 'spent' WHERE vector IS NOT NULL AND passed_until < ?", (now,))
            n += self._x(cur, "DELETE FROM challenge_frames WHERE seen_at < ?", (frames_before,)).rowcount
            for table, order, key in (("challenges", "forget_at", "id"), ("challenge_frames", "seen_at", "sha256")):
                row = self._x(cur, f"SELECT {order} FROM {table} ORDER BY {order} DESC LIMIT 1 OFFSET ?", (int(keep_max),)).fetchone()
                if row is not None:
                    n += self._x(cur, f"DELETE FROM {table} WHERE {order} <= ?", (row[0],)).rowcount
        return n

    def count(self) -> tuple[int, int]:
        """(challenge rows, frame hashes) stored."""
        with self._tx() as cur:
            a = self._x(cur, "SELECT COUNT(*) FROM challenges").fetchone()[0]
            b = self._x(cur, "SELECT COUNT(*) FROM challenge_frames").fetchone()[0]
        return int(a), int(b)


class SqliteChallengeStore(ChallengeSQL):
    """Challenges in the embedded gallery's SQLite file (``:memory:``: one process's, for tests), on a
    connection of its own; ``BEGIN IMMEDIATE`` makes every call one writer at a time across processes."""

    def __init__(self, db_path: Path | str, encryption_key: str | None = None) -> None:
        self._sealer = Sealer(encryption_key)
        self._db = connect(db_path if str(db_path) == ":memory:" else Path(db_path))
        self._lock = threading.Lock()
        with self._tx() as cur:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with write_tx(self._db, self._lock) as cur:
            yield cur

    def close(self) -> None:
        with self._lock:
            self._db.close()


def clear_passed_faces(cur: sqlite3.Cursor) -> int:
    """Drop the face vectors of passed challenges, in the caller's transaction (``facegate gallery encrypt``:
    written in the clear before the key, they are not worth sealing: an enrolment may spend one for seconds)."""
    if cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'challenges'").fetchone() is None:
        return 0
    return cur.execute("UPDATE challenges SET vector = NULL, state = 'spent' WHERE vector IS NOT NULL").rowcount
