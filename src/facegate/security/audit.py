"""Who did what to the gallery, and when: the audit trail's vocabulary and its request-scoped actor.

The actor is a context variable so that the core records it without knowing where a request came
from: the API sets it per request (``key:<id> ip:<addr>``), the CLI to ``cli:<user>``. Worker
threads started through anyio inherit it. Audit entries hold ids, roles, times and addresses —
never a name, an image or a vector, so forgetting a person leaves nothing of them in the log.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone

#: The acting principal of the current request or command.
current_actor: ContextVar[str] = ContextVar("facegate_actor", default="unknown")

# Actions recorded.
ENROLL = "enroll"
ADD_FACES = "add_faces"
DELETE = "delete"
DELETE_FACE = "delete_face"
RENAME = "rename"
REEMBED = "reembed"
ENCRYPT = "encrypt"
EXPORT = "export"
IMPORT = "import"
KEY_CREATE = "key_create"
KEY_REVOKE = "key_revoke"
# Actions counted (``Tally``): one entry per actor and action per window, with a count.
CROP_READ = "crop_read"
LIST_PEOPLE = "list_people"
AUTH_FAILED = "auth_failed"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    action: str
    person_id: int | None
    detail: dict


def cli_actor() -> str:
    """The actor for commands run on the server's machine."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = "unknown"
    return f"cli:{user}"


#: The audit table lives in the gallery's database, so an entry commits with the write it records.
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    person_id INTEGER,
    detail TEXT NOT NULL DEFAULT '{}'
)
"""


def record(cur: sqlite3.Cursor, action: str, person_id: int | None = None, **detail: object) -> None:
    """Append an entry inside the caller's transaction."""
    cur.execute(
        "INSERT INTO audit (at, actor, action, person_id, detail) VALUES (?, ?, ?, ?, ?)",
        (datetime.now(timezone.utc).isoformat(timespec="milliseconds"), current_actor.get(), action, person_id, json.dumps(detail)),
    )


def read(con: sqlite3.Connection, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
    """Newest first; ``before`` pages back from an entry id."""
    rows = con.execute(
        "SELECT id, at, actor, action, person_id, detail FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
        (before if before is not None else 2**62, limit),
    ).fetchall()
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


#: A window's entry lists at most this many items (face ids); ``count`` still counts them all.
TALLY_ITEMS = 20
#: Actor of the counts of actors beyond ``Tally.max_open`` in one window (a flood from many addresses).
TALLY_OVERFLOW = "others"


@dataclass
class _Window:
    started: float
    since: str
    count: int = 0  # events not yet written
    items: list = field(default_factory=list)


class Tally:
    """Reads and refused requests, audited without letting a flood fill the log (issue 19, finding 10).

    Per (actor, action) and window of ``window_s`` seconds: the first event is written at once (an entry
    with ``count`` 1), the rest are counted in memory and written as one entry when the window closes,
    when the log is read, or when the server stops; the counts of an actor's entries add up to its
    events. At most ``max_open`` actors per window get their own entries; the rest are counted together
    under ``TALLY_OVERFLOW``. ``note`` and ``drain`` return what is to be written (``write`` writes it):
    counting never touches the database. Thread-safe.
    """

    def __init__(self, window_s: float = 60.0, max_open: int = 1000, clock=time.monotonic) -> None:
        self.window_s = window_s
        self.max_open = max_open
        self.clock = clock
        self._open: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()

    def note(self, actor: str, action: str, item: int | None = None) -> list[tuple[str, str, dict]]:
        """Count one event; the entries to write now (actor, action, detail), often none."""
        now = self.clock()
        with self._lock:
            out = self._expired(now)
            key = (actor, action)
            if key not in self._open and len(self._open) >= self.max_open:
                key = (TALLY_OVERFLOW, action)
            w = self._open.get(key)
            if w is None:
                self._open[key] = _Window(now, _now())
                out.append((key[0], action, {"count": 1, "window_s": self.window_s} | ({"items": [item]} if item is not None else {})))
                return out
            w.count += 1
            if item is not None and len(w.items) < TALLY_ITEMS:
                w.items.append(item)
            return out

    def drain(self, everything: bool = True) -> list[tuple[str, str, dict]]:
        """The counts not yet written: of every window (``everything``) or of the closed ones only."""
        now = self.clock()
        with self._lock:
            if not everything:
                return self._expired(now)
            out = []
            for (actor, action), w in self._open.items():
                if w.count:
                    out.append(self._entry(actor, action, w))
                    w.count, w.items = 0, []
            return out

    def _expired(self, now: float) -> list[tuple[str, str, dict]]:
        out = []
        for key in [k for k, w in self._open.items() if now - w.started >= self.window_s]:
            w = self._open.pop(key)
            if w.count:
                out.append(self._entry(*key, w))
        return out

    def _entry(self, actor: str, action: str, w: _Window) -> tuple[str, str, dict]:
        detail: dict = {"count": w.count, "window_s": self.window_s, "since": w.since}
        if w.items:
            detail["items"] = list(w.items)
        return actor, action, detail


def write(gallery, entries: list[tuple[str, str, dict]]) -> None:
    """Write ``Tally`` entries through ``gallery.record`` (blocking: call it from a worker thread)."""
    for actor, action, detail in entries:
        token = current_actor.set(actor)
        try:
            gallery.record(action, None, **detail)
        finally:
            current_actor.reset(token)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
