"""Cameras: each camera's state, and a snapshot of its newest frame (docs/cameras.md)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from pydantic import BaseModel, Field

from .schemas import ErrorBody


class CameraOut(BaseModel):
    name: str
    url: str = Field(description="The stream's URL, user and password shown as ***.")
    kind: str = Field(description="rtsp, http, device or file.")
    fps: float = Field(description="Frames analysed per second (configured).")
    watching: bool = Field(description="This server watches the camera (false: another server does, or it is being claimed).")
    state: str = Field(description="standby, connecting, connected, disconnected (see last_error) or ended (a file played once).")
    connected: bool
    fps_in: float = Field(description="Frames per second coming from the stream.")
    fps_analysed: float = Field(description="Frames per second analysed (at most fps).")
    frames: int = Field(description="Frames analysed since this server took the camera.")
    frames_in: int = Field(0, description="Frames decoded from the stream since this server took the camera.")
    skipped: int = Field(0, description="Frames not analysed because the server was near its request capacity.")
    reconnects: int = Field(0, description="Times the stream was opened again after a failure.")
    tracks: int = Field(description="Faces followed so far.")
    tracks_now: int = Field(0, description="Faces followed now.")
    events: int = Field(description="Events published so far (one per decided track).")
    last_error: str | None
    last_frame_at: float | None = Field(description="Unix time of the newest analysed frame.")
    recent: list[dict] = Field(default_factory=list, description="The last events of this camera (as /v1/events gives them), newest first.")


class CameraList(BaseModel):
    cameras: list[CameraOut]


router = APIRouter(prefix="/v1", tags=["cameras"])

CameraName = Path(min_length=1, max_length=64, description="The camera's name in the settings.")


@router.get("/cameras", response_model=CameraList)
async def cameras(request: Request) -> CameraList:
    """Every configured camera: whether this server watches it (``state`` "standby": another server does),
    connected, frame rates in and analysed, frames analysed, tracks and events so far, the last error and
    the last few events. URLs are shown with their credentials masked."""
    return CameraList(cameras=request.app.state.cameras.status())


@router.get(
    "/cameras/{name}/snapshot",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The newest frame, JPEG."},
        404: {"model": ErrorBody, "description": "No camera has that name."},
        503: {"model": ErrorBody, "description": "No frame yet, or another server watches the camera."},
    },
)
async def snapshot(request: Request, name: str = CameraName) -> Response:
    """The camera's newest frame as JPEG (503 before its first frame, or when another server watches it)."""
    import anyio

    jpeg = await anyio.to_thread.run_sync(request.app.state.cameras.snapshot, name)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
