"""Prometheus metrics: request latency and status, in-flight requests, the model queue and its batches."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .limits import MODEL_ROUTES

_PID = str(os.getpid()).encode()
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("facegate_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.latency = Histogram(
            "facegate_request_seconds", "HTTP request latency by route.", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter("facegate_rejected", "Requests refused with 503, by reason.", ["reason"], registry=r)
        self.inflight = Gauge("facegate_inflight_requests", "Requests being processed now.", registry=r)
        self.queue_depth = Gauge("facegate_embed_queue_depth", "Requests waiting for the embedding model.", registry=r)
        self.batch_faces = Histogram(
            "facegate_batch_faces", "Faces per model call (before flip TTA).", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r
        )
        self.batch_requests = Histogram(
            "facegate_batch_requests", "Requests per model call.", buckets=(1, 2, 3, 4, 6, 8, 16, 32), registry=r
        )
        self.batch_seconds = Histogram("facegate_batch_seconds", "Model call duration.", buckets=_LATENCY_BUCKETS, registry=r)
        self.gallery_faces = Gauge("facegate_gallery_faces", "Faces in the gallery.", registry=r)

    def observe_batch(self, faces: int, requests: int, seconds: float) -> None:
        self.batch_faces.observe(faces)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)

    def install(self, app: FastAPI) -> None:
        metrics = self

        class _Measure:
            """Pure ASGI middleware (BaseHTTPMiddleware would wrap the body stream and hide a 413)."""

            def __init__(self, inner) -> None:
                self.inner = inner

            async def __call__(self, scope, receive, send) -> None:
                if scope["type"] != "http":
                    await self.inner(scope, receive, send)
                    return
                t0 = time.perf_counter()
                status = [500]

                async def _send(msg) -> None:
                    if msg["type"] == "http.response.start":
                        status[0] = msg["status"]
                        msg = {**msg, "headers": [*msg.get("headers", []), (b"x-facegate-worker", _PID)]}
                    await send(msg)

                try:
                    await self.inner(scope, receive, _send)
                finally:
                    route = scope.get("route")
                    path = scope.get("path", "")
                    label = route.path if route is not None else (path if path in MODEL_ROUTES else "unmatched")
                    metrics.requests.labels(label, str(status[0])).inc()
                    metrics.latency.labels(label).observe(time.perf_counter() - t0)

        app.add_middleware(_Measure)

        @app.get("/metrics", include_in_schema=False)
        async def _metrics(request: Request) -> Response:
            p = request.app.state.pipeline
            if p.batcher is not None:
                self.queue_depth.set(p.batcher.depth)
            self.gallery_faces.set(p.gallery.stats()[1])
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
