"""Events: what a producer pays to publish, how fast the hub stores, and how long an event takes to
reach a webhook receiver and a live-stream subscriber.

In one process, on a fresh embedded gallery (SQLite, synchronous=FULL: one fsync per stored event),
or a PostgreSQL gallery with ``--pg URL``:

- ``publish``: the cost of ``EventHub.publish`` to the caller (a camera's thread), per call;
- ``store``: a burst of ``--burst`` events published at once, stored at events/s (queue large enough
  for none to be dropped);
- ``delivery``: ``--events`` events published one at a time; per event, the delay from ``publish``
  to the arrival at a local HTTP receiver (a webhook, signed, through the delivery threads) and at a
  live-stream subscriber (the queue /v1/events/stream reads).

    python bench/events.py [--burst 2000] [--events 200] [--pg postgresql://...|dev] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from facegate.events.hub import EventHub
from facegate.events.model import Event
from facegate.events.webhooks import WebhookDispatcher
from facegate.gallery.backends import events_for


def _event(i: int) -> Event:
    t = time.time()
    return Event(camera="bench", started_at=t, decided_at=t, status="unknown", person_id=None, name=None,
                 similarity=None, track_id=i, frames=5, identified=3, crop_jpeg=b"\xff\xd8" + bytes(3000) + b"\xff\xd9")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--pg", default=None, help="a postgresql:// URL (an empty database) instead of SQLite; 'dev': a throwaway one")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="fg-bench-events-")
    dev = None
    if a.pg == "dev":  # a throwaway PostgreSQL (facegate.gallery.devdb, as the tests use)
        from facegate.gallery.devdb import DevPostgres

        dev = DevPostgres().start()
        a.pg = dev.create_database("fg_bench_events")
    if a.pg:
        from facegate.gallery.postgres import PgGallery

        gallery = PgGallery(a.pg, "bench-model", 8)
    else:
        from facegate.gallery.sqlite import Gallery

        gallery = Gallery(Path(tmp.name), "bench-model", 8)
    store = events_for(gallery)
    arrivals: dict[str, float] = {}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            arrivals[json.loads(body)["id"]] = time.perf_counter()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    store.add_webhook(f"http://127.0.0.1:{httpd.server_address[1]}/", "bench-secret-0123456789", [], [], [])
    hooks = WebhookDispatcher(store, timeout_s=5, attempts=1, queue=a.burst + a.events + 10)
    hub = EventHub(store, outlets=[hooks], queue_max=a.burst + 10)

    # a live-stream subscriber on its own event loop
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    sub = hub.subscribe(loop)
    streamed: dict[str, float] = {}

    async def drain():
        while True:
            _, data = await sub.queue.get()
            streamed[data["id"]] = time.perf_counter()

    draining = asyncio.run_coroutine_threadsafe(drain(), loop)

    # 1. the publish call itself (events go nowhere slow: measured on the caller's side only)
    costs = []
    for i in range(a.burst):
        e = _event(i)
        t0 = time.perf_counter_ns()
        hub.publish(e)
        costs.append((time.perf_counter_ns() - t0) / 1000)
    t0 = time.perf_counter()
    hub.flush(600)
    stored_s = time.perf_counter() - t0
    stored_per_s = hub.counts["stored"] / max(1e-9, stored_s)
    hooks_wait = time.perf_counter() + 120
    while len(arrivals) < a.burst and time.perf_counter() < hooks_wait:
        time.sleep(0.01)
    delivered_per_s = len(arrivals) / max(1e-9, time.perf_counter() - t0)

    # 2. one at a time: publish -> webhook receiver, publish -> stream subscriber
    hook_ms, stream_ms = [], []
    for i in range(a.events):
        e = _event(10_000 + i)
        t0 = time.perf_counter()
        hub.publish(e)
        deadline = t0 + 30
        while (e.id not in arrivals or e.id not in streamed) and time.perf_counter() < deadline:
            time.sleep(0.0005)
        if e.id in arrivals:
            hook_ms.append((arrivals[e.id] - t0) * 1000)
        if e.id in streamed:
            stream_ms.append((streamed[e.id] - t0) * 1000)
    hub.close()
    draining.cancel()
    time.sleep(0.05)
    loop.call_soon_threadsafe(loop.stop)
    httpd.shutdown()
    gallery.close()

    out = {
        "backend": "postgresql" if a.pg else "sqlite",
        "publish_us": {"median": statistics.median(costs), "p99": _pct(costs, 99), "max": max(costs)},
        "burst": a.burst,
        "burst_stored": hub.counts["stored"] - a.events,
        "burst_dropped": hub.counts["dropped"],
        "store_events_per_s": stored_per_s,
        "webhook_deliveries_per_s": delivered_per_s,
        "webhook_ms": {"median": statistics.median(hook_ms), "p95": _pct(hook_ms, 95), "n": len(hook_ms)},
        "stream_ms": {"median": statistics.median(stream_ms), "p95": _pct(stream_ms, 95), "n": len(stream_ms)},
    }
    print(f"backend {out['backend']}")
    print(f"publish(): median {out['publish_us']['median']:.1f} us, p99 {out['publish_us']['p99']:.1f} us, max {out['publish_us']['max']:.0f} us")
    print(f"burst of {a.burst}: stored {stored_per_s:.0f} events/s, delivered to one webhook at {delivered_per_s:.0f}/s, dropped {out['burst_dropped']}")
    print(f"publish -> webhook receiver: median {out['webhook_ms']['median']:.1f} ms, p95 {out['webhook_ms']['p95']:.1f} ms ({len(hook_ms)} events)")
    print(f"publish -> stream subscriber: median {out['stream_ms']['median']:.1f} ms, p95 {out['stream_ms']['p95']:.1f} ms ({len(stream_ms)} events)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    tmp.cleanup()
    if dev is not None:
        dev.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
