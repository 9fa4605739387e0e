"""Connection guard: header timeout, a cap per client address, and room kept for clients that finish their headers.

uvicorn has no header-read timeout, and its ``limit_concurrency`` counts every open connection: a thousand sockets
that never finish a request (or send nothing) made every request 503 for as long as they were held (issue 19,
finding 2). This is uvicorn's own HTTP protocol class (httptools when installed, else h11) with three additions:

* a connection that has not completed a request's headers within ``header_timeout_s`` of opening (or of its last
  response, on keep-alive) is closed;
* at most ``max_connections_per_ip`` connections per peer address (trusted proxies in ``forwarded_allow_ips``
  excepted); a new one beyond is closed at once;
* at most ``max_connections`` in all; at the cap, a new connection evicts the oldest one still waiting for its
  headers (a slow client), so a client that sends a whole request promptly is still served. Only when every open
  connection is busy with a request is the new one closed.

Settings reach worker processes (``--workers N``) through the environment, as the app's do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

_limits: dict[str, float] = {}
_per_ip: dict[str, int] = {}
_pending: "OrderedDict[Any, None]" = OrderedDict()  # connections waiting for headers, oldest first
_open: set = set()


_exempt: set[str] = set()  # trusted reverse proxies: every client arrives from them


def configure(header_timeout_s: float, max_connections_per_ip: int, max_connections: int, proxies: str = "") -> None:
    _exempt.clear()
    _exempt.update(p.strip() for p in proxies.split(",") if p.strip() and p.strip() != "*")
    _limits.update(
        header_timeout_s=float(header_timeout_s),
        max_connections_per_ip=int(max_connections_per_ip),
        max_connections=int(max_connections),
    )


def _load() -> dict[str, float]:
    if not _limits:
        from facegate.config import SETTINGS_ENV, Settings, settings_from_environment

        s = settings_from_environment() if os.environ.get(SETTINGS_ENV) else Settings()
        configure(s.header_timeout_s, s.max_connections_per_ip, s.max_connections, s.forwarded_allow_ips)
    return _limits


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit (at least ``wanted`` if allowed); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open files limit %d is below max_connections %d + files: raise `ulimit -n`", soft, wanted)
    return soft


class _Guard:
    """Mixed in before uvicorn's protocol class."""

    _ip: str | None = None
    _header_timer: asyncio.TimerHandle | None = None
    _armed_cycle: Any = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        lim = _load()
        client = getattr(self, "client", None)
        ip = client[0] if client else ""
        if ip not in _exempt and _per_ip.get(ip, 0) >= lim["max_connections_per_ip"]:
            transport.abort()
            return
        if len(_open) >= lim["max_connections"]:
            if _pending:  # evict the oldest connection still waiting for its headers
                oldest = next(iter(_pending))
                oldest._close("evicted")
            else:
                transport.abort()
                return
        self._ip = ip
        _per_ip[ip] = _per_ip.get(ip, 0) + 1
        _open.add(self)
        self._arm()

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self._disarm()
        if self._ip is not None:
            n = _per_ip.get(self._ip, 1) - 1
            if n > 0:
                _per_ip[self._ip] = n
            else:
                _per_ip.pop(self._ip, None)
            self._ip = None
            _open.discard(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._header_timer is not None and getattr(self, "cycle", None) is not self._armed_cycle:
            self._disarm()  # a request's headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        cycle = getattr(self, "cycle", None)
        if self._ip is not None and not self.transport.is_closing() and (cycle is None or cycle.response_complete):
            self._arm()  # keep-alive: the next request's headers are due within the timeout too

    def _arm(self) -> None:
        self._disarm()
        self._armed_cycle = getattr(self, "cycle", None)
        self._header_timer = self.loop.call_later(_load()["header_timeout_s"], self._close, "header timeout")
        _pending[self] = None

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        _pending.pop(self, None)

    def _close(self, why: str) -> None:
        self._disarm()
        if getattr(self, "cycle", None) is not self._armed_cycle:
            return  # headers arrived meanwhile
        if self.transport is not None and not self.transport.is_closing():
            log.debug("closing connection from %s: %s", self._ip, why)
            self.transport.abort()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools not installed
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


class GuardedHttpProtocol(_Guard, _Base):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol with the header timeout and connection caps above (``uvicorn.run(http=...)``)."""
