"""Sealing in the SQLite gallery: names, source labels, vectors and crops under the gallery's key,
the keyed lookup keys of names, and the scrub of plain pages after sealing in place."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from facegate.errors import EncryptionError
from facegate.security.encryption import Sealer
from .common import name_key
from .names import rekeyed

log = logging.getLogger(__name__)


def _seal_names(cur: sqlite3.Cursor, sealer: Sealer) -> int:
    """Every person's name sealed and their lookup key hashed, in the caller's transaction; the count."""
    rows = cur.execute("SELECT id, name FROM people").fetchall()
    for pid, name in rows:
        cur.execute("UPDATE people SET name = ?, name_key = ? WHERE id = ?", (sealer.seal_text(name), sealer.blind(name_key(name)), pid))
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('names', 'sealed')")
    return len(rows)


def _seal_sources(cur: sqlite3.Cursor, sealer: Sealer) -> int:
    """Every face's source label (an enrolment photo's file name, which may hold the name) sealed, in
    the caller's transaction; the count."""
    rows = cur.execute("SELECT id, source FROM faces WHERE source IS NOT NULL").fetchall()
    for fid, source in rows:
        cur.execute("UPDATE faces SET source = ? WHERE id = ?", (sealer.seal_text(source), fid))
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('sources', 'sealed')")
    return len(rows)


class SealedColumns:
    """``Gallery``'s encryption check at open and its sealed columns read and written (``_sealer`` is
    the gallery's; ``_names`` its in-memory names)."""

    _db: sqlite3.Connection
    _sealer: Sealer
    _names: dict[int, str]
    data_dir: Path

    def _check_encryption(self, cur: sqlite3.Cursor) -> bool:
        """Refuse a missing or wrong key; True when this open sealed the names of a gallery encrypted
        before names were (its plain pages are then scrubbed, after the transaction)."""
        row = cur.execute("SELECT value FROM meta WHERE key = 'encryption'").fetchone()
        fp = self._sealer.fingerprint
        if row is not None:
            if fp is None:
                raise EncryptionError(
                    f"the gallery in {self.data_dir} is encrypted: set FACEGATE_ENCRYPTION_KEY to its key"
                )
            if row[0] != fp:
                raise EncryptionError(f"FACEGATE_ENCRYPTION_KEY is not the key the gallery in {self.data_dir} was sealed with")
            scrub = False
            if cur.execute("SELECT 1 FROM meta WHERE key = 'names' AND value = 'sealed'").fetchone() is None:
                n = _seal_names(cur, self._sealer)
                log.info("sealed the names of %d people (a gallery encrypted before names were)", n)
                scrub = True
            if cur.execute("SELECT 1 FROM meta WHERE key = 'sources' AND value = 'sealed'").fetchone() is None:
                n = _seal_sources(cur, self._sealer)
                log.info("sealed the source labels of %d faces (a gallery encrypted before they were)", n)
                scrub = True
            return scrub
        elif fp is not None:
            if cur.execute("SELECT 1 FROM faces UNION ALL SELECT 1 FROM people LIMIT 1").fetchone() is not None:
                raise EncryptionError(
                    f"the gallery in {self.data_dir} holds unencrypted faces: seal them first with "
                    "`facegate gallery encrypt` (with FACEGATE_ENCRYPTION_KEY set)"
                )
            cur.execute("INSERT INTO meta VALUES ('encryption', ?)", (fp,))
            cur.execute("INSERT INTO meta VALUES ('names', 'sealed')")
            cur.execute("INSERT INTO meta VALUES ('sources', 'sealed')")
        return False

    def _rekey_names(self, cur: sqlite3.Cursor) -> None:
        """Lookup keys made before names were compared by how they look are made again (once)."""
        if cur.execute("SELECT 1 FROM meta WHERE key = 'name_keys' AND value = '2'").fetchone() is not None:
            return
        rows = [(pid, self._sealer.open_text(n)) for pid, n in cur.execute("SELECT id, name FROM people").fetchall()]
        keys, clashes = rekeyed(rows, self._lookup_key)
        cur.execute("UPDATE people SET name_key = 'rekey#' || id")
        cur.executemany("UPDATE people SET name_key = ? WHERE id = ?", [(k, pid) for pid, k in keys])
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('name_keys', '2')")
        for pid, first in clashes:
            log.warning("person %d's name looks like person %d's (both enrolled before names were compared by look); "
                        "both are kept, new look-alikes are refused naming person %d", pid, first, first)

    def _scrub(self) -> None:
        """After sealing in place: the plain pages are overwritten (secure_delete); checkpoint and
        rebuild the file so that none survive."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _name(self, person_id: int, stored: str) -> str:
        """A person's name in the clear: the one search already keeps in memory (opened once, at load or
        write; ids are never reused, and a rename reaches it through the change log: readers catch up
        first), else opened from ``stored``, its column value (a person another process enrolled since
        this one last caught up)."""
        name = self._names.get(person_id)
        return name if name is not None else self._sealer.open_text(stored)

    def _seal_source(self, source: str | None) -> str | None:
        return None if source is None else self._sealer.seal_text(source)

    def _source(self, stored: str | None) -> str | None:
        """A face's source label in the clear (sealed with the names when encrypted)."""
        return None if stored is None else self._sealer.open_text(stored)

    def _lookup_key(self, name: str) -> str:
        """The ``name_key`` column's value for ``name``: its case-folded form, keyed-hashed when sealed."""
        return self._sealer.blind(name_key(name))
