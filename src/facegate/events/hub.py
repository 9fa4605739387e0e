"""The event hub: the ``EventSink`` producers publish to, and everything that follows an event.

``publish`` only appends to a bounded queue (the oldest is dropped and counted when it is full), so
recognition never waits on storage or delivery. One writer thread takes events in order, sets the
access decision, stores them, and hands them on: to webhooks (their own threads), to MQTT (paho's
own thread) and to the live streams. With PostgreSQL the live streams are fed from LISTEN instead,
so that events stored by any server reach every server's stream. Retention runs in the same thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .access import AccessRules
from .model import Event

log = logging.getLogger(__name__)

#: Items a slow live-stream reader may have waiting; beyond, it misses events (it can resume by Last-Event-ID).
SUBSCRIBER_QUEUE = 256


class Store(Protocol):
    notifies: bool

    def add(self, event: Event) -> int | None: ...
    def get_seq(self, seq: int) -> Any: ...
    def prune(self, keep_days: float | None, keep_max: int | None, now: float | None = None) -> int: ...
    def close(self) -> None: ...


class Outlet(Protocol):
    """Where a stored event goes next (webhooks, MQTT): must return at once."""

    def deliver(self, event: Event, seq: int, has_crop: bool) -> None: ...
    def close(self) -> None: ...


def event_json(event: Event, seq: int, has_crop: bool) -> dict[str, Any]:
    """The event as the API, the stream, webhooks and MQTT carry it."""
    d = event.to_json()
    d["has_crop"] = has_crop
    d["seq"] = seq
    d["crop_url"] = f"/v1/events/{event.id}/crop" if has_crop else None
    return d


@dataclass(eq=False)
class Subscription:
    """One live stream's queue of (seq, event JSON), fed from the hub's threads."""

    loop: asyncio.AbstractEventLoop
    camera: str | None = None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    missed: int = 0

    def offer(self, item: tuple[int, dict]) -> None:
        def put() -> None:
            try:
                self.queue.put_nowait(item)
            except asyncio.QueueFull:
                self.missed += 1

        try:
            self.loop.call_soon_threadsafe(put)
        except RuntimeError:  # its loop is closed
            pass


class EventHub:
    """The real ``EventSink``; built in the app's lifespan and put on ``app.state.events``."""

    def __init__(
        self,
        store: Store,
        *,
        rules: AccessRules | None = None,
        outlets: list[Outlet] | None = None,
        queue_max: int = 1000,
        keep_days: float | None = None,
        keep_max: int | None = None,
        prune_interval_s: float = 60.0,
        poll_s: float = 0.5,
    ) -> None:
        self.store = store
        self.rules = rules or AccessRules({})
        self.outlets = list(outlets or [])
        self.queue_max = queue_max
        self.keep_days, self.keep_max, self.prune_interval_s = keep_days, keep_max, prune_interval_s
        self._queue: collections.deque[Event] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._subs: set[Subscription] = set()
        self._subs_lock = threading.Lock()
        #: Counts for /metrics: published, stored, dropped (queue full), skipped (person deleted), failed, pruned.
        self.counts = collections.Counter[str]()
        #: The webhook outlet (the API forgets a deleted webhook's queue through it) and the stream's keep-alive.
        self.webhooks: Any = None
        self.keepalive_s = 15.0
        self._writer = threading.Thread(target=self._run, name="facegate-events", daemon=True)
        # Events stored by other processes reach this one's streams: PostgreSQL NOTIFY, or (SQLite, e.g.
        # `serve --workers N` or the CLI) a poll of the log's newest rows every ``poll_s``.
        self._own: collections.deque[int] = collections.deque(maxlen=4096)  # seqs this hub broadcast itself
        self._own_lock = threading.Lock()
        self._stop = threading.Event()
        if store.notifies:
            self._listener = store.listen(self._from_database)  # type: ignore[attr-defined]
        else:
            self._listener = threading.Thread(target=self._poll, args=(poll_s,), name="facegate-events-poll", daemon=True)
            self._listener.start()
        self._writer.start()

    # ------------------------------------------------------------------ producers
    def publish(self, event: Event) -> None:
        """Queue ``event``; never blocks. When the queue is full the oldest waiting event is dropped."""
        with self._cv:
            if self._closing:
                self.counts["dropped"] += 1
                return
            if len(self._queue) >= self.queue_max:
                self._queue.popleft()
                self.counts["dropped"] += 1
                log.warning("event queue full (%d): dropped the oldest event", self.queue_max)
            self._queue.append(event)
            self.counts["published"] += 1
            self._cv.notify()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def camera_state(self, camera: str, online: bool) -> None:
        """A camera's watcher says it came up or went away (MQTT's retained state follows); never blocks."""
        for o in self.outlets:
            if hasattr(o, "camera_state"):
                try:
                    o.camera_state(camera, online)
                except Exception:
                    log.exception("camera state of %s not passed to %s", camera, type(o).__name__)

    # ------------------------------------------------------------------ live streams
    def subscribe(self, loop: asyncio.AbstractEventLoop, camera: str | None = None) -> Subscription:
        sub = Subscription(loop, camera)
        with self._subs_lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._subs_lock:
            self._subs.discard(sub)

    def _broadcast(self, seq: int, event: Event, has_crop: bool) -> None:
        item = (seq, event_json(event, seq, has_crop))
        with self._subs_lock:
            subs = list(self._subs)
        for s in subs:
            if s.camera is None or s.camera == event.camera:
                s.offer(item)

    def _poll(self, every_s: float) -> None:
        """SQLite: broadcast events other processes stored (their seq above the last seen, not our own)."""
        try:
            newest = self.store.list(limit=1)
            last = newest[0].seq if newest else 0
        except Exception:
            log.exception("the event log cannot be read")
            last = 0
        while not self._stop.wait(every_s):
            try:
                with self._own_lock:
                    rows = self.store.list(after=last, limit=500)
                    own = set(self._own)
            except Exception:
                log.exception("polling the event log failed")
                continue
            for r in rows:
                last = max(last, r.seq)
                if r.seq not in own:
                    self._broadcast(r.seq, r.event, r.has_crop)

    def _from_database(self, seq: int) -> None:
        """An event committed by any server (PostgreSQL NOTIFY)."""
        stored = self.store.get_seq(seq)
        if stored is not None:
            self._broadcast(stored.seq, stored.event, stored.has_crop)

    # ------------------------------------------------------------------ the writer
    def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    wait = next_prune - time.monotonic()
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                event = self._queue.popleft() if self._queue else None
                if event is None and self._closing:
                    return
            if event is not None:
                self._handle(event)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval_s
                self.prune()

    def _handle(self, event: Event) -> None:
        try:
            if event.decision is None:
                event.decision = self.rules.decide(event)
            with self._own_lock:  # a poll never sees this row before it is marked as this hub's own
                seq = self.store.add(event)
                if seq is not None:
                    self._own.append(seq)
        except Exception:
            self.counts["failed"] += 1
            log.exception("could not store event %s", event.id)
            return
        if seq is None:
            self.counts["skipped"] += 1
            log.info("event %s dropped: its person was deleted", event.id)
            return
        self.counts["stored"] += 1
        has_crop = event.crop_jpeg is not None
        if not self.store.notifies:
            self._broadcast(seq, event, has_crop)
        for o in self.outlets:
            try:
                o.deliver(event, seq, has_crop)
            except Exception:
                log.exception("event %s could not be handed to %s", event.id, type(o).__name__)

    def prune(self) -> int:
        """Retention now: events beyond events_keep_days / events_keep_max deleted; the count."""
        try:
            n = self.store.prune(self.keep_days, self.keep_max)
        except Exception:
            log.exception("event retention failed")
            return 0
        if n:
            self.counts["pruned"] += n
            log.info("retention deleted %d events", n)
        return n

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event published so far is handled (tests, shutdown); True if so."""
        deadline = time.monotonic() + timeout
        target = self.counts["published"]
        while time.monotonic() < deadline:
            done = sum(self.counts[k] for k in ("stored", "skipped", "failed", "dropped"))
            if done >= target and not self._queue:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Store what is queued, then stop the writer, the outlets and the store."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._writer.join(timeout)
        self._stop.set()
        if isinstance(self._listener, threading.Thread) and not self.store.notifies:
            self._listener.join(timeout)
        for o in self.outlets:
            try:
                o.close()
            except Exception:
                log.exception("closing %s failed", type(o).__name__)
        self.store.close()

    # ------------------------------------------------------------------ metrics
    def collector(self) -> Any:
        """A prometheus collector of the hub's counts (registered on the app's registry)."""
        hub = self

        class _Collector:
            def collect(self):
                c = CounterMetricFamily("facegate_events", "Events by outcome: published, stored, dropped (queue full), skipped, failed, pruned.", labels=["outcome"])
                for k in ("published", "stored", "dropped", "skipped", "failed", "pruned"):
                    c.add_metric([k], hub.counts[k])
                yield c
                yield CounterMetricFamily("facegate_events_dropped", "Events dropped because the queue was full.", value=hub.counts["dropped"])
                yield GaugeMetricFamily("facegate_events_queue", "Events waiting to be stored.", value=len(hub._queue))

        return _Collector()
