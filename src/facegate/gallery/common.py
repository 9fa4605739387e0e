"""What both gallery backends (SQLite ``sqlite.Gallery``, PostgreSQL ``postgres.PgGallery``) share:
the records they return, the name and vector checks, the model-mismatch errors and the counts."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from facegate.errors import InvalidNameError, ModelMismatchError
from .names import check_visible
from .names import name_key as _look_key


@dataclass(frozen=True)
class FaceRecord:
    id: int
    source: str | None
    created_at: str
    has_crop: bool


@dataclass(frozen=True)
class Person:
    """A person; ``faces`` is filled by ``get_person`` and left empty in listings (``face_count`` is always set)."""

    id: int
    name: str
    created_at: str
    face_count: int
    faces: tuple[FaceRecord, ...] = ()


@dataclass(frozen=True)
class NewFace:
    """A face ready to store: its unit vector, and optionally its aligned crop (JPEG) and a label."""

    embedding: np.ndarray
    crop_jpeg: bytes | None = None
    source: str | None = None


def clean_name(name: str, max_length: int = 128) -> str:
    """Normalise a person's name (NFC, trimmed) and refuse empty, overlong or control-character names."""
    if not isinstance(name, str):
        raise InvalidNameError("name must be a string", field="user_name")
    if any("\ud800" <= c <= "\udfff" for c in name):  # JSON's "\ud800" escape: not a character, cannot be stored
        raise InvalidNameError("name must not contain lone surrogates (\\ud800-\\udfff are not characters)", field="user_name")
    n = unicodedata.normalize("NFC", name).strip()
    if not n:
        raise InvalidNameError("name must not be empty", field="user_name")
    if len(n) > max_length:
        raise InvalidNameError(f"name is {len(n)} characters; the limit is {max_length}", field="user_name")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in n):
        raise InvalidNameError("name must not contain control characters", field="user_name")
    check_visible(n)  # U+3164, U+2800, '---': no one's name
    return n


def name_key(name: str) -> str:
    """Uniqueness key of a name: how it looks (``gallery.names``: NFKC case-folded, TR39 skeleton), so
    look-alikes in any script, width or case are one name."""
    return _look_key(name)


def now() -> str:
    """The time of a write, as stored (UTC, ISO 8601, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def mixed_models_error(others: Sequence[tuple[str, int]], active: str, elsewhere: str) -> ModelMismatchError:
    """A gallery holding (model, faces) of ``others`` cannot serve ``active`` (either backend)."""
    found = ", ".join(f"{m} ({n} faces)" for m, n in others)
    return ModelMismatchError(
        f"this gallery holds embeddings made by {found}, but the active model is {active}; "
        f"serve with the gallery's model (--model/--tta), re-embed the gallery with "
        f"`facegate gallery reembed --model NAME --tta MODE`, or {elsewhere}"
    )


def reembedded_error(stored: str, active: str) -> ModelMismatchError:
    """Another process re-embedded the gallery while this one runs with the old model (either backend)."""
    return ModelMismatchError(
        f"the gallery now holds embeddings of {stored} (re-embedded?), not of the active model {active}; restart with that model"
    )


def check_vectors(faces: Sequence[NewFace], dim: int, model_id: str) -> np.ndarray:
    """The faces' vectors as one float32 matrix, refused unless they fit the gallery (any backend)."""
    if not faces:
        raise ValueError("at least one face is needed")
    vecs = np.vstack([np.asarray(f.embedding, dtype=np.float32).reshape(1, -1) for f in faces])
    if vecs.shape[1] != dim:
        raise ModelMismatchError(f"embedding has {vecs.shape[1]} dimensions; this gallery's model {model_id} has {dim}")
    if not np.all(np.isfinite(vecs)):
        raise ValueError("embedding contains non-finite values")
    return vecs


class GalleryCounts:
    """``face_count``, ``person_count`` and ``search_mode`` from a backend's ``stats()``."""

    def stats(self) -> tuple[int, int, str]:
        raise NotImplementedError

    @property
    def face_count(self) -> int:
        return self.stats()[1]

    @property
    def person_count(self) -> int:
        return self.stats()[0]

    @property
    def search_mode(self) -> str:
        return self.stats()[2]
