"""The reference clients' API: ``POST /register`` and ``POST /predict``, with their exact JSON fields."""

from __future__ import annotations

import logging

import numpy as np
from fastapi import APIRouter

from facegate.errors import ChallengeRequiredError
from facegate.vision.align import eye_points
from facegate.vision.imageio import load_b64_image
from .deps import PipelineDep, WorkerDep
from .schemas import DroppedOut, ErrorBody, PredictRequest, PredictResponse, RegisterRequest, RegisterResponse, liveness_out, quality_out

log = logging.getLogger(__name__)
router = APIRouter(tags=["reference API"])
ERRORS = {code: {"model": ErrorBody} for code in (409, 413, 422)}

_IMAGE_FIELDS = ("first_img", "sec_img", "third_img")


@router.post("/register", response_model=RegisterResponse, responses=ERRORS)
async def register(body: RegisterRequest, pipeline: PipelineDep, worker: WorkerDep) -> RegisterResponse:
    """Enrol ``user_name`` from three face images. A photo without a usable face is left out and listed in
    ``dropped``; fewer than ``enroll_min_faces`` usable is 422 and nothing is stored. Faces that match
    another enrolled person are 409 ``looks_like`` unless ``allow_duplicate``."""

    def work():
        images = [load_b64_image(getattr(body, f), pipeline.limits, field=f) for f in _IMAGE_FIELDS]
        return pipeline.enroll_photos(body.user_name, images, _IMAGE_FIELDS, allow_duplicate=body.allow_duplicate)

    if pipeline.settings.enroll_liveness:  # the reference fields carry no challenge: enrol through /v1/people
        raise ChallengeRequiredError("enroll_liveness is on: register through POST /v1/people with a passed challenge_id")

    e = await worker.run(work)
    person = e.person
    log.info("registered person %s with %d faces (%d photos left out)", person.id, person.face_count, len(e.dropped))
    left_out = f" ({', '.join(d.field for d in e.dropped)} left out)" if e.dropped else ""
    return RegisterResponse(
        user_name=person.name,
        person_id=person.id,
        faces=person.face_count,
        message=f"{person.name} registered with {person.face_count} faces{left_out}",
        dropped=[DroppedOut(**d.to_dict()) for d in e.dropped],
    )


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(body: PredictRequest, pipeline: PipelineDep, worker: WorkerDep) -> PredictResponse:
    """Who is in this face crop. The two eye points are used only if the server's detector finds no face."""
    coords = (body.keypoints_x1, body.keypoints_y1, body.keypoints_x2, body.keypoints_y2)
    eyes = eye_points(*coords) if all(c is not None for c in coords) else None
    if eyes is not None and not np.all(np.isfinite(eyes)):
        eyes = None

    def work():
        image = load_b64_image(body.image, pipeline.limits, field="image")
        return pipeline.identify_face(image, eyes, field="image", crop=True)

    ident = await worker.run(work)
    d = ident.decision
    return PredictResponse(
        user_name=d.name if d.known else "unknown",
        similarity=round(d.similarity, 6),
        status=ident.status,
        person_id=d.person_id,
        threshold=ident.threshold,
        landmarks=ident.located.landmarks,
        quality=quality_out(ident),
        liveness=liveness_out(ident),
    )
