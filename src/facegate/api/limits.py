"""Limits enforced before a body is read or decoded: size, capacity, and time."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict, deque

import anyio
import numpy as np
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facegate import cancel
from facegate.vision.imageio import PixelPool, RequestPixels, request_pixels


async def send_error(
    send: Send, status: int, code: str, detail: str, headers: list[tuple[bytes, bytes]] | tuple = (), *, close: bool = False
) -> None:
    """A JSON error answered from ASGI middleware, before any route runs (same shape as ``api.errors``)."""
    body = json.dumps({"detail": detail, "code": code, "field": None}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if status == 503:
        head.append((b"retry-after", b"1"))
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _Watched:
    """``send``, noting whether the response has begun (after which no error answer can be sent)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            self.started = True
        await self._send(msg)


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it as it is (413), not as a 400."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413: by Content-Length up front, or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, 400, "bad_request", "invalid Content-Length header", close=True)
                    return
                if declared > self.max_bytes:
                    await send_error(send, 413, "request_too_large", self._message(declared), close=True)
                    return
        seen = 0
        sent = _Watched(send)

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._message(seen))
            return msg

        try:
            await self.app(scope, limited_receive, sent)
        except BodyTooLarge:
            if not sent.started:
                await send_error(send, 413, "request_too_large", self._message(seen), close=True)

    def _message(self, n: int) -> str:
        return f"request body of {n} bytes exceeds the limit of {self.max_bytes} bytes"


#: Routes that run the models: refused early, before their (large) bodies are read, when over capacity.
MODEL_ROUTES = frozenset({"/predict", "/register", "/v1/identify", "/v1/verify", "/v1/people", "/v1/liveness"})


def is_model_route(path: str) -> bool:
    """Routes that run the models, so take turns in the fair queue: the fixed ones, adding faces to a person,
    and answering a challenge (landmarks and embeddings of several frames)."""
    if path in MODEL_ROUTES:
        return True
    parts = path.split("/")
    return len(parts) == 5 and parts[1] == "v1" and (parts[2], parts[4]) in (("people", "faces"), ("challenges", "answer"))


class FairGate:
    """At most ``slots`` model requests in progress; the others wait in one queue per client, served in turn.

    A client (an API key, or an address when keys are off) flooding the model routes then gets the same turns as a
    polite one instead of the refusals' share: its extra requests wait in its own queue, and each freed slot goes to
    the next client in round-robin order (issue 19, finding 11). A request is refused at once (503 + Retry-After)
    when its client already has ``per_client`` waiting, or when the turns ahead of it would take longer than
    ``budget_s`` (the latency budget also covers the wait for a turn).

    A connection that sends again before the Retry-After it was given has passed marks its client *impolite* for
    ``penalty_s``: an impolite client gets one turn in ``impolite_every`` while polite ones wait (never none), and
    its refusals are answered only once the Retry-After it ignored has passed, so that refusing it costs nothing
    and its connections cannot resend faster than told.
    """

    def __init__(
        self, slots: int, per_client: int, budget_s: float = 0.0, penalty_s: float = 10.0, impolite_every: int = 4
    ) -> None:
        self.slots = max(1, slots)
        self.per_client = max(1, per_client)
        self.budget_s = budget_s
        self.penalty_s = penalty_s
        self.impolite_every = max(2, impolite_every)
        self.busy = 0
        self.queues: OrderedDict[str, deque[asyncio.Future]] = OrderedDict()
        #: Moving average of how long a request holds a slot (seconds; 0 until the first one ends).
        self.hold_s = 0.0
        #: (client, connection) -> until when it was told to wait (monotonic seconds).
        self._told: dict[tuple[str, str], float] = {}
        #: client -> until when it is impolite.
        self._impolite: dict[str, float] = {}
        self._grants = 0

    def full(self, who: str) -> bool:
        q = self.queues.get(who)
        return q is not None and len(q) >= self.per_client

    def impolite(self, who: str, now: float | None = None) -> bool:
        until = self._impolite.get(who)
        if until is None:
            return False
        if until > (time.monotonic() if now is None else now):
            return True
        del self._impolite[who]
        return False

    def arrival(self, who: str, conn: str, now: float) -> float | None:
        """A request arrives on ``conn``: if that connection was told to wait until later, the client is marked
        impolite and that time is returned (else None)."""
        until = self._told.pop((who, conn), None)
        if until is None or now >= until:
            return None
        self._impolite[who] = now + self.penalty_s
        return until

    def told(self, who: str, conn: str, now: float, retry_after_s: float = 1.0) -> None:
        """``conn`` was answered Retry-After: ``retry_after_s``."""
        if len(self._told) > 10_000:  # forget the expired ones (connections that went away)
            self._told = {k: t for k, t in self._told.items() if t > now}
        self._told[(who, conn)] = now + retry_after_s

    def observe_hold(self, seconds: float) -> None:
        self.hold_s = seconds if self.hold_s == 0.0 else 0.8 * self.hold_s + 0.2 * seconds

    def expected_wait(self, who: str, now: float | None = None) -> float:
        """Seconds a new request of ``who`` would wait for its turn, at the measured pace."""
        if self.busy < self.slots and not self.queues:
            return 0.0
        now = time.monotonic() if now is None else now
        mine = len(self.queues.get(who, ()))
        rude = self.impolite(who, now)
        ahead = mine
        for other, q in self.queues.items():
            if other == who:
                continue
            other_rude = self.impolite(other, now)
            if rude and not other_rude:
                ahead += len(q)  # polite clients go first
            elif other_rude and not rude:
                ahead += min(len(q), mine // (self.impolite_every - 1) + 1)
            else:
                ahead += min(len(q), mine + 1)  # round-robin: one turn each
        return (ahead + 1) * self.hold_s / self.slots

    def refusal(self, who: str) -> str | None:
        """Why a new request of ``who`` is refused now, or None."""
        if self.full(who):
            return f"this client already has {self.per_client} requests waiting; retry shortly"
        if self.budget_s > 0 and self.hold_s > 0:
            wait = self.expected_wait(who)
            if wait > self.budget_s:
                return f"the server is at capacity (about {wait:.1f} s of turns ahead, budget {self.budget_s:.1f} s); retry shortly"
        return None

    async def acquire(self, who: str) -> bool:
        """True once a slot is held (``release`` it); False at once when ``who``'s queue is full."""
        if self.busy < self.slots and not self.queues:
            self.busy += 1
            return True
        q = self.queues.get(who)
        if q is not None and len(q) >= self.per_client:
            return False
        fut = asyncio.get_running_loop().create_future()
        self.queues.setdefault(who, deque()).append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as it was cancelled: pass the slot on
            else:
                q = self.queues.get(who)
                if q is not None and fut in q:
                    q.remove(fut)
                    if not q:
                        del self.queues[who]
            raise
        return True

    def _next(self) -> str:
        """Whose turn it is: the first polite client in round-robin order, except that every
        ``impolite_every``-th turn goes to an impolite one (if any waits)."""
        now = time.monotonic()
        first_polite = first_rude = None
        for who in self.queues:
            if self.impolite(who, now):
                first_rude = first_rude or who
            else:
                first_polite = first_polite or who
            if first_polite and first_rude:
                break
        self._grants += 1
        if first_polite and first_rude:
            return first_rude if self._grants % self.impolite_every == 0 else first_polite
        return first_polite or first_rude

    def release(self) -> None:
        while self.queues:
            who = self._next()
            q = self.queues[who]
            fut = q.popleft()
            if q:
                self.queues.move_to_end(who)  # its next request waits for the other clients' turns
            else:
                del self.queues[who]
            if not fut.done():
                fut.set_result(None)  # the slot goes to it: busy unchanged
                return
        self.busy -= 1


def client_identity(scope: Scope) -> str:
    """Whose turn a request takes: its API key, else its address."""
    principal = scope.get("state", {}).get("principal")
    if principal:
        return f"key:{principal[0]}"
    client = scope.get("client")
    return f"addr:{client[0] if client else ''}"


def connection_id(scope: Scope) -> str:
    """The client's address and port: one TCP connection."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


async def before_refusal(gate: FairGate, who: str, conn: str, ignored_until: float | None, retry_after_s: float) -> None:
    """Before a refusal that says Retry-After ``retry_after_s`` (429 or 503) on ``conn``: if it resent before the
    Retry-After it was last given (``ignored_until``, from ``FairGate.arrival``, which also marked its client
    impolite), wait until that time is up, so that a client resending at once whatever it is told gets one
    refusal a connection per Retry-After instead of as many as it can send, each costing the server's CPU;
    at most 5 s, and never past the request's own deadline (its answer stays the refusal). Then note the new
    Retry-After."""
    if ignored_until is not None:
        await asyncio.sleep(max(0.0, min(ignored_until - time.monotonic(), cancel.remaining(5.0) - 0.1)))
    gate.told(who, conn, time.monotonic(), retry_after_s)


async def hold_if_impatient(gate: FairGate | None, who: str, conn: str, retry_after_s: float) -> None:
    """``before_refusal`` for a refusal decided before the gate saw the request (auth's 429s)."""
    if gate is not None:
        await before_refusal(gate, who, conn, gate.arrival(who, conn, time.monotonic()), retry_after_s)


class AdmissionMiddleware:
    """Answers 503 + Retry-After before reading the body when the server is over capacity.

    Refusing after parsing megabytes of base64 would spend the CPU the model needs. Model requests take turns
    per client through a ``FairGate`` (``slots`` 0: off), once their body is received (a slow upload holds no
    slot); a client whose queue is full, or whose turn is further away than ``budget_s``, is refused before its
    body is read, and a connection that ignored its Retry-After gets its next refusal only when that time is up.
    """

    def __init__(
        self, app: ASGIApp, slots: int = 0, per_client: int = 32, budget_s: float = 0.0, gate: FairGate | None = None
    ) -> None:
        """``gate``: one made by the app factory (shared with ``AuthMiddleware``'s 429s), else one of ``slots``."""
        self.app = app
        self.gate = gate if gate is not None else FairGate(slots, per_client, budget_s) if slots > 0 else None

    async def _refuse(self, send: Send, who: str, conn: str, why: str, ignored_until: float | None) -> None:
        await before_refusal(self.gate, who, conn, ignored_until, 1.0)  # send_error's 503 says Retry-After: 1
        await send_error(send, 503, "busy", why)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and is_model_route(scope.get("path", "")):
            gate = self.gate
            if gate is not None:
                who, conn = client_identity(scope), connection_id(scope)
                ignored_until = gate.arrival(who, conn, time.monotonic())
                why = gate.refusal(who)
                if why is not None:  # before the body is read
                    await self._refuse(send, who, conn, why, ignored_until)
                    return
                # The body is received before the turn is taken: a slow upload must not hold a model slot
                # (4 slow bodies would stall every client). Its time is bounded by TimeoutMiddleware (408).
                messages: list[Message] = []
                while True:
                    msg = await receive()
                    messages.append(msg)
                    if msg["type"] != "http.request" or not msg.get("more_body", False):
                        break
                if messages[-1]["type"] == "http.disconnect":
                    return
                if not await gate.acquire(who):
                    await self._refuse(send, who, conn, f"this client already has {gate.per_client} requests waiting; retry shortly", None)
                    return
                buffered = iter(messages)

                async def replay() -> Message:
                    return next(buffered, None) or await receive()

                t0 = time.monotonic()
                try:
                    if not await self._admit(scope, replay, send):
                        gate.told(who, conn, time.monotonic())
                finally:
                    gate.release()
                    gate.observe_hold(time.monotonic() - t0)
                return
            await self._admit(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Run the request unless the worker refuses it (503: False)."""
        worker = getattr(scope["app"].state, "worker", None)
        refusal = worker.admission_error() if worker is not None else None
        if refusal is not None:
            await send_error(send, 503, refusal.code, refusal.message)
            return False
        await self.app(scope, receive, send)
        return True


#: Answers that stream for as long as the client listens (Server-Sent Events): no request timeout.
LONG_LIVED = frozenset({"/v1/events/stream"})


#: Answers that stream for as long as the client listens (Server-Sent Events): no request timeout.
LONG_LIVED = frozenset({"/v1/events/stream"})


class TimeoutMiddleware:
    """No request is held longer than ``timeout_s``: a client too slow to send its body gets 408,
    a request the server could not answer in time gets 503 + Retry-After.

    The request's work in worker threads gets the same deadline (``facegate.cancel``): the pipeline
    checks it between stages, so work no one waits for any more stops at the next stage, frees its
    thread and stores nothing (issue 19, finding 5).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") in LONG_LIVED:  # a live stream is meant to stay open (its own keep-alive)
            await self.app(scope, receive, send)
            return
        sent = _Watched(send)
        body_done = scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS")

        async def tracking_receive() -> Message:
            nonlocal body_done
            msg = await receive()
            if msg["type"] == "http.request" and not msg.get("more_body", False):
                body_done = True
            return msg

        deadline = cancel.Deadline(self.timeout_s)
        token = cancel.current.set(deadline)  # worker threads run in a copy of this context
        try:
            with anyio.move_on_after(self.timeout_s) as scope_:
                await self.app(scope, tracking_receive, sent)
        finally:
            deadline.cancel()  # whatever still runs for this request stops at its next stage
            cancel.current.reset(token)
        if scope_.cancelled_caught and not sent.started:
            if body_done:
                status, code = 503, "timeout"
                detail = f"the request was not answered within {self.timeout_s:g} s; retry shortly"
            else:
                status, code = 408, "request_timeout"
                detail = f"the request body did not arrive within {self.timeout_s:g} s"
            await send_error(send, status, code, detail, close=True)


#: JSON nested deeper than this is refused (422) before any parser sees it. Every body FaceGate takes
#: is two levels deep; Python's parser raises RecursionError (a 500) near 1,000.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def json_depth(body: bytes) -> int:
    """How deeply ``body``'s arrays and objects nest, counted outside its strings.

    For any prefix a JSON parser accepts this is at least the depth the parser reaches, so a body
    under the limit here cannot make the parser recurse further.
    """
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:  # every real request: no scan
        return body.count(b"[") + body.count(b"{")
    rest = _JSON_STRING.sub(b"", body)
    if not rest:
        return 0
    return int(np.cumsum(_BRACKET_STEP[np.frombuffer(rest, np.uint8)], dtype=np.int64).max(initial=0))


def is_json(content_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json``, any parameters."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


#: Routes that take a body: JSON only, or JSON or multipart/form-data (file uploads).
JSON_ONLY_ROUTES = re.compile(r"^/(register|predict)$")
JSON_OR_FORM_ROUTES = re.compile(r"^/v1/(identify|verify|people|people/[^/]+/faces)$")


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


def _is_form(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


class JsonBodyMiddleware:
    """Refuses a body of another type than the route takes with 415 (a ``text/plain`` POST, the kind a
    web page sends without a CORS preflight), and a JSON body nested deeper than ``MAX_JSON_DEPTH``
    with 422, before a route parses it.

    Innermost of the limits: a body reaches it only within the size cap, from a caller that may
    send it, on a server with room. The body is read here and handed on unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        ctype = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), "")
        if not is_json(ctype):
            path = scope.get("path", "")
            form = JSON_OR_FORM_ROUTES.match(path) is not None
            if _has_body(headers) and (form or JSON_ONLY_ROUTES.match(path)) and not (form and _is_form(ctype)):
                kinds = "application/json or multipart/form-data" if form else "application/json"
                shown = ctype.split(";", 1)[0].strip()[:80] or "none"
                await send_error(send, 415, "unsupported_media_type", f"{path} takes {kinds} (Content-Type), not {shown}")
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        depth = json_depth(body) if len(body) < 65536 else await anyio.to_thread.run_sync(json_depth, body)
        if depth > MAX_JSON_DEPTH:
            await send_error(
                send, 422, "invalid_request", f"invalid JSON: arrays and objects nested deeper than {MAX_JSON_DEPTH} levels"
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class PixelBudgetMiddleware:
    """Gives each request a budget of decoded pixels (``max_request_pixels`` in all its images), drawn
    from the server's (``max_server_pixels`` held by all requests at once) and given back when it ends:
    decoding counts pixels before it decodes them, so eight requests of large images cannot take the
    server's memory (413 past a request's budget, 503 + Retry-After past the server's)."""

    def __init__(self, app: ASGIApp, per_request: int, per_server: int) -> None:
        self.app = app
        self.per_request = per_request
        self.pool = PixelPool(per_server)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget = RequestPixels(self.per_request, self.pool)
        token = request_pixels.set(budget)  # worker threads get a copy of this context
        try:
            await self.app(scope, receive, send)
        finally:
            request_pixels.reset(token)
            budget.release()
