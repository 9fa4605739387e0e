"""The app factory: models and the gallery are built in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from facegate import __version__
from facegate.config import Settings
from facegate.pipeline import Pipeline
from facegate import web
from facegate.gallery.backends import describe, keys_for
from facegate.security import audit
from facegate.security.exposure import HostPolicy, OpenMode
from . import admin, auth, errors, headers, legacy, liveness, v1
from . import cameras
from facegate.cameras.manager import CameraManager, LogSink
from . import people
from . import events, webhooks
from facegate.events.service import build_hub
from . import challenges
from facegate.security.challenges import ChallengeStore
from facegate.gallery.backends import challenges_for
from .auth import AuthMiddleware, RateLimits
from .deps import Worker
from .limits import AdmissionMiddleware, BodyLimitMiddleware, FairGate, JsonBodyMiddleware, PixelBudgetMiddleware, TimeoutMiddleware
from .metrics import Metrics
from .origin import HostOriginMiddleware

log = logging.getLogger(__name__)


def create_app(settings: Settings, pipeline: Pipeline | None = None) -> FastAPI:
    """Build the FastAPI app. ``pipeline`` may be given (tests, embedding); otherwise it is loaded at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = pipeline is None
        p = pipeline or await anyio.to_thread.run_sync(lambda: Pipeline.from_settings(settings, batching=True))
        app.state.pipeline = p
        app.state.keys = keys_for(p.gallery)  # beside the gallery: its SQLite file or its PostgreSQL database
        model_threads = p.batcher.workers if p.batcher is not None else 1
        worker = Worker(settings.worker_threads, settings.max_pending, metrics, settings.latency_budget_s, model_threads)
        app.state.worker = worker
        if p.batcher is not None:
            p.batcher.on_batch = worker.observe_batch
        g = p.gallery
        # Events (docs/events.md): stored beside the gallery, sent to webhooks and MQTT; cameras publish here.
        app.state.events = await anyio.to_thread.run_sync(build_hub, settings, g)
        metrics.registry.register(app.state.events.collector())
        # Open (no key needed) is decided here, once: never after a key existed, never beyond loopback.
        app.state.open_mode = OpenMode.decide(keys_exist=app.state.keys.enforcing(), host=settings.host)
        log.info(
            "FaceGate %s ready: model %s, threshold %.3f, tta %s, detector %s, gallery %s (%d people, %d faces)",
            __version__, p.embedder.model_id, p.threshold, settings.tta, p.detector.name, describe(settings), g.person_count, g.face_count,
        )
        flusher = asyncio.create_task(_flush_tallies(app))
        # Active liveness nonces (api.challenges), in the gallery's database: any process may answer one another asked.
        app.state.challenges = ChallengeStore(
            settings.challenge_ttl_s,
            backend=await anyio.to_thread.run_sync(challenges_for, g, settings.encryption_key),
            max_open=settings.challenge_max_open,
            max_open_per_key=settings.challenge_max_open_per_key,
            actions=settings.challenge_action_list,
        )
        # Cameras (docs/cameras.md): events go to the event store when there is one (app.state.events), else the log.
        app.state.cameras = CameraManager(
            settings, p, lambda: getattr(app.state, "events", None) or LogSink(), lambda: worker.pending >= worker.max_pending // 2
        ).start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(app.state.cameras.stop)
            flusher.cancel()
            try:
                await anyio.to_thread.run_sync(audit.write, g, app.state.tally.drain())  # counts not yet written
            except Exception:
                log.exception("could not write the audit counts at shutdown")
            await anyio.to_thread.run_sync(app.state.events.close)  # what is queued is stored first
            app.state.keys.close()
            app.state.challenges.close()
            if own:
                await anyio.to_thread.run_sync(p.close)

    app = FastAPI(
        title="FaceGate",
        version=__version__,
        description="Self-hosted face recognition: enrol people, then identify faces in images.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served from local files (headers.install), never FastAPI's CDN pages
        redoc_url=None,
    )
    metrics = Metrics()
    app.state.tally = audit.Tally()  # crop reads, listings, failed authentication: counted per actor per minute
    app.add_middleware(PixelBudgetMiddleware, per_request=settings.max_request_pixels, per_server=settings.max_server_pixels)
    app.add_middleware(JsonBodyMiddleware)  # innermost: reads a body only after admission, size cap and keys let it in
    slots = settings.admission_slots if settings.admission_slots >= 0 else 2 * settings.inference_threads
    # Turns per key (address when keys are off); no turn further away than the latency budget (503 + Retry-After).
    # One gate for the 503s here and auth's 429s: either Retry-After ignored marks the client impolite.
    app.state.fair_gate = FairGate(slots, settings.admission_queue_per_client, settings.latency_budget_s) if slots > 0 else None
    app.add_middleware(AdmissionMiddleware, gate=app.state.fair_gate)  # inside auth, which names the key
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    limits = RateLimits(
        settings.rate_limit_per_key, settings.rate_limit_per_ip, settings.rate_limit_auth_failures, settings.rate_limit_storage
    )
    app.add_middleware(AuthMiddleware, limits=limits)  # before any body is read
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    hosts = HostPolicy(settings.allowed_hosts, settings.host)
    app.add_middleware(HostOriginMiddleware, policy=hosts)  # first refusal: foreign Host (400) or Origin (403)
    metrics.install(app)  # outermost: it also counts what the ones above refuse
    errors.install(app)
    app.include_router(legacy.router)
    app.include_router(v1.router)
    app.include_router(people.router)  # PATCH /v1/people/{id}, DELETE /v1/faces/{id}
    app.include_router(liveness.router)
    app.include_router(challenges.router)  # POST /v1/challenges, /v1/challenges/{id}/answer
    app.include_router(cameras.router)  # GET /v1/cameras, /v1/cameras/{name}/snapshot
    app.include_router(events.router)  # /v1/events, /v1/events/stream, /v1/events/{id}(/crop), /v1/events/test
    app.include_router(webhooks.router)  # /v1/webhooks, /v1/webhooks/{id}(/deliveries)
    app.include_router(v1.health_router)
    web.mount(app)  # the web client: pages, scripts and the MediaPipe assets
    app.include_router(admin.router)
    auth.document(app)
    headers.install(app)  # /docs from local files; CSP, nosniff, no-referrer, no framing on every answer
    return app


async def _flush_tallies(app: FastAPI) -> None:
    """Write the audit counts of closed windows, so the log is whole within a window even when idle."""
    tally: audit.Tally = app.state.tally
    while True:
        await asyncio.sleep(tally.window_s / 4)
        entries = tally.drain(everything=False)
        if entries:
            try:
                await anyio.to_thread.run_sync(audit.write, app.state.pipeline.gallery, entries)
            except Exception:
                log.exception("could not write %d audit counts", len(entries))


def create_app_from_environment() -> FastAPI:
    """Factory for uvicorn worker processes (`facegate serve --workers N`)."""
    from facegate.config import settings_from_environment

    return create_app(settings_from_environment())
