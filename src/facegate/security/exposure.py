"""Who can reach a server, when it may serve without API keys, and which Host and Origin it answers.

"Open" (every route served without a key) is decided once, when a server starts: only when no
active key exists and it is bound to loopback. Nothing opens a network interface without a key (the
former ``--allow-no-auth`` is gone). From then on it only ever closes: the first key created turns
keys on for good, and revoking the last key leaves the server closed (every protected route answers
401) rather than open to whoever reaches it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading

log = logging.getLogger(__name__)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


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
    def decide(cls, *, keys_exist: bool, host: str) -> "OpenMode":
        """Open only without keys and only where no one else can connect."""
        if keys_exist:
            return cls(False)
        if is_loopback(host):
            log.warning("no API key exists: serving every route without one, to this machine only (%s); "
                        "the first key created (facegate keys create --role admin) turns keys on for good", host)
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


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header's (or an origin's netloc's) name, lower-cased without a trailing dot or IPv6
    brackets, and its port (None if none or not a number)."""
    value = value.strip().lower()
    port: int | None = None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        name, rest = (value[1:end], value[end + 1:]) if end > 0 else (value, "")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif value.count(":") == 1:
        name, _, p = value.partition(":")
        port = int(p) if p.isdigit() else -1
    else:
        name = value  # a name, or a bare IPv6 address
    return name.rstrip("."), port


class HostPolicy:
    """Which ``Host`` header values a server answers (against DNS rebinding: a hostile page on a name
    the attacker points at 127.0.0.1 sends that name as Host, and reads the answers as its own).

    Always: ``localhost``, every loopback address and the bind address; bound to every interface
    (0.0.0.0, ::), any IP address (a page cannot rebind an address, only a name). Beyond those, the
    ``allowed_hosts`` setting: comma-separated names or addresses, ``*`` for any. Ports do not matter.
    """

    def __init__(self, allowed: str, bind_host: str) -> None:
        listed = [split_host(h)[0] for h in allowed.split(",") if h.strip()]
        self.any_host = "*" in listed
        bind = split_host(bind_host)[0]
        bind_ip = _ip(bind)
        self.any_ip = bind_ip is not None and bind_ip.is_unspecified
        self.names = frozenset({"localhost", *(n for n in listed if n != "*")} | (set() if self.any_ip else {bind}))

    def describe(self) -> str:
        if self.any_host:
            return "any Host"
        return ", ".join([*sorted(self.names), "loopback addresses", *(["any IP address"] if self.any_ip else [])])

    def allows_host(self, header: str | None) -> bool:
        if self.any_host:
            return True
        if not header:
            return False
        name, port = split_host(header)
        if port == -1 or not name:
            return False
        if name in self.names:
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or self.any_ip)


def same_origin(origin: str, host_header: str | None) -> bool:
    """True if a browser's ``Origin`` (``scheme://host[:port]``) names the server it is sent to (``Host``).

    ``null`` (a sandboxed frame, a file) and anything malformed are foreign.
    """
    scheme, sep, netloc = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or not netloc or "/" in netloc or not host_header:
        return False
    default = 80 if scheme == "http" else 443
    o_name, o_port = split_host(netloc)
    h_name, h_port = split_host(host_header)
    if o_port == -1 or h_port == -1:
        return False
    # The Host of a request the browser sends to this origin carries the port unless it is the
    # scheme's default (behind a TLS proxy: https://name and Host 'name').
    return o_name == h_name and (o_port or default) == (h_port or default)
