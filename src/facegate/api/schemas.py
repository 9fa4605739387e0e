"""Request and response bodies. The legacy ones keep the reference clients' exact field names."""

from __future__ import annotations

from typing import Literal

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

#: A pixel coordinate: a JSON number (finite).
Number = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- reference (seed) API
class RegisterRequest(_Strict):
    user_name: StrictStr = Field(..., description="The person's name (unique, case-insensitive).")
    first_img: StrictStr = Field(..., description="Base64 image (a data:image/...;base64, prefix is accepted).")
    sec_img: StrictStr
    third_img: StrictStr
    allow_duplicate: StrictBool | None = Field(
        None, description="Enrol although the faces match another enrolled person (default: the allow_duplicates setting)."
    )


class DroppedOut(BaseModel):
    """A photo left out of an enrolment: the others were enrolled."""

    field: str
    code: Literal["no_face", "poor_quality"]
    reasons: list[str]


class RegisterResponse(BaseModel):
    status: Literal["registered"] = "registered"
    user_name: str
    person_id: int
    faces: int
    message: str
    dropped: list[DroppedOut] = Field([], description="Photos left out (no face, or too poor); the others were enrolled.")


class PredictRequest(_Strict):
    file_name: StrictStr | None = Field(None, description="A label for logs only; never used as a path.")
    image: StrictStr = Field(..., description="Base64 face crop (or a whole photo).")
    keypoints_x1: Number | None = Field(None, description="Eye centre on the image's left, x in crop pixels.")
    keypoints_y1: Number | None = None
    keypoints_x2: Number | None = Field(None, description="Eye centre on the image's right, x in crop pixels.")
    keypoints_y2: Number | None = None


class QualityOut(BaseModel):
    """The face's measured quality (``facegate.vision.quality``) and, when it is too poor, why."""

    ok: bool = Field(..., description="False: below the quality floor, the answer is 'retry'.")
    reasons: list[str] = Field(default_factory=list, description="What is wrong, for people (e.g. 'too dark: ...').")
    face_px: float = Field(..., description="Side of the aligned face region in the image, pixels.")
    det_score: float | None = None
    sharpness: float = Field(..., description="Variance of the Laplacian of the aligned crop over its contrast (x100).")
    brightness: float = Field(..., description="Mean grey level of the face, 0..255.")
    clipped: float = Field(..., description="Share of the face's pixels black or white.")
    yaw: float | None = Field(None, description="Head turn estimated from the keypoints, degrees.")
    roll: float = Field(..., description="Eye-line tilt, degrees.")
    feature_norm: float | None = Field(None, description="Embedding feature norm (low for occluded or poor faces).")
    coverage: float = Field(1.0, description="Share of the aligned face region inside the image sent (a tight crop cuts it).")


def quality_out(ident) -> QualityOut | None:
    """The quality part of an answer, from a pipeline ``Identification``."""
    q = ident.located.quality
    if q is None:
        return None
    return QualityOut(ok=not ident.retry, reasons=list(ident.verdict.reasons) if ident.verdict else [], **q.to_dict())


class LivenessModelOut(BaseModel):
    name: str = Field(..., description="An imported liveness model (`facegate models import-liveness`).")
    score: float = Field(..., description="This model's probability that the face is live.")


class LivenessOut(BaseModel):
    """The passive liveness check of a face (imported MiniFASNet models, their softmaxes summed)."""

    live: bool = Field(..., description="The live class wins the models' summed softmax.")
    score: float = Field(..., description="The fused probability that the face is live (mean over the models).")
    models: list[LivenessModelOut]


def liveness_out(ident) -> LivenessOut | None:
    """The liveness part of an answer (set with liveness = "passive"), from a pipeline ``Identification``."""
    return None if ident.liveness is None else LivenessOut(**ident.liveness.to_dict())


class PredictResponse(BaseModel):
    user_name: str = Field(..., description='The recognised name, or "unknown".')
    similarity: float = Field(..., description="Cosine similarity of the winner's nearest face (or of the nearest face when unknown).")
    status: Literal["recognized", "unknown", "retry", "spoof", "challenge_required"] = Field(
        ..., description='"retry": the face is too poor to name (see quality.reasons); send another frame. '
        '"spoof": judged a print or a screen by the passive liveness check (liveness = "passive"); never named. '
        '"challenge_required": liveness = "challenge" names a face only through POST /v1/challenges; never named here.'
    )
    person_id: int | None
    threshold: float
    landmarks: Literal["detector", "eyes"] = Field(..., description="What aligned the face: a detector on the server (YuNet's five points, or BlazeFace's) or the client's eye points alone.")
    quality: QualityOut | None = Field(None, description="Added field: the face's quality signals.")
    liveness: LivenessOut | None = Field(None, description='Added field, with liveness = "passive": the passive liveness check.')


# ---------------------------------------------------------------- v1
class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class FaceMatch(BaseModel):
    box: Box | None
    score: float | None = Field(None, description="Detector confidence.")
    status: Literal["recognized", "unknown", "retry", "spoof", "challenge_required", "challenge_failed"] = Field(
        ..., description='"retry": too poor a face to name (see quality); "spoof": judged a print or a screen (see liveness), never named; '
        '"challenge_required" (liveness = "challenge"): named only through POST /v1/challenges; "challenge_failed": its challenge failed, never named.'
    )
    person_id: int | None
    name: str | None
    similarity: float
    quality: QualityOut | None = None
    liveness: LivenessOut | None = Field(None, description='With liveness = "passive": the passive liveness check.')


class IdentifyJSON(_Strict):
    image: StrictStr


class IdentifyResponse(BaseModel):
    faces: list[FaceMatch]
    model: str
    threshold: float


class EnrollJSON(_Strict):
    name: StrictStr
    images: list[StrictStr] = Field(..., min_length=1)
    allow_duplicate: StrictBool | None = Field(None, description="Enrol although the faces match another enrolled person.")
    challenge_id: StrictStr | None = Field(None, max_length=64, description="With enroll_liveness: a liveness challenge the person passed.")


class FacesJSON(_Strict):
    images: list[StrictStr] = Field(..., min_length=1)
    allow_duplicate: StrictBool | None = Field(None, description="Add although the faces match another person better.")


class VerifyJSON(_Strict):
    image_a: StrictStr
    image_b: StrictStr


class VerifyResponse(BaseModel):
    same_person: bool
    similarity: float
    threshold: float
    model: str


class FaceOut(BaseModel):
    id: int
    source: str | None
    created_at: str
    crop_url: str | None


class PersonSummary(BaseModel):
    id: int
    name: str
    created_at: str
    face_count: int


class PersonOut(PersonSummary):
    faces: list[FaceOut]
    dropped: list[DroppedOut] = Field([], description="Photos of this request left out (no face, or too poor).")


class DeletedPerson(PersonSummary):
    purge: Literal["done", "pending"] = Field(
        "done",
        description='"pending": a reader (a backup) holds the database, so the deleted data is still in its -wal file; '
        "it is purged when the reader goes (GET /healthz: purge_pending).",
    )


class PeopleList(BaseModel):
    people: list[PersonSummary]
    count: int


class GalleryHealth(BaseModel):
    people: int
    faces: int
    search: Literal["exact", "pq", "hnsw"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    model: str
    detector: str
    threshold: float
    tta: Literal["none", "concat", "sum", "normsum"]
    top_k: int
    landmarks: str = Field(..., description="Alignment points: yunet (5) or blazeface (4).")
    fallback_detector: str = Field(..., description="Detector tried when BlazeFace finds no face, or none.")
    quality_gate: bool = Field(..., description="Poor faces refused at enrolment and answered 'retry' at identification.")
    liveness: Literal["off", "passive", "challenge", "both"] = Field(
        "off", description="The liveness setting: with challenge or both, the web app's live page names a face only through a challenge."
    )
    gallery: GalleryHealth
    purge_pending: bool = Field(
        False, description="A deleted person's data is still in the database's -wal file: a reader (a backup) blocks its purge, retried until it goes."
    )


class ErrorBody(BaseModel):
    detail: str
    code: str
    field: str | None = None


# ---------------------------------------------------------------- administration
class AuditEntryOut(BaseModel):
    id: int
    at: str = Field(..., description="UTC time, ISO 8601.")
    actor: str = Field(..., description="key:<key id>@<address>, open@<address> (no keys yet), or cli:<user>.")
    action: str = Field(
        ...,
        description="enroll, add_faces, delete, delete_face, rename, reembed, export, import, key_create, key_revoke; "
        "counted (detail.count, one entry per actor and minute): crop_read, list_people, auth_failed.",
    )
    person_id: int | None = None
    detail: dict


class AuditLog(BaseModel):
    entries: list[AuditEntryOut]
    next_before: int | None = Field(None, description="Pass as ?before= for the next (older) page.")


class ExportFace(BaseModel):
    id: int
    source: str | None
    created_at: str
    embedding: str = Field(..., description="Unit vector, little-endian float32, base64.")
    crop: str | None = Field(
        None, description="The aligned 112x112 crop (JPEG, base64) with ?crops=true (what a later re-embedding needs); else null."
    )


class ExportPerson(BaseModel):
    id: int
    name: str
    created_at: str
    faces: list[ExportFace]


class GalleryExport(BaseModel):
    model: str
    dim: int
    people: list[ExportPerson]
