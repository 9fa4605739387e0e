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
from contextvars import ContextVar
from dataclasses import dataclass
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
