"""Domain errors raised by the core. The API maps each to one HTTP status in ``facegate.api.errors``."""

from __future__ import annotations


class FaceGateError(Exception):
    """Base class: ``code`` is a stable machine-readable string, the message is for people."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        #: More fields for the answer's JSON body (e.g. the photos an enrolment left out).
        self.details = dict(details or {})


class InvalidImageError(FaceGateError):
    """Bytes that are not a decodable image, bad base64, or an image of unusable size."""

    code = "invalid_image"


class ImageTooLargeError(FaceGateError):
    code = "image_too_large"


class NoFaceError(FaceGateError):
    code = "no_face"


class InvalidNameError(FaceGateError):
    code = "invalid_name"


class PersonExistsError(FaceGateError):
    code = "person_exists"


class PersonNotFoundError(FaceGateError):
    code = "person_not_found"


class FaceNotFoundError(FaceGateError):
    code = "face_not_found"


class ModelMismatchError(FaceGateError):
    """The gallery holds vectors from another embedding model: never mix embedding spaces."""

    code = "model_mismatch"


class BusyError(FaceGateError):
    """At capacity: the request was refused at once rather than queued without bound."""

    code = "busy"


class DeadlineError(FaceGateError):
    code = "deadline_exceeded"


class ReembedError(FaceGateError):
    code = "reembed_impossible"


class ModelUnavailableError(FaceGateError):
    code = "model_unavailable"


class KeyRequestError(FaceGateError):
    """A bad request to create or revoke an API key."""

    code = "invalid_key_request"


class PoorQualityError(FaceGateError):
    """A face too poor to enrol (blurred, dark, tiny, turned): ``reasons`` says what to fix."""

    code = "poor_quality"

    def __init__(self, message: str, *, field: str | None = None, reasons: tuple[str, ...] = (), details: dict | None = None) -> None:
        super().__init__(message, field=field, details={"reasons": list(reasons), **(details or {})})
        self.reasons = reasons


class LooksLikeError(FaceGateError):
    """The faces to enrol match another enrolled person: one person, one name (unless duplicates are allowed)."""

    code = "looks_like"

    def __init__(self, message: str, *, person_id: int, name: str, similarity: float, field: str | None = None) -> None:
        super().__init__(message, field=field, details={"person_id": person_id, "name": name, "similarity": round(similarity, 6)})
        self.person_id, self.name, self.similarity = person_id, name, similarity


class EncryptionError(FaceGateError):
    """The gallery's encryption key is missing, wrong or malformed."""

    code = "encryption"


class CameraNotFoundError(FaceGateError):
    code = "camera_not_found"


class NoFrameError(FaceGateError):
    """A camera has no frame to show yet (not connected, or watched by another server)."""

    code = "no_frame"


class ChallengeNotFoundError(FaceGateError):
    code = "challenge_not_found"


class ChallengeUsedError(FaceGateError):
    """The challenge was already answered: a challenge works once."""

    code = "challenge_used"


class ChallengeExpiredError(FaceGateError):
    code = "challenge_expired"


class ChallengeRequiredError(FaceGateError):
    """An enrolment without a passed challenge while ``enroll_liveness`` is on."""

    code = "challenge_required"


class EventNotFoundError(FaceGateError):
    """No stored event (or no crop of it) with that id: never was, deleted with its person, or past retention."""

    code = "event_not_found"


class WebhookNotFoundError(FaceGateError):
    code = "webhook_not_found"


class InvalidWebhookError(FaceGateError):
    """A webhook that cannot be: not an http(s) URL, an unknown status or decision in its filter."""

    code = "invalid_webhook"
