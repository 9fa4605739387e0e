"""The versioned API: every face in a photo, people as a resource, verification, health.

Endpoints that take images accept either ``multipart/form-data`` (file uploads) or JSON with
base64 strings, whichever the client finds easier; both are described in the OpenAPI schema.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from facegate import __version__
from facegate.errors import ChallengeRequiredError, FaceNotFoundError, InvalidImageError, InvalidNameError, PersonExistsError
from facegate.gallery.sqlite import Person
from facegate.vision.imageio import b64_to_bytes, decode_image
from facegate.pipeline import Enrolment, Identification
from facegate.security import audit
from .deps import PipelineDep, RowId, WorkerDep
from .schemas import (
    Box,
    DeletedPerson,
    DroppedOut,
    EnrollJSON,
    ErrorBody,
    FaceMatch,
    FaceOut,
    FacesJSON,
    GalleryHealth,
    Health,
    IdentifyJSON,
    IdentifyResponse,
    PeopleList,
    PersonOut,
    PersonSummary,
    VerifyJSON,
    VerifyResponse,
    liveness_out,
    quality_out,
)

router = APIRouter(prefix="/v1", tags=["v1"])
health_router = APIRouter(tags=["health"])
ERRORS = {code: {"model": ErrorBody} for code in (404, 409, 413, 422)}
MAX_IMAGES = 10


def _body_doc(json_model: type[BaseModel], form: dict[str, Any]) -> dict:
    """OpenAPI for an endpoint taking JSON (base64) or multipart (files)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object", "properties": form, "required": list(form)}},
            },
        }
    }


_FILE = {"type": "string", "format": "binary"}
_FILES = {"type": "array", "items": _FILE}


async def json_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The JSON body validated as ``model``; bad JSON or fields are a 422 that never echoes the input."""
    try:
        raw = await request.body()
        data = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestValidationError([{"loc": ("body",), "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_input=False)) from None


async def _read(request: Request, model: type[BaseModel], file_fields: tuple[str, ...]) -> tuple[dict, list[tuple[str, bytes]]]:
    """Parse either body kind into (text fields, [(field label, image bytes)])."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_IMAGES + 2, max_fields=10)
        except StarletteHTTPException as exc:  # Starlette answers a malformed or oversized form with a bare 400
            if exc.status_code != 400:
                raise
            if "images" in file_fields and "files" in str(exc.detail):
                raise InvalidImageError(f"at most {MAX_IMAGES} images per request ({exc.detail})", field="images") from None
            err = {"loc": ("body",), "msg": f"invalid multipart body: {exc.detail}", "type": "multipart_invalid"}
            raise RequestValidationError([err]) from None
        images: list[tuple[str, bytes]] = []
        texts: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key in file_fields:
                    idx = sum(1 for k, _ in images if k.startswith(key))
                    images.append((f"{key}[{idx}]" if key == "images" else key, await value.read()))
            else:
                texts[key] = value
        missing = [f for f in file_fields if not any(label.startswith(f) for label, _ in images)]
        if missing:
            raise RequestValidationError([{"loc": ("body", m), "msg": "Field required (a file upload)", "type": "missing"} for m in missing])
        return texts, images
    obj = await json_body(request, model)
    images = []
    for f in file_fields:
        val = getattr(obj, f)
        if isinstance(val, list):
            images += [(f"{f}[{i}]", b64_to_bytes(v, field=f"{f}[{i}]")) for i, v in enumerate(val)]
        else:
            images.append((f, b64_to_bytes(val, field=f)))
    texts = {k: v for k, v in obj.model_dump().items() if k not in file_fields}
    return texts, images


def _allow_duplicate(texts: dict) -> bool | None:
    """The request's ``allow_duplicate`` (a JSON boolean, or a form field "true"/"false"); None: the setting decides."""
    v = texts.get("allow_duplicate")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "1", "false", "0"):
        return v.lower() in ("true", "1")
    raise RequestValidationError([{"loc": ("body", "allow_duplicate"), "msg": "must be true or false", "type": "bool_parsing"}])


def _dropped(e: Enrolment) -> list[DroppedOut]:
    return [DroppedOut(**d.to_dict()) for d in e.dropped]


def _tally(request: Request, pipeline, action: str, item: int | None = None) -> None:
    """Count a read for the audit log (``audit.Tally``); writes only a window's first entry. In a worker thread."""
    tally = getattr(request.app.state, "tally", None)
    if tally is not None:
        audit.write(pipeline.gallery, tally.note(audit.current_actor.get(), action, item))


def _too_many(images: list) -> None:
    if len(images) > MAX_IMAGES:
        raise InvalidImageError(f"at most {MAX_IMAGES} images per request, got {len(images)}", field="images")


def _summary(p: Person) -> PersonSummary:
    return PersonSummary(id=p.id, name=p.name, created_at=p.created_at, face_count=p.face_count)


def _person_out(p: Person, dropped: list[DroppedOut] | None = None) -> PersonOut:
    return PersonOut(
        **_summary(p).model_dump(),
        dropped=dropped or [],
        faces=[FaceOut(id=f.id, source=f.source, created_at=f.created_at, crop_url=f"/v1/faces/{f.id}/crop" if f.has_crop else None) for f in p.faces],
    )


def _match(i: Identification) -> FaceMatch:
    d = i.decision
    box = i.located.box
    return FaceMatch(
        box=Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3]) if box else None,
        score=i.located.score,
        status=i.status,
        person_id=d.person_id,
        name=d.name,
        similarity=round(d.similarity, 6),
        quality=quality_out(i),
        liveness=liveness_out(i),
    )


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    responses=ERRORS,
    openapi_extra=_body_doc(IdentifyJSON, {"image": _FILE}),
)
async def identify(request: Request, pipeline: PipelineDep, worker: WorkerDep) -> IdentifyResponse:
    """Every face in a photo, each with its box and identity (or unknown)."""
    _, images = await _read(request, IdentifyJSON, ("image",))
    label, data = images[0]
    results = await worker.run(lambda: pipeline.identify_all(decode_image(data, pipeline.limits, field=label)))
    return IdentifyResponse(faces=[_match(r) for r in results], model=pipeline.embedder.model_id, threshold=pipeline.threshold)


@router.post(
    "/people",
    status_code=201,
    response_model=PersonOut,
    responses=ERRORS,
    openapi_extra=_body_doc(EnrollJSON, {"name": {"type": "string"}, "images": _FILES}),
)
async def enroll(request: Request, pipeline: PipelineDep, worker: WorkerDep) -> PersonOut:
    """Enrol a new person from 1..10 images. Photos without a usable face are left out and listed in
    ``dropped``; fewer than ``enroll_min_faces`` usable is 422 and nothing is stored. A taken name is 409;
    faces that match another enrolled person are 409 ``looks_like`` unless ``allow_duplicate``."""
    texts, images = await _read(request, EnrollJSON, ("images",))
    _too_many(images)
    name = texts.get("name")
    if not isinstance(name, str):
        raise RequestValidationError([{"loc": ("body", "name"), "msg": "Field required", "type": "missing"}])
    allow = _allow_duplicate(texts)
    live_face = None
    if pipeline.settings.enroll_liveness:  # a passed liveness challenge (api.challenges), spent here
        cid = texts.get("challenge_id")
        if not isinstance(cid, str) or not cid:
            raise ChallengeRequiredError("enroll_liveness is on: send challenge_id, a liveness challenge the person passed", field="challenge_id")
        live_face = await anyio.to_thread.run_sync(request.app.state.challenges.spend_passed, cid, audit.current_actor.get())

    def work():
        decoded = [decode_image(b, pipeline.limits, field=label) for label, b in images]
        return pipeline.enroll_photos(name, decoded, [label for label, _ in images], allow_duplicate=allow, live_face=live_face)

    try:
        e = await worker.run(work)
        return _person_out(e.person, _dropped(e))
    except (PersonExistsError, InvalidNameError) as exc:
        exc.field = "name"  # the core names the reference API's field (user_name)
        raise


@router.get("/people", response_model=PeopleList)
async def list_people(request: Request, pipeline: PipelineDep, worker: WorkerDep) -> PeopleList:
    """Everyone enrolled (audited: one entry per actor and minute, with a count)."""

    def work():
        people = pipeline.gallery.list_people()
        _tally(request, pipeline, audit.LIST_PEOPLE)
        return people

    people = await worker.run(work)
    return PeopleList(people=[_summary(p) for p in people], count=len(people))


@router.get("/people/{person_id}", response_model=PersonOut, responses=ERRORS)
async def get_person(person_id: RowId, pipeline: PipelineDep, worker: WorkerDep) -> PersonOut:
    return _person_out(await worker.run(pipeline.gallery.get_person, person_id))


@router.delete("/people/{person_id}", response_model=DeletedPerson, responses=ERRORS)
async def delete_person(person_id: RowId, pipeline: PipelineDep, worker: WorkerDep) -> DeletedPerson:
    """Forget a person: their faces, crops and index entries are removed. ``purge`` is "pending" while
    a reader keeps the deleted data in the database's log; it is retried until the reader goes."""

    def work():
        person = pipeline.gallery.delete_person(person_id)
        return person, getattr(pipeline.gallery, "purge_pending", False)

    person, pending = await worker.run(work)
    return DeletedPerson(**_summary(person).model_dump(), purge="pending" if pending else "done")


@router.post(
    "/people/{person_id}/faces",
    response_model=PersonOut,
    responses=ERRORS,
    openapi_extra=_body_doc(FacesJSON, {"images": _FILES}),
)
async def add_faces(person_id: RowId, request: Request, pipeline: PipelineDep, worker: WorkerDep) -> PersonOut:
    """Add 1..10 more faces to an enrolled person: photos without a usable face are left out and listed in
    ``dropped`` (none usable: 422). Faces that match another person better are 409 ``looks_like``."""
    texts, images = await _read(request, FacesJSON, ("images",))
    _too_many(images)
    allow = _allow_duplicate(texts)

    def work():
        decoded = [decode_image(b, pipeline.limits, field=label) for label, b in images]
        return pipeline.add_photos(person_id, decoded, [label for label, _ in images], allow_duplicate=allow)

    e = await worker.run(work)
    return _person_out(e.person, _dropped(e))


@router.get("/faces/{face_id}/crop", responses={404: {"model": ErrorBody}, 200: {"content": {"image/jpeg": {}}}})
async def face_crop(face_id: RowId, request: Request, pipeline: PipelineDep, worker: WorkerDep) -> Response:
    """The aligned 112x112 crop stored for an enrolled face (JPEG). Audited: one entry per actor and
    minute, with a count and the first face ids read."""

    def work():
        data = pipeline.gallery.face_crop(face_id)
        if data:
            _tally(request, pipeline, audit.CROP_READ, face_id)
        return data

    data = await worker.run(work)
    if not data:
        raise FaceNotFoundError(f"no stored crop for face {face_id}")
    return Response(content=data, media_type="image/jpeg")


@router.post(
    "/verify",
    response_model=VerifyResponse,
    responses=ERRORS,
    openapi_extra=_body_doc(VerifyJSON, {"image_a": _FILE, "image_b": _FILE}),
)
async def verify(request: Request, pipeline: PipelineDep, worker: WorkerDep) -> VerifyResponse:
    """Are the main faces of two images the same person?"""
    _, images = await _read(request, VerifyJSON, ("image_a", "image_b"))
    got = dict(images)

    def work():
        a = decode_image(got["image_a"], pipeline.limits, field="image_a")
        b = decode_image(got["image_b"], pipeline.limits, field="image_b")
        return pipeline.verify(a, b)

    v = await worker.run(work)
    return VerifyResponse(same_person=v.same_person, similarity=round(v.similarity, 6), threshold=v.threshold, model=pipeline.embedder.model_id)


@health_router.get("/healthz", response_model=Health)
async def healthz(pipeline: PipelineDep) -> Health:
    people, faces, mode = pipeline.gallery.stats()
    return Health(
        version=__version__,
        model=pipeline.embedder.model_id,
        detector=pipeline.detector.name,
        threshold=pipeline.threshold,
        tta=pipeline.settings.tta,
        top_k=pipeline.settings.top_k,
        landmarks=pipeline.settings.landmarks,
        fallback_detector=pipeline.settings.fallback_detector,
        quality_gate=pipeline.settings.quality_gate,
        liveness=pipeline.settings.liveness,
        gallery=GalleryHealth(people=people, faces=faces, search=mode),
        purge_pending=getattr(pipeline.gallery, "purge_pending", False),
    )
