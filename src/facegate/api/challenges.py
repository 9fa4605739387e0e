"""The active liveness challenge: ``POST /v1/challenges`` and ``POST /v1/challenges/{id}/answer``.

A client asks for a challenge (two random actions among blink, turn_left, turn_right; single use; it
expires after ``challenge_ttl_s``), has the person do them, and sends the frames it took: one or two
neutral frames (looking at the camera, eyes open: before and after the actions) and one frame per
action. The server re-checks them itself (``Pipeline.challenge_frames``: the face mesh's eye aspect
ratio, the head's yaw, the same face in every frame) and answers like ``/v1/identify`` for the first
neutral frame's face, named only when the challenge passed, with ``challenge: {passed, actions,
reasons}``. A client key may call both routes; a challenge can be answered only by the key that asked.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, StrictStr
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from facegate.security import audit
from facegate.security.challenges import ChallengeStore
from facegate.vision.challenge import ACTIONS, describe
from facegate.vision.imageio import b64_to_bytes, decode_image
from .deps import PipelineDep, WorkerDep
from .schemas import ErrorBody, FaceMatch, IdentifyResponse, _Strict
from .v1 import _FILE, _FILES, _match, json_body
from pydantic import BaseModel

router = APIRouter(prefix="/v1", tags=["v1"])

#: Neutral frames an answer may carry (before and after the actions).
MAX_NEUTRAL = 2
#: Words a client may show the person for each action.
PROMPTS = {"blink": "Blink", "turn_left": "Turn your head to your left", "turn_right": "Turn your head to your right"}
Action = Literal["blink", "turn_left", "turn_right"]


class ChallengeOut(BaseModel):
    id: str = Field(..., description="The challenge's id: answer it once, before expires_at.")
    actions: list[Action] = Field(..., description="What the person must do, in this order.")
    prompts: list[str] = Field(..., description="The actions in words to show the person.")
    expires_at: dt.datetime
    expires_in_s: float


class AnswerJSON(_Strict):
    neutral: list[StrictStr] = Field(..., min_length=1, max_length=MAX_NEUTRAL, description="Base64 frames looking at the camera, eyes open.")
    frames: dict[Action, StrictStr] = Field(..., description="A base64 frame per action, taken at its peak (eyes shut, head turned).")


class FrameOut(BaseModel):
    frame: str
    face: bool
    eye_aspect_ratio: float | None = None
    yaw: float | None = Field(None, description="Degrees; > 0 turned to the person's own right, < 0 to their left (frames as the camera took them, not mirrored).")


class ChallengeResult(BaseModel):
    passed: bool
    actions: list[Action]
    reasons: list[str] = Field(..., description="Why it failed, per action or frame, in words true of the frames; empty when it passed.")
    frames: list[FrameOut]


class AnswerResponse(IdentifyResponse):
    faces: list[FaceMatch] = Field(..., description="The first neutral frame's main face; named only when the challenge passed.")
    challenge: ChallengeResult


def store(request: Request) -> ChallengeStore:
    return request.app.state.challenges


@router.post("/challenges", response_model=ChallengeOut, status_code=201, responses={503: {"model": ErrorBody}})
async def new_challenge(request: Request) -> ChallengeOut:
    """A fresh challenge: two distinct random actions, single use, expiring in ``challenge_ttl_s``."""
    c = await anyio.to_thread.run_sync(store(request).new, audit.current_actor.get())  # a database write
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    return ChallengeOut(
        id=c.id,
        actions=list(c.actions),
        prompts=[PROMPTS[a] for a in c.actions],
        expires_at=dt.datetime.fromtimestamp(c.expires_at, dt.timezone.utc),
        expires_in_s=round(c.expires_at - now, 3),
    )


async def _frames(request: Request) -> tuple[list[tuple[str, bytes]], dict[str, tuple[str, bytes]]]:
    """(neutral frames, action -> frame) from JSON (base64) or multipart (``neutral`` files, a file per action)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_NEUTRAL + len(ACTIONS), max_fields=0)
        except StarletteHTTPException as exc:
            if exc.status_code != 400:
                raise
            raise RequestValidationError([{"loc": ("body",), "msg": f"invalid multipart body: {exc.detail}", "type": "multipart_invalid"}]) from None
        neutral: list[tuple[str, bytes]] = []
        acted: dict[str, tuple[str, bytes]] = {}
        errs = []
        for key, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue
            if key == "neutral":
                neutral.append((f"neutral[{len(neutral)}]", await value.read()))
            elif key in ACTIONS and key not in acted:
                acted[key] = (f"frames.{key}", await value.read())
            else:
                errs.append({"loc": ("body", key), "msg": "unexpected file (neutral, blink, turn_left, turn_right; one each but neutral)", "type": "extra_forbidden"})
        if not 1 <= len(neutral) <= MAX_NEUTRAL:
            errs.append({"loc": ("body", "neutral"), "msg": f"1 to {MAX_NEUTRAL} neutral frames needed, got {len(neutral)}", "type": "value_error"})
        if errs:
            raise RequestValidationError(errs)
        return neutral, acted
    body = await json_body(request, AnswerJSON)
    neutral = [(f"neutral[{i}]", b64_to_bytes(v, field=f"neutral[{i}]")) for i, v in enumerate(body.neutral)]
    acted = {a: (f"frames.{a}", b64_to_bytes(v, field=f"frames.{a}")) for a, v in body.frames.items()}
    return neutral, acted


@router.post(
    "/challenges/{challenge_id}/answer",
    response_model=AnswerResponse,
    responses={code: {"model": ErrorBody} for code in (404, 409, 410, 413, 422)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": AnswerJSON.model_json_schema()},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"neutral": _FILES, **{a: _FILE for a in ACTIONS}}, "required": ["neutral"]}
                },
            },
        }
    },
)
async def answer(challenge_id: str, request: Request, pipeline: PipelineDep, worker: WorkerDep) -> AnswerResponse:
    """Answer a challenge with its frames: passed only when every action shows in its frame and one face is in
    all of them; then the face is identified. 404 unknown, 409 already answered, 410 expired."""
    if len(challenge_id) > 64:
        raise RequestValidationError([{"loc": ("path", "challenge_id"), "msg": "at most 64 characters", "type": "string_too_long"}])
    neutral, acted = await _frames(request)
    challenges = store(request)
    owner = audit.current_actor.get()

    def work():
        n_imgs = [decode_image(b, pipeline.limits, field=label) for label, b in neutral]
        a_imgs = {a: decode_image(b, pipeline.limits, field=label) for a, (label, b) in acted.items()}
        c = challenges.take(challenge_id, owner)  # spent from here on, whatever the verdict
        labels = [label for label, _ in neutral] + [acted[a][0] for a in c.actions if a in acted]
        raw = [b for _, b in neutral] + [acted[a][1] for a in c.actions if a in acted]
        old = challenges.replayed(raw)
        if old:
            reasons = tuple(f"{labels[i]}: the same frame was sent in an earlier answer (a replay)" for i in old)
            return c, labels, None, reasons
        got = pipeline.challenge_frames(c.actions, n_imgs, {a: a_imgs[a] for a in c.actions if a in a_imgs})
        if got.vector is not None:
            challenges.passed(c.id, owner, got.vector)
        return c, labels, got, ()

    c, labels, got, replay = await worker.run(work)
    if got is None:
        result = ChallengeResult(passed=False, actions=list(c.actions), reasons=list(replay), frames=[])
        faces = []
    else:
        frames = [FrameOut(frame=label, **describe(r)) for label, r in zip(labels, got.readings)]
        result = ChallengeResult(passed=got.outcome.passed, actions=list(c.actions), reasons=list(got.outcome.reasons), frames=frames)
        faces = [_match(i) for i in got.faces]
    return AnswerResponse(faces=faces, model=pipeline.embedder.model_id, threshold=pipeline.threshold, challenge=result)
