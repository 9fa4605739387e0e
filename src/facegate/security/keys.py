"""API keys with roles, stored hashed in the gallery's database.

A key is ``fg_<id>_<secret>``: the id (public, 8 hex digits) finds the row, the secret (32 random
bytes) is checked against its SHA-256 in constant time. A fast hash is right here: the secret is
256 random bits, not a password, so there is nothing to brute-force and checking costs microseconds
per request. The plain key is shown once, when created, and stored nowhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from . import audit
from facegate.errors import KeyRequestError

Role = Literal["admin", "client", "viewer"]
#: viewer: reads the event log (events, their crops, the live stream) and nothing else (issue 21).
ROLES: tuple[str, ...] = ("admin", "client", "viewer")
#: What each role may do; admin includes client.
GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "client", "viewer"}),
    "client": frozenset({"client"}),
    "viewer": frozenset({"viewer"}),
}
PREFIX = "fg_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    name: str
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def secret_hash(secret: str) -> str:
    """What is stored of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, secret_hash(secret))


def new_secret(role: str, name: str) -> str:
    """A fresh secret for a key request, refused unless the role and label are acceptable (any backend)."""
    if role not in ROLES:
        raise KeyRequestError(f"role must be one of {', '.join(ROLES)}, not {role!r}", field="role")
    if len(name) > 100 or any(ord(c) < 32 for c in name):
        raise KeyRequestError("key name: at most 100 printable characters", field="name")
    return secrets.token_urlsafe(32)


def plain_key(key_id: str, secret: str) -> str:
    return f"{PREFIX}{key_id}_{secret}"


def is_last_admin(keys: "list[ApiKey]", key_id: str) -> bool:
    """True if ``key_id`` is the one active admin key among ``keys`` (revoking it leaves no one to administer)."""
    return [k.id for k in keys if k.active and k.role == "admin"] == [key_id]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not key.startswith(PREFIX):
        return None
    parts = key[len(PREFIX):].split("_", 1)
    if len(parts) != 2 or len(parts[0]) != 8 or not parts[1]:
        return None
    return parts[0], parts[1]


class KeyStore:
    """The keys of one data directory. Thread-safe; sees keys created by other processes at once."""

    def __init__(self, db_path: Path) -> None:
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(_SCHEMA)
            self._db.execute(audit.AUDIT_SCHEMA)
        self._version: tuple[int, int] | None = None
        self._active: dict[str, tuple[str, str]] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _refresh(self) -> None:
        """Reload the active keys when the database changed (one PRAGMA per check otherwise)."""
        dv = self._db.execute("PRAGMA data_version").fetchone()[0]
        total = self._db.execute("SELECT total_changes()").fetchone()[0]
        if (dv, total) != self._version:
            rows = self._db.execute("SELECT id, role, secret_sha256 FROM api_keys WHERE revoked_at IS NULL").fetchall()
            self._active = {r[0]: (r[1], r[2]) for r in rows}
            self._version = (dv, total)

    def create(self, role: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key; returns its record and the plain key (shown once, never stored)."""
        secret = new_secret(role, name)
        with self._lock:
            while True:
                kid = secrets.token_hex(4)
                if self._db.execute("SELECT 1 FROM api_keys WHERE id = ?", (kid,)).fetchone() is None:
                    break
            now = _now()
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT INTO api_keys (id, role, name, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                    (kid, role, name, secret_hash(secret), now),
                )
                audit.record(cur, audit.KEY_CREATE, None, key=kid, role=role)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return ApiKey(kid, role, name, now, None), plain_key(kid, secret)

    def revoke(self, key_id: str) -> ApiKey:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                n = cur.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_now(), key_id)
                ).rowcount
                if n:
                    audit.record(cur, audit.KEY_REVOKE, None, key=key_id)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        found = [k for k in self.list() if k.id == key_id]
        if not found:
            raise KeyRequestError(f"no key with id {key_id!r}", field="key_id")
        return found[0]

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute("SELECT id, role, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKey(*r) for r in rows]

    def audit_log(self, limit: int = 100, before: int | None = None) -> list[audit.AuditEntry]:
        """The audit trail kept in the same database (newest first)."""
        with self._lock:
            return audit.read(self._db, limit, before)

    def enforcing(self) -> bool:
        """True once any active key exists: from then on every protected route needs a key."""
        with self._lock:
            self._refresh()
            return bool(self._active)

    def check(self, key: str) -> tuple[str, str] | None:
        """(key id, role) of a valid, active key, else None."""
        parsed = parse(key)
        if parsed is None:
            return None
        kid, secret = parsed
        with self._lock:
            self._refresh()
            found = self._active.get(kid)
        if found is None:
            return None
        role, digest = found
        return (kid, role) if matches(digest, secret) else None
