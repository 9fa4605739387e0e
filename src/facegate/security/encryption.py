"""Encryption at rest of face vectors, crops, names and source labels (optional), with a key from the environment.

Threat model: a copy of the data directory (a stolen disk, a backup, a leaked file) must not yield
anyone's face, nor the list of who is enrolled. Fernet (AES-128-CBC with HMAC-SHA256, from
``cryptography``) seals each vector, each crop, each name and each face's source label (an enrolment
photo's file name often holds the name); a wrong key fails loudly instead of
producing garbage. A name is found (and kept unique) through a keyed hash of its case-folded form
(HMAC-SHA256 under a key derived from the same key): equal names give equal hashes, which SQL can
index, while the hash shows nothing without the key. Not protected: times, counts and the audit log
(person ids and counts, no names), and anyone who can read the server's memory or environment, where
the key lives while it runs.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken

from facegate.errors import EncryptionError


def new_key() -> str:
    """A fresh key for ``FACEGATE_ENCRYPTION_KEY`` (32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode()


class Sealer:
    """Seals and opens blobs with one key; with no key, passes them through (plain galleries)."""

    def __init__(self, key: str | None) -> None:
        self._fernet: Fernet | None = None
        self.fingerprint: str | None = None
        self._name_key: bytes | None = None
        if key:
            try:
                self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
            except (ValueError, TypeError):
                raise EncryptionError(
                    "FACEGATE_ENCRYPTION_KEY is not a valid key (32 bytes, url-safe base64); make one with "
                    "`facegate gallery new-key`"
                ) from None
            # Identifies the key without revealing it, so a wrong key is named as such at open.
            self.fingerprint = hmac.new(key.encode(), b"facegate gallery key", hashlib.sha256).hexdigest()[:16]
            self._name_key = hmac.new(key.encode(), b"facegate name index", hashlib.sha256).digest()

    @property
    def active(self) -> bool:
        return self._fernet is not None

    def seal(self, data: bytes | None) -> bytes | None:
        if data is None or self._fernet is None:
            return data
        return self._fernet.encrypt(data)

    def open(self, data: bytes | None) -> bytes | None:
        if data is None or self._fernet is None:
            return data
        try:
            return self._fernet.decrypt(data)
        except InvalidToken:
            raise EncryptionError("a stored face or name could not be decrypted: wrong key, or the data is damaged") from None

    def seal_text(self, text: str) -> str:
        """A name as stored: a Fernet token (ASCII) with a key, else the text itself."""
        return text if self._fernet is None else self._fernet.encrypt(text.encode()).decode("ascii")

    def open_text(self, stored: str) -> str:
        if self._fernet is None:
            return stored
        return self.open(stored.encode("ascii")).decode()

    def blind(self, text: str) -> str:
        """The lookup form of a (case-folded) name: a keyed hash with a key, else the text itself."""
        if self._name_key is None:
            return text
        return hmac.new(self._name_key, text.encode(), hashlib.sha256).hexdigest()
