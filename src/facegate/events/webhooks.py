"""Webhook deliveries: each event POSTed as JSON to every webhook that wants it, signed, retried.

Every webhook has its own small thread pool and bounded queue, so a slow or dead receiver holds up
only its own deliveries, never recognition nor another webhook. Each try is logged (delivery log).

Headers of a delivery: ``X-FaceGate-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by the
webhook's secret>``, ``X-FaceGate-Delivery`` (an id, the same on every try), ``X-FaceGate-Timestamp``
(Unix seconds of this try) and ``X-FaceGate-Event`` (the event's id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from facegate.gallery.events import Delivery, Webhook
from .hub import event_json
from .model import Event

log = logging.getLogger(__name__)

#: Threads per webhook: deliveries to one receiver run at most this many at once.
THREADS_PER_HOOK = 2


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a webhook, or None: http(s) with a host, nothing else."""
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if u.scheme not in ("http", "https"):
        return "a webhook URL must be http:// or https://"
    if not u.hostname:
        return "a webhook URL needs a host"
    return None


class _Hook:
    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="facegate-webhook")
        self.waiting = 0


class WebhookDispatcher:
    """The hub's outlet for webhooks (``store`` holds the webhooks and their delivery log)."""

    def __init__(self, store, *, timeout_s: float = 5.0, attempts: int = 4, backoff_s: float = 1.0, queue: int = 200) -> None:
        self.store = store
        self.attempts, self.backoff_s, self.queue = attempts, backoff_s, queue
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False, headers={"User-Agent": "FaceGate-Webhook"})
        self._hooks: dict[str, _Hook] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def deliver(self, event: Event, seq: int, has_crop: bool) -> None:
        hooks = [h for h in self.store.webhooks() if h.wants(event)]
        if not hooks:
            return
        body = json.dumps(event_json(event, seq, has_crop), separators=(",", ":")).encode()
        for hook in hooks:
            self.send(hook, event.id, body)

    def send(self, hook: Webhook, event_id: str, body: bytes) -> bool:
        """Queue one delivery of ``body`` to ``hook``; False (logged as dropped) when its queue is full."""
        with self._lock:
            h = self._hooks.get(hook.id)
            if h is None:
                h = self._hooks[hook.id] = _Hook(THREADS_PER_HOOK)
            if h.waiting >= self.queue:
                self.store.add_delivery(Delivery(hook.id, event_id, 0, time.time(), None, "dropped: delivery queue full", 0.0))
                return False
            h.waiting += 1
        h.pool.submit(self._deliver, h, hook, event_id, body)
        return True

    def _deliver(self, h: _Hook, hook: Webhook, event_id: str, body: bytes) -> None:
        delivery_id = uuid.uuid4().hex
        try:
            for attempt in range(1, self.attempts + 1):
                if self._closing.is_set():
                    return
                t0 = time.monotonic()
                code, error = None, None
                try:
                    r = self._http.post(
                        hook.url,
                        content=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-FaceGate-Signature": sign(hook.secret, body),
                            "X-FaceGate-Delivery": delivery_id,
                            "X-FaceGate-Timestamp": str(int(time.time())),
                            "X-FaceGate-Event": event_id,
                        },
                    )
                    code = r.status_code
                    if not 200 <= code < 300:
                        error = f"HTTP {code}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:500]
                ms = (time.monotonic() - t0) * 1000
                try:
                    self.store.add_delivery(Delivery(hook.id, event_id, attempt, time.time(), code, error, ms))
                except Exception:
                    log.exception("could not log a delivery to webhook %s", hook.id)
                if error is None:
                    return
                if attempt < self.attempts and self._closing.wait(self.backoff_s * 2 ** (attempt - 1)):
                    return
            log.warning("webhook %s: event %s not delivered after %d tries (%s)", hook.id, event_id, self.attempts, error)
        finally:
            with self._lock:
                h.waiting -= 1

    def forget(self, hook_id: str) -> None:
        """A deleted webhook: its waiting deliveries are dropped."""
        with self._lock:
            h = self._hooks.pop(hook_id, None)
        if h is not None:
            h.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            hooks, self._hooks = list(self._hooks.values()), {}
        for h in hooks:
            h.pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()
