"""Who may call what: API keys with roles, rate limits, and the audit actor — before any body is read.

A middleware rather than per-route dependencies: FastAPI reads a route's body before its
dependencies run, so a dependency would let anyone without a key make the server read (and count
against its memory) a 10 MB body before being told no. The role each route needs is decided here,
in one table, deny-by-default: every path under ``/v1`` and every non-GET needs a key, unless listed.
"""

from __future__ import annotations

import logging
import math
import re
import time

import anyio

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from facegate.security import audit
from facegate.security.exposure import OpenMode
from facegate.security.keys import GRANTS, KeyStore
from .limits import connection_id, hold_if_impatient, send_error

#: (method, path) -> role. Paths not listed: GET/HEAD outside /v1 and /metrics are public (the web
#: app's pages and assets, /docs, /healthz); everything else needs an admin key.
#: A client key may also read /metrics (counts and latencies, no faces): Prometheus needs no admin key.
CLIENT_ROUTES = frozenset(
    {("POST", "/predict"), ("POST", "/v1/identify"), ("POST", "/v1/verify"), ("POST", "/v1/liveness"), ("GET", "/metrics")}
)
PUBLIC_PREFIX_EXCEPTIONS = ("/v1/", "/metrics")
#: Reads of the event log (issue 21): a viewer key (or admin) reads them; a client key cannot.
VIEWER_PREFIX = "/v1/events"
#: The cameras' state and snapshots (issue 21, the Cameras page): a viewer key reads them too.
CAMERAS_PREFIX = "/v1/cameras"
UNLIMITED = frozenset({"/healthz"})
#: A shared counter store (Redis) must answer within this, or the request goes on without its limits.
STORAGE_TIMEOUT_S = 0.25
#: After the store failed, limits are off for this long before it is tried again.
STORAGE_RETRY_S = 5.0

log = logging.getLogger(__name__)


#: A server with no open mode set (none started) serves no one without a key.
_CLOSED = OpenMode(False)


#: The active liveness challenge (api.challenges): a client key asks for one and answers it.
_CHALLENGE_ANSWER = re.compile(r"/v1/challenges/[^/]{1,64}/answer")


def required_role(method: str, path: str) -> str | None:
    """The role a request needs, or None for a public one."""
    if (method, path) in CLIENT_ROUTES:
        return "client"
    if method in ("GET", "HEAD") and (path == VIEWER_PREFIX or path.startswith(VIEWER_PREFIX + "/")):
        return "viewer"
    if method in ("GET", "HEAD") and (path == CAMERAS_PREFIX or path.startswith(CAMERAS_PREFIX + "/")):
        return "viewer"
    if method == "POST" and (path == "/v1/challenges" or _CHALLENGE_ANSWER.fullmatch(path)):
        return "client"
    if method in ("GET", "HEAD") and not (path == "/v1" or path.startswith(PUBLIC_PREFIX_EXCEPTIONS)):
        return None
    return "admin"


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key from ``Authorization: Bearer ...`` or ``X-API-Key``."""
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


class RateLimits:
    """Moving-window counters per key, per address, and per address for failed authentications.

    In ``storage``: ``memory://`` (one process) or ``redis://host:port`` (shared by every worker and
    server using it). A counter store that fails or does not answer within ``STORAGE_TIMEOUT_S``
    lets requests through (they still need their key) and is left alone for ``retry_s``: a school
    gate keeps opening while its Redis restarts, and no request waits on a dead host. The counters
    are asyncio ones (limits' ``async+`` stores, redis-py's asyncio client): the event loop serves
    other requests while a count goes to Redis and back.
    """

    def __init__(self, per_key: str, per_ip: str, auth_failures: str, storage: str, *, retry_s: float = STORAGE_RETRY_S) -> None:
        self.limiter = MovingWindowRateLimiter(_storage(storage))
        self.storage = storage.split("://", 1)[0].removeprefix("async+")
        self.per_key = parse_many(per_key) if per_key else []
        self.per_ip = parse_many(per_ip) if per_ip else []
        self.auth_failures = parse_many(auth_failures) if auth_failures else []
        self.retry_s = retry_s
        self._down_until = 0.0

    async def _hit(self, items: list[RateLimitItem], *ids: str) -> float | None:
        """Count one request; seconds to wait if over a limit, else None."""
        if not items or time.monotonic() < self._down_until:
            return None
        try:
            for item in items:
                if not await self.limiter.hit(item, *ids):
                    reset = (await self.limiter.get_window_stats(item, *ids)).reset_time
                    return max(1.0, reset - time.time())
        except StorageError as exc:
            self._down_until = time.monotonic() + self.retry_s
            log.warning("rate limits off for %.0f s: the %s counter store failed (%s)", self.retry_s, self.storage, exc)
        return None

    async def key(self, key_id: str) -> float | None:
        return await self._hit(self.per_key, "key", key_id)

    async def ip(self, addr: str) -> float | None:
        return await self._hit(self.per_ip, "ip", addr)

    async def failed_auth(self, addr: str) -> float | None:
        return await self._hit(self.auth_failures, "authfail", addr)


def _storage(uri: str):
    """The asyncio counter store for ``uri`` (``memory://``, ``redis://...``), with storage errors raised
    as ``StorageError`` and short Redis timeouts."""
    uri = uri if uri.startswith("async+") else "async+" + uri
    options: dict = {"wrap_exceptions": True}
    if uri.split("://", 1)[0] in ("async+redis", "async+rediss", "async+redis+unix"):
        options |= {"implementation": "redispy", "socket_timeout": STORAGE_TIMEOUT_S, "socket_connect_timeout": STORAGE_TIMEOUT_S}
    return storage_from_string(uri, **options)


class AuthMiddleware:
    """Authenticates, authorises and rate-limits each request, and names its actor for the audit log.

    Whether a request without a key goes on is ``app.state.open_mode`` (``security.exposure.OpenMode``):
    decided once at start (no active key, and bound to loopback); the first key created closes the
    server for good, so revoking the last key leaves every protected route answering 401.
    """

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        addr = (scope.get("client") or ("unknown", 0))[0]
        if path not in UNLIMITED:
            wait = await self.limits.ip(addr)
            if wait is not None:
                await self._too_many(scope, send, self._client(scope, addr), wait, f"too many requests from {addr}")
                return
        role = required_role(method, path)
        if role is None:
            await self.app(scope, receive, send)
            return
        # A valid key settles it in one lookup; whether keys are on at all is asked only without one.
        keys, key, found = self._presented(scope)
        if found is not None:
            key_id, key_role = found
            if role not in GRANTS[key_role]:
                await send_error(send, 403, "forbidden", f"this {key_role} key may not {method} {path}; it needs an {role} key")
                return
            wait = await self.limits.key(key_id)
            if wait is not None:
                await self._too_many(scope, send, f"key:{key_id}", wait, f"too many requests with key {key_id}")
                return
            scope.setdefault("state", {})["principal"] = (key_id, key_role)
            actor = f"key:{key_id}@{addr}"
        elif keys is not None and self._open(scope).allows(keys.enforcing):
            actor = f"open@{addr}"
        else:
            await self._audit_failure(scope, addr)
            wait = await self.limits.failed_auth(addr)
            if wait is not None:  # a valid key from the same address still works
                await self._too_many(scope, send, f"addr:{addr}", wait, "too many requests with a missing or wrong API key")
                return
            if keys is not None:
                self._open(scope).note_refusal(keys.enforcing)
            why = "an API key is required" if key is None else "the API key is not valid (unknown, revoked or mistyped)"
            await send_error(
                send,
                401,
                "unauthorized",
                f"{why}: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY' (create one with `facegate keys create`)",
                [(b"www-authenticate", b'Bearer realm="facegate"')],
            )
            return
        token = audit.current_actor.set(actor)
        try:
            await self.app(scope, receive, send)
        finally:
            audit.current_actor.reset(token)

    @staticmethod
    async def _audit_failure(scope: Scope, addr: str) -> None:
        """Count a missing or wrong key for the audit log (``audit.Tally``: one entry per address and minute,
        with a count); the database is written only for a window's first one, off the event loop."""
        state = scope["app"].state
        tally: audit.Tally | None = getattr(state, "tally", None)
        pipeline = getattr(state, "pipeline", None)
        if tally is None or pipeline is None:
            return
        entries = tally.note(f"unauthenticated@{addr}", audit.AUTH_FAILED)
        if entries:
            try:
                await anyio.to_thread.run_sync(audit.write, pipeline.gallery, entries)
            except Exception:  # the refusal is answered whatever the log does
                log.exception("could not write %d audit counts", len(entries))

    @staticmethod
    def _open(scope: Scope) -> OpenMode:
        """The server's open mode (set at start); closed if there is none."""
        return getattr(scope["app"].state, "open_mode", None) or _CLOSED

    @staticmethod
    def _presented(scope: Scope) -> tuple[KeyStore | None, str | None, tuple[str, str] | None]:
        """The server's keys, the key the request presents, and (key id, role) if that key is valid."""
        keys: KeyStore | None = getattr(scope["app"].state, "keys", None)
        key = presented_key(dict(scope.get("headers") or []))
        return keys, key, keys.check(key) if keys is not None and key else None

    @classmethod
    def _client(cls, scope: Scope, addr: str) -> str:
        """Who a per-address 429 is to (for its hold): the request's API key when it presents a valid one, as
        admission's turns and 503s name it (``limits.client_identity``), so that a keyed client that ignored a
        503 or a per-key 429 is held here too; else its address. Looked up only when refusing."""
        found = cls._presented(scope)[2]
        return f"key:{found[0]}" if found is not None else f"addr:{addr}"

    @staticmethod
    async def _too_many(scope: Scope, send: Send, who: str, wait: float, why: str) -> None:
        """429 + Retry-After; to a connection that ignored its last Retry-After, only once that time is up
        (``limits.hold_if_impatient``: a client resending at once gets no more 429s than it was told to wait for)."""
        seconds = max(1, math.ceil(wait))
        await hold_if_impatient(getattr(scope["app"].state, "fair_gate", None), who, connection_id(scope), seconds)
        await send_error(send, 429, "rate_limited", f"{why}; retry in {seconds} s", [(b"retry-after", str(seconds).encode())])


_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_COMMON = {
    "400": "A malformed request (a body that cannot be parsed, a bad Content-Length), or a Host this server does not answer to.",
    "429": "Rate limited: retry after the Retry-After header's seconds.",
    "503": "At capacity or timed out: retry after the Retry-After header's seconds.",
}
_PROTECTED = {"401": "No valid API key.", "403": "The key's role may not do this."}
_STATE_CHANGING = {"403": "Sent from a page of another origin (Origin header), or the key's role may not do this."}
_WITH_BODY = {"415": "A body of another type than the route takes (application/json, or multipart/form-data where files are)."}


def document(app) -> None:
    """Describe the keys and the answers every route may give (401/403/429/503) in the OpenAPI schema."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {})
        comps.setdefault("securitySchemes", {}).update(
            {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: `facegate keys create --role admin|client|viewer`."},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        )
        comps.setdefault("schemas", {}).setdefault(
            "ErrorBody",
            {
                "type": "object",
                "properties": {"detail": {"type": "string"}, "code": {"type": "string"}, "field": {"type": ["string", "null"]}},
                "required": ["detail", "code"],
            },
        )
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                role = required_role(method.upper(), path)
                answers = dict(_COMMON)
                if role is not None:
                    op["security"] = [{"bearer": []}, {"apiKeyHeader": []}]
                    op["description"] = (op.get("description") or "") + f"\n\nNeeds an API key with the **{role}** role (when keys exist)."
                    answers |= _PROTECTED
                if method in ("post", "put", "patch", "delete"):
                    answers |= _STATE_CHANGING
                if "requestBody" in op:
                    answers |= _WITH_BODY
                if "422" in op.get("responses", {}):  # our validation errors have the one error shape
                    op["responses"]["422"]["content"] = {"application/json": {"schema": _ERROR_REF}}
                for status, text in answers.items():
                    op.setdefault("responses", {}).setdefault(
                        status, {"description": text, "content": {"application/json": {"schema": _ERROR_REF}}}
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
