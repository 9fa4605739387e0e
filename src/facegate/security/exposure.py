"""Who can reach a server, and when it may serve without API keys.

"Open" (every route served without a key) is decided once, when a server starts: only when no
active key exists and it is bound to loopback (or the operator passed ``--allow-no-auth``). From
then on it only ever closes: the first key created turns keys on for good, and revoking the last key
leaves the server closed (every protected route answers 401) rather than open to whoever reaches it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Only this machine can connect (a name other than localhost is treated as public)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OpenMode:
    """Whether a server serves protected routes without a key: decided at start, closed for good after.

    ``enforcing`` asks the key store whether an active key exists (a callable, so that this module
    knows nothing of where keys live).
    """

    def __init__(self, open_at_start: bool) -> None:
        self._open = open_at_start
        self._lock = threading.Lock()
        self._warned_no_key = False

    @classmethod
    def decide(cls, *, keys_exist: bool, host: str, allow_no_auth: bool) -> "OpenMode":
        """Open only without keys and only where no one else can connect (or the operator accepted the risk)."""
        if keys_exist:
            return cls(False)
        if is_loopback(host):
            log.warning("no API key exists: serving every route without one, to this machine only (%s); "
                        "the first key created (facegate keys create --role admin) turns keys on for good", host)
            return cls(True)
        if allow_no_auth:
            log.warning("no API key exists and --allow-no-auth was given: every route is open to whoever reaches %s", host)
            return cls(True)
        log.warning("no API key exists and %s is not loopback: every protected route answers 401 "
                    "until a key is created (facegate keys create --role admin)", host)
        return cls(False)

    @property
    def is_open(self) -> bool:
        return self._open

    def allows(self, enforcing) -> bool:
        """True if a request without a valid key may go on: open at start and no key created since.

        ``enforcing()``: does an active key exist now? Once it has, the server is closed for good.
        """
        if not self._open:
            return False
        if enforcing():
            with self._lock:
                if self._open:
                    self._open = False
                    log.warning("an API key now exists: every protected route needs one from now on, "
                                "also after the last key is revoked")
            return False
        return True

    def note_refusal(self, enforcing) -> None:
        """Say once (in the log) why a closed server with no active key refuses everything."""
        if enforcing():
            self._warned_no_key = False  # a key exists again: say it again if that one goes too
            return
        if self._warned_no_key:
            return
        with self._lock:
            if not self._warned_no_key:
                self._warned_no_key = True
                log.warning("no active API key: every protected route answers 401 until one is created "
                            "(facegate keys create --role admin); the server does not reopen")
