"""Encryption at rest of face vectors and crops (optional), with a key from the environment.

Threat model: a copy of the data directory (a stolen disk, a backup, a leaked file) must not yield
anyone's face. Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) seals each vector and
each crop; a wrong key fails loudly instead of producing garbage. Not protected: names, times and
the audit log (needed in the clear for lookups), and anyone who can read the server's memory or
environment, where the key lives while it runs.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken

from .errors import EncryptionError


def new_key() -> str:
    """A fresh key for ``FACEGATE_ENCRYPTION_KEY`` (32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode()


class Sealer:
    """Seals and opens blobs with one key; with no key, passes them through (plain galleries)."""

    def __init__(self, key: str | None) -> None:
        self._fernet: Fernet | None = None
        self.fingerprint: str | None = None
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
            raise EncryptionError("a stored face could not be decrypted: wrong key, or the data is damaged") from None
