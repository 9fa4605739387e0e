"""Webhooks over HTTP (admin only): create, list, delete, and each one's delivery log.

A webhook's secret is shown once, in the answer that creates it, and never again.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from facegate.errors import InvalidWebhookError, WebhookNotFoundError
from facegate.events.webhooks import check_url
from .schemas import ErrorBody

router = APIRouter(prefix="/v1", tags=["webhooks"])

HookId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="The webhook's id.")]
ERRORS = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}
Camera = Annotated[str, Field(min_length=1, max_length=64)]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http:// or https:// receiver.")
    secret: str | None = Field(
        None, min_length=16, max_length=256, description="HMAC key of X-FaceGate-Signature; made for you (and shown once) if absent."
    )
    statuses: list[Literal["recognized", "unknown", "spoof"]] = Field(default_factory=list, max_length=3, description="Only these statuses; empty: all.")
    decisions: list[Literal["granted", "denied"]] = Field(default_factory=list, max_length=2, description="Only these decisions; empty: all.")
    cameras: list[Camera] = Field(default_factory=list, max_length=100, description="Only these cameras; empty: all.")


class WebhookOut(BaseModel):
    id: str
    url: str
    statuses: list[str]
    decisions: list[str]
    cameras: list[str]
    created_at: float


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Shown once: keep it to check the signatures.")


class DeliveryOut(BaseModel):
    event_id: str
    attempt: int = Field(description="1 for the first try; 0 for a delivery dropped (queue full).")
    at: float
    status_code: int | None
    error: str | None
    duration_ms: float


def _out(h) -> dict:
    return dict(id=h.id, url=h.url, statuses=list(h.statuses), decisions=list(h.decisions), cameras=list(h.cameras), created_at=h.created_at)


@router.post("/webhooks", status_code=201, response_model=WebhookCreated, responses=ERRORS)
async def create_webhook(body: WebhookIn, request: Request) -> WebhookCreated:
    """Send every event matching the filters to `url`: a JSON POST signed
    `X-FaceGate-Signature: sha256=<hex HMAC-SHA256 of the body>`, retried with backoff."""
    why = check_url(body.url)
    if why:
        raise InvalidWebhookError(why, field="url")
    secret = body.secret or secrets.token_urlsafe(32)
    store = request.app.state.events.store
    h = await anyio.to_thread.run_sync(
        lambda: store.add_webhook(body.url, secret, list(dict.fromkeys(body.statuses)), list(dict.fromkeys(body.decisions)), list(dict.fromkeys(body.cameras)))
    )
    return WebhookCreated(**_out(h), secret=secret)


@router.get("/webhooks", response_model=list[WebhookOut])
async def list_webhooks(request: Request) -> list[WebhookOut]:
    store = request.app.state.events.store
    return [WebhookOut(**_out(h)) for h in await anyio.to_thread.run_sync(store.webhooks)]


@router.delete("/webhooks/{hook_id}", response_model=WebhookOut, responses=ERRORS)
async def delete_webhook(hook_id: HookId, request: Request) -> WebhookOut:
    hub = request.app.state.events
    h = await anyio.to_thread.run_sync(hub.store.webhook, hook_id)
    if h is None or not await anyio.to_thread.run_sync(hub.store.delete_webhook, hook_id):
        raise WebhookNotFoundError(f"no webhook {hook_id}")
    if hub.webhooks is not None:
        hub.webhooks.forget(hook_id)
    return WebhookOut(**_out(h))


@router.get("/webhooks/{hook_id}/deliveries", response_model=list[DeliveryOut], responses=ERRORS)
async def deliveries(hook_id: HookId, request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[DeliveryOut]:
    """The webhook's latest delivery tries, newest first."""
    store = request.app.state.events.store
    if await anyio.to_thread.run_sync(store.webhook, hook_id) is None:
        raise WebhookNotFoundError(f"no webhook {hook_id}")
    rows = await anyio.to_thread.run_sync(lambda: store.deliveries(hook_id, limit))
    return [DeliveryOut(event_id=d.event_id, attempt=d.attempt, at=d.at, status_code=d.status_code, error=d.error, duration_ms=d.duration_ms) for d in rows]
