"""The gallery's interface, and the choice of backend from the settings.

Two backends implement ``GalleryBackend``: the embedded one (``facegate.gallery.sqlite.Gallery``: SQLite
+ its search index in the data directory, for one machine) and ``facegate.gallery.postgres.PgGallery``
(PostgreSQL + pgvector, for many stateless servers sharing one database). ``settings.gallery``
picks: None is the embedded gallery in ``data_dir``, a ``postgresql://`` URL is PostgreSQL.
API keys and the audit log live with the gallery, so the key store follows the same choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from facegate.security.audit import AuditEntry
from facegate.config import Settings
from .sqlite import DB_NAME, Gallery, NewFace, Person
from facegate.security.keys import ApiKey, KeyStore
from facegate.rank import Neighbour


@runtime_checkable
class GalleryBackend(Protocol):
    """What the pipeline, the API and the CLI use of a gallery; both backends give the same answers."""

    model_id: str
    dim: int

    def add_person(self, name: str, faces: Sequence[NewFace], model_id: str, max_name_length: int = 128) -> Person: ...
    def add_faces(self, person_id: int, faces: Sequence[NewFace], model_id: str) -> Person: ...
    def delete_person(self, person_id: int) -> Person: ...
    def rename_person(self, person_id: int, name: str, max_name_length: int = 128) -> Person: ...
    def delete_face(self, face_id: int) -> Person: ...
    def ensure_name_free(self, name: str) -> None: ...
    def get_person(self, person_id: int) -> Person: ...
    def find_person(self, name: str) -> Person | None: ...
    def list_people(self) -> list[Person]: ...
    def face_crop(self, face_id: int) -> bytes | None: ...
    def stored_crops(self) -> list[tuple[int, bytes | None]]: ...
    def reembed(self, model_id: str, dim: int, vectors: dict[int, np.ndarray]) -> None: ...
    def search(self, query: np.ndarray, k: int = 5, *, exact: bool | None = None) -> list[Neighbour]: ...
    def stats(self) -> tuple[int, int, str]: ...
    def record(self, action: str, person_id: int | None = None, **detail: object) -> None: ...
    def audit_log(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]: ...
    def export(self) -> list[tuple[Person, list[tuple[int, str | None, str, bytes]]]]: ...
    def seal_existing(self, key: str) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

    @property
    def face_count(self) -> int: ...
    @property
    def person_count(self) -> int: ...
    @property
    def encrypted(self) -> bool: ...


class KeyBackend(Protocol):
    """API keys: ``facegate.security.keys.KeyStore`` (SQLite) or ``facegate.gallery.postgres.PgKeyStore``."""

    def create(self, role: str, name: str = "") -> tuple[ApiKey, str]: ...
    def revoke(self, key_id: str) -> ApiKey: ...
    def list(self) -> list[ApiKey]: ...
    def enforcing(self) -> bool: ...
    def check(self, key: str) -> tuple[str, str] | None: ...
    def audit_log(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]: ...
    def close(self) -> None: ...


def _shared_options(settings: Settings) -> dict:
    """The gallery settings both backends take."""
    return dict(
        exact_search_max=settings.exact_search_max,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        encryption_key=settings.encryption_key,
    )


def _pg_options(settings: Settings) -> dict:
    return dict(_shared_options(settings), data_dir=settings.data_dir, ef_search=settings.pg_ef_search, pool_size=settings.pg_pool_size)


def open_gallery(settings: Settings, model_id: str, dim: int) -> GalleryBackend:
    """The gallery the settings name, opened for ``model_id`` (created, or migrated, if need be)."""
    if settings.gallery:
        from .postgres import PgGallery

        return PgGallery(settings.gallery, model_id, dim, **_pg_options(settings))
    return Gallery(
        settings.data_dir,
        model_id,
        dim,
        **_shared_options(settings),
        hnsw_ef=settings.hnsw_ef,
        ann_index=settings.ann_index,
        pq_rerank=settings.pq_rerank,
    )


def open_existing_gallery(settings: Settings) -> GalleryBackend | None:
    """The gallery the settings name, with the model it was made with (no model loaded), or None if empty/absent."""
    if settings.gallery:
        from .postgres import PgGallery

        return PgGallery.open_existing(settings.gallery, **_pg_options(settings))
    return Gallery.open_existing(settings.data_dir, encryption_key=settings.encryption_key)


def open_keys(settings: Settings) -> KeyBackend:
    """The API key store beside the gallery the settings name."""
    if settings.gallery:
        from .postgres import PgKeyStore

        return PgKeyStore(settings.gallery)
    return KeyStore(settings.data_dir / DB_NAME)


def describe(settings: Settings) -> str:
    """Where the gallery lives, for messages (a URL's password hidden)."""
    if settings.gallery:
        from .postgres import redact

        return redact(settings.gallery)
    return str(settings.data_dir)


def keys_for(gallery: GalleryBackend) -> KeyBackend:
    """The API key store beside an open gallery (its database)."""
    from .postgres import PgGallery

    if isinstance(gallery, PgGallery):
        from .postgres import PgKeyStore

        return PgKeyStore(gallery.url)
    return KeyStore(gallery.data_dir / DB_NAME)


def events_for(gallery: GalleryBackend, encryption_key: str | None = None):
    """The event log and webhooks beside an open gallery (its database; sealed with its key)."""
    from .postgres import PgGallery

    if isinstance(gallery, PgGallery):
        from .pg_events import PgEventStore

        return PgEventStore(gallery.url)
    from .events import SqliteEventStore

    return SqliteEventStore(gallery.data_dir / DB_NAME, encryption_key=encryption_key)


def challenges_for(gallery: GalleryBackend, encryption_key: str | None = None):
    """The liveness challenges beside an open gallery (its database), shared by every process on it."""
    from .postgres import PgGallery

    if isinstance(gallery, PgGallery):
        from .pg_challenges import PgChallengeStore

        return PgChallengeStore(gallery.url)
    from .challenges import SqliteChallengeStore

    return SqliteChallengeStore(gallery.data_dir / DB_NAME, encryption_key=encryption_key)
