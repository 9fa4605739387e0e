"""The event log over HTTP: list, one event, its crop, the live stream (SSE), and a test event.

Reading needs an admin or a ``viewer`` key (api/auth.py); publishing a test event needs an admin key.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from facegate.errors import EventNotFoundError
from facegate.events.hub import event_json
from facegate.events.model import Event
from facegate.security import audit
from .deps import PipelineDep
from .schemas import ErrorBody

router = APIRouter(prefix="/v1", tags=["events"])

EventId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The event's id.")]
#: Events replayed to a stream resuming with Last-Event-ID at most.
RESUME_MAX = 500
ERRORS = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}


class EventOut(BaseModel):
    id: str
    seq: int = Field(description="Order in the log (higher is newer): the cursor of `before` and of Last-Event-ID.")
    camera: str
    started_at: float
    decided_at: float
    status: Literal["recognized", "unknown", "spoof"]
    person_id: int | None
    name: str | None
    similarity: float | None
    track_id: int
    frames: int
    identified: int
    liveness: float | None
    decision: Literal["granted", "denied"] | None
    has_crop: bool
    crop_url: str | None


class EventPage(BaseModel):
    events: list[EventOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end.")


class TestEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str = Field("test", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    status: Literal["recognized", "unknown", "spoof"] = "unknown"
    person_id: int | None = Field(None, ge=1, le=2**63 - 1, description="For `recognized`: an enrolled person (their first stored crop goes with it).")

    @model_validator(mode="after")
    def _named(self) -> TestEventIn:
        if self.status == "recognized" and self.person_id is None:
            raise ValueError("a recognized test event needs person_id (an enrolled person)")
        return self


def _events(request: Request):
    return request.app.state.events


@router.get("/events", response_model=EventPage, responses=ERRORS)
async def list_events(
    request: Request,
    camera: Annotated[str | None, Query(max_length=64)] = None,
    person_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    status: Annotated[Literal["recognized", "unknown", "spoof"] | None, Query()] = None,
    since: Annotated[float | None, Query(ge=0, description="Only events decided at or after this Unix time.")] = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Only events older than this seq (pagination).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> EventPage:
    """Stored events, newest first, filtered; page on with `before=next_before`."""
    store = _events(request).store
    rows = await anyio.to_thread.run_sync(
        lambda: store.list(camera=camera, person_id=person_id, status=status, since=since, before=before, limit=limit + 1)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(
        events=[EventOut(**event_json(r.event, r.seq, r.has_crop)) for r in rows],
        next_before=rows[-1].seq if more and rows else None,
    )


def _sse(seq: int, data: dict) -> bytes:
    return f"id: {seq}\nevent: event\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get("/events/stream", responses={200: {"content": {"text/event-stream": {}}}})
async def stream_events(
    request: Request,
    camera: Annotated[str | None, Query(max_length=64)] = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=2**63 - 1)] = None,
) -> StreamingResponse:
    """Live events as Server-Sent Events (`event: event`, `id:` the seq, `data:` the event's JSON), with
    a comment line as keep-alive when idle. A client resuming with `Last-Event-ID` first gets what it
    missed (up to 500 events). With the PostgreSQL gallery, events stored by any server arrive here."""
    hub = _events(request)
    keepalive = hub.keepalive_s
    sub = hub.subscribe(asyncio.get_running_loop(), camera)

    async def gen():
        try:
            sent = -1
            yield b": connected\n\n"
            if last_event_id is not None:
                missed = await anyio.to_thread.run_sync(lambda: hub.store.list(camera=camera, after=last_event_id, limit=RESUME_MAX))
                for r in missed:
                    sent = max(sent, r.seq)
                    yield _sse(r.seq, event_json(r.event, r.seq, r.has_crop))
            while True:
                try:
                    seq, data = await asyncio.wait_for(sub.queue.get(), keepalive)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                if seq > sent or last_event_id is None:
                    yield _sse(seq, data)
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/events/test", status_code=202, response_model=EventOut, responses=ERRORS)
async def test_event(body: TestEventIn, request: Request, pipeline: PipelineDep) -> EventOut:
    """Publish a test event, as a camera would: it is stored, shown on the stream and sent to the
    webhooks and MQTT (check a receiver or a door rule without walking past a camera)."""
    name, crop = None, None
    if body.person_id is not None:
        def person():
            p = pipeline.gallery.get_person(body.person_id)  # PersonNotFoundError: 404
            crops = [pipeline.gallery.face_crop(f.id) for f in p.faces if f.has_crop][:1]
            return p.name, (crops[0] if crops else None)

        name, crop = await anyio.to_thread.run_sync(person)
    status = body.status
    now = time.time()
    ev = Event(
        camera=body.camera, started_at=now, decided_at=now, status=status,
        person_id=body.person_id if status == "recognized" else None, name=name if status == "recognized" else None,
        similarity=None, track_id=0, frames=1, identified=1, crop_jpeg=crop if status == "recognized" else None,
    )
    _events(request).publish(ev)
    return EventOut(**event_json(ev, 0, ev.crop_jpeg is not None))


@router.get("/events/{event_id}", response_model=EventOut, responses=ERRORS)
async def get_event(event_id: EventId, request: Request) -> EventOut:
    store = _events(request).store
    r = await anyio.to_thread.run_sync(store.get, event_id)
    if r is None:
        raise EventNotFoundError(f"no event {event_id}")
    return EventOut(**event_json(r.event, r.seq, r.has_crop))


@router.get("/events/{event_id}/crop", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}})
async def event_crop(event_id: EventId, request: Request, pipeline: PipelineDep) -> Response:
    """The event's best shot (aligned 112x112 JPEG). Audited like the gallery's crops: one entry per
    actor and minute, with a count and the first ids read."""
    store = _events(request).store

    def work():
        data = store.crop(event_id)
        if data:
            tally = getattr(request.app.state, "tally", None)
            if tally is not None:
                audit.write(pipeline.gallery, tally.note(audit.current_actor.get(), EVENT_CROP_READ, event_id))
        return data

    data = await anyio.to_thread.run_sync(work)
    if not data:
        raise EventNotFoundError(f"no stored crop for event {event_id}")
    return Response(content=data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


#: The audit action of an event crop read.
EVENT_CROP_READ = "event_crop_read"
