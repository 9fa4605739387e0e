"""Editing what is enrolled: rename a person, delete one of their faces (admin routes, audited).

- ``PATCH /v1/people/{id}`` with ``{"name": ...}``: the rules of enrolment: the name is cleaned and
  checked as at enrolment (422 ``invalid_name``), and a name that looks like another person's is 409
  ``person_exists`` naming them (the gallery's own check, ``ensure_name_free``); a person may take their
  own name in another case.
- ``DELETE /v1/faces/{id}``: the face's vector, crop and index entry are removed, as a person's are.
  The person is kept, with the faces left, none possibly: they keep their name (and their id, in every
  export and audit entry) and can be given faces again with ``POST /v1/people/{id}/faces``; a person
  with no face is never an answer. ``DELETE /v1/people/{id}`` forgets them.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from facegate.errors import InvalidNameError, PersonExistsError
from .deps import PipelineDep, RowId, WorkerDep
from .errors import error_response
from .limits import is_json
from .schemas import ErrorBody, PersonOut, PersonSummary
from .v1 import _person_out, _summary, json_body

router = APIRouter(prefix="/v1", tags=["v1"])
ERRORS = {code: {"model": ErrorBody} for code in (404, 409, 415, 422)}


class RenameJSON(BaseModel):
    """The fields a person may change: their name (no other field is taken)."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(..., description="The new name (unique as it looks, case-insensitive; rules of enrolment).")


class DeletedFace(BaseModel):
    id: int = Field(..., description="The face deleted.")
    person: PersonSummary = Field(..., description="Its person as they are now (kept, with the faces left; 0 possibly).")
    purge: Literal["done", "pending"] = Field(
        "done", description='"pending": a reader (a backup) holds the database; the deleted data is purged when it goes.'
    )


async def _json_body(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
    """The body as ``model``; a body of another type is a 415 answer, bad JSON or fields a 422."""
    ctype = request.headers.get("content-type", "")
    if not is_json(ctype):
        shown = ctype.split(";", 1)[0].strip()[:80] or "none"
        return error_response(415, "unsupported_media_type", f"{request.url.path} takes application/json (Content-Type), not {shown}")
    return await json_body(request, model)


@router.patch(
    "/people/{person_id}",
    response_model=PersonOut,
    responses=ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": RenameJSON.model_json_schema()}}}},
)
async def rename_person(person_id: RowId, request: Request, pipeline: PipelineDep, worker: WorkerDep) -> PersonOut:
    """Rename a person: 422 for a name enrolment would refuse, 409 for one that looks like another
    person's (case, width and look-alike letters count as the same name), 404 for nobody."""
    body = await _json_body(request, RenameJSON)
    if isinstance(body, JSONResponse):
        return body
    g = pipeline.gallery
    try:
        person = await worker.run(g.rename_person, person_id, body.name, pipeline.settings.max_name_length)
    except (PersonExistsError, InvalidNameError) as exc:
        exc.field = "name"  # the core names the reference API's field (user_name)
        raise
    return _person_out(person)


@router.delete("/faces/{face_id}", response_model=DeletedFace, responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}})
async def delete_face(face_id: RowId, pipeline: PipelineDep, worker: WorkerDep) -> DeletedFace:
    """Forget one face: its vector, crop and index entry. Its person is kept with the faces left (none,
    possibly: then never an answer, their name still theirs); 404 for an unknown face."""

    def work():
        person = pipeline.gallery.delete_face(face_id)
        return person, getattr(pipeline.gallery, "purge_pending", False)

    person, pending = await worker.run(work)
    return DeletedFace(id=face_id, person=_summary(person), purge="pending" if pending else "done")
