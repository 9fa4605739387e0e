"""Refusals for requests a hostile web page can make a browser send (issue 19, finding 4).

- ``Host`` not one this server answers to: 400 (DNS rebinding: a page on a name the attacker points
  at 127.0.0.1 would otherwise read the answers as its own).
- A state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` is another site, another
  port or ``null``: 403. Browsers send ``Origin`` on every cross-origin POST, including the plain
  form and ``text/plain`` ones that need no CORS preflight; clients that are not browsers send none.

The first of FaceGate's refusals, before keys, limits or bodies: such a request costs nothing.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from facegate.security.exposure import HostPolicy, same_origin
from .limits import send_error

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class HostOriginMiddleware:
    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = None
        for name, value in scope.get("headers", []):
            if name == b"host" and host is None:
                host = value.decode("latin-1")
            elif name == b"origin" and origin is None:
                origin = value.decode("latin-1")
        if not self.policy.allows_host(host):
            shown = (host or "")[:100]
            await send_error(
                send, 400, "bad_host",
                f"this server does not answer to Host {shown!r}: it answers to {self.policy.describe()} "
                "(add a name to the allowed_hosts setting, FACEGATE_ALLOWED_HOSTS)",
                close=True,
            )
            return
        if origin is not None and scope["method"] in STATE_CHANGING and not same_origin(origin, host):
            await send_error(
                send, 403, "foreign_origin",
                f"a {scope['method']} from a page of another origin ({origin[:100]!r}) is refused: "
                "only FaceGate's own pages, or clients that send no Origin, may change anything",
            )
            return
        await self.app(scope, receive, send)
