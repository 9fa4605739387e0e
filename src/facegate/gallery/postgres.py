"""The gallery in PostgreSQL with pgvector: many stateless FaceGate servers share one database.

Same interface as the embedded ``facegate.gallery.sqlite.Gallery`` (``facegate.gallery.backends.GalleryBackend``):

- PostgreSQL is the only state. No process keeps a copy of the gallery: every search, count and
  key check is a query, so an enrolment committed through one server is seen by every other
  server's next request, and a server can die at any moment without losing anything.
- Every write is one transaction that first locks the single ``gallery_state`` row (writers queue
  in one order, never deadlock; the face and people counts stay exact) and writes its audit row.
- Nearest neighbours: exact (a sequential scan) up to ``exact_search_max`` faces, else the pgvector
  HNSW index (cosine), an expression index on ``embedding::vector(dim)`` for the gallery's model.
- The schema is created and migrated by FaceGate (``pg_migrations/NNNN_*.sql``, a
  ``schema_version`` table), under an advisory lock so servers starting together do not race.
- Encryption at rest is refused here: pgvector must read the vectors to index and compare them,
  so sealed vectors could only be searched by loading them all into every server (a per-process
  copy of the gallery). Use the database's own storage encryption instead (docs/deployment.md, PostgreSQL).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from facegate.security import audit
from facegate.errors import EncryptionError, FaceNotFoundError, KeyRequestError, ModelMismatchError, PersonNotFoundError
from .names import exists_error, rekeyed
from .common import FaceRecord, GalleryCounts, NewFace, Person, check_vectors, clean_name, mixed_models_error, name_key, reembedded_error
from .common import now as _now
from .purge import PgPurger
from facegate.security.keys import ApiKey, matches, new_secret, parse, plain_key, secret_hash
from facegate.rank import Neighbour

log = logging.getLogger(__name__)

#: Key of the session advisory lock held while migrating and preparing the schema.
MIGRATION_LOCK = 0x46616365_47617465 & 0x7FFFFFFFFFFFFFFF  # "FaceGate"


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def is_postgres_url(value: str | None) -> bool:
    return bool(value) and value.split("://", 1)[0] in ("postgresql", "postgres")


@contextmanager
def _connect(url: str):
    """A connection (autocommit); an unreachable database is a ``ConnectionError`` naming it (password hidden)."""
    psycopg = _import_psycopg()
    try:
        con = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ConnectionError(f"cannot connect to the PostgreSQL gallery at {redact(url)}: {exc}") from None
    with con:
        yield con


def _import_psycopg():
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the dependencies are declared
        raise RuntimeError("the PostgreSQL backend needs psycopg[binary], psycopg_pool and pgvector") from exc
    return psycopg


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    out = []
    for f in resources.files("facegate.gallery").joinpath("pg_migrations").iterdir():
        m = re.match(r"^(\d{4})_.*\.sql$", f.name)
        if m:
            out.append((int(m.group(1)), f.name, f.read_text(encoding="utf-8")))
    return sorted(out)


def migrate(con) -> list[int]:
    """Apply pending migrations on ``con`` (autocommit), each in its own transaction; returns those applied.

    The caller holds the advisory lock, so two servers never apply the same migration.
    """
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
    done = {r[0] for r in con.execute("SELECT version FROM schema_version").fetchall()}
    applied = []
    shipped = migrations()
    newest = max(v for v, _, _ in shipped)
    if done and max(done) > newest:
        raise RuntimeError(
            f"the database's schema is version {max(done)}, newer than this FaceGate knows ({newest}); upgrade FaceGate"
        )
    for version, name, sql in shipped:
        if version in done:
            continue
        with con.transaction():
            con.execute(sql)
            con.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
        log.info("applied PostgreSQL migration %s", name)
        applied.append(version)
    return applied


def migrated_pool(url: str, name: str, max_size: int = 4):
    """Migrate the database under the advisory lock, then open a small autocommit pool of the caller's own.

    Keys, events and challenges each keep their pool apart from searches', so that none waits behind them.
    """
    _import_psycopg()
    from psycopg_pool import ConnectionPool

    with _connect(url) as con:
        con.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            migrate(con)
        finally:
            con.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return ConnectionPool(
        url, min_size=1, max_size=max_size, kwargs={"autocommit": True}, check=ConnectionPool.check_connection, open=True,
        name=name,
    )


def _audit(cur, action: str, person_id: int | None = None, **detail: object) -> None:
    """An audit row inside the caller's transaction (as ``facegate.security.audit.record`` does for SQLite)."""
    cur.execute(
        "INSERT INTO audit (at, actor, action, person_id, detail) VALUES (%s, %s, %s, %s, %s::jsonb)",
        (_now(), audit.current_actor.get(), action, person_id, json.dumps(detail)),
    )


def _audit_read(con, limit: int, before: int | None) -> list[audit.AuditEntry]:
    rows = con.execute(
        "SELECT id, at, actor, action, person_id, detail FROM audit WHERE id < %s ORDER BY id DESC LIMIT %s",
        (before if before is not None else 2**62, limit),
    ).fetchall()
    return [audit.AuditEntry(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def as_vector(value) -> np.ndarray:
    """A stored vector as float32 (pgvector's loader gives a ``Vector`` or an array, depending on the format)."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


def _index_name(dim: int) -> str:
    return f"faces_hnsw_{int(dim)}"


class PgGallery(GalleryCounts):
    """People and face vectors in a PostgreSQL database (``url``); nearest-neighbour search by pgvector."""

    #: No index file to rebuild: kept for interface parity with the embedded gallery.
    index_rebuilt = False

    def __init__(
        self,
        url: str,
        model_id: str,
        dim: int,
        *,
        data_dir: Path | None = None,
        exact_search_max: int = 20_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 200,
        ef_search: int = 200,
        pool_size: int = 10,
        encryption_key: str | None = None,
        prepare: bool = True,
    ) -> None:
        if encryption_key:
            raise EncryptionError(
                "encryption_key cannot be used with the PostgreSQL gallery: pgvector must read the vectors to index "
                "and search them. Encrypt the database's storage instead (disk/volume encryption, or your managed "
                "PostgreSQL's encryption at rest) and connect with TLS (sslmode=verify-full); unset FACEGATE_ENCRYPTION_KEY"
            )
        _import_psycopg()
        from psycopg_pool import ConnectionPool

        self.url = url
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.model_id = model_id
        self.dim = int(dim)
        self.exact_search_max = exact_search_max
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.ef_search = int(ef_search)
        if prepare:
            with _connect(url) as con:
                self._prepare(con)

        def configure(con) -> None:
            from pgvector.psycopg import register_vector

            register_vector(con)
            con.execute(f"SET hnsw.ef_search = {self.ef_search:d}")
            # A search is one small statement: parallel workers would be launched for the gated exact
            # branch even when it does not run (measured: +8 ms per search at 100k faces).
            con.execute("SET max_parallel_workers_per_gather = 0")
            con.commit()

        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(2, pool_size),
            kwargs={"autocommit": True},
            configure=configure,
            check=ConnectionPool.check_connection,  # a connection broken by a database restart is replaced, not used
            open=True,
            name="facegate-gallery",
        )
        #: Deleted rows leave the data files only when the tables are rewritten (issue 19, finding 6).
        self._purger = PgPurger(self._pool.connection, "the PostgreSQL gallery")

    @classmethod
    def open_existing(cls, url: str, **kwargs) -> PgGallery | None:
        """Open the gallery with the model it was made with (no model needed), or None if it has none yet."""
        with _connect(url) as con:
            exists = con.execute("SELECT to_regclass('gallery_state') IS NOT NULL").fetchone()[0]
            if not exists:
                return None
            row = con.execute("SELECT model_id, dim FROM gallery_state").fetchone()
        if row is None or row[0] is None:
            return None
        return cls(url, row[0], int(row[1]), **kwargs)

    # ------------------------------------------------------------------ schema and model
    def _prepare(self, con) -> None:
        """Migrate, check the model, and make the HNSW index for its dimension, under the advisory lock."""
        con.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            migrate(con)
            from pgvector.psycopg import register_vector

            register_vector(con)
            with con.transaction():
                self._check_model(con)
                self._ensure_index(con, self.dim)
                self._rekey_names(con)
        finally:
            con.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

    @staticmethod
    def _rekey_names(con) -> None:
        """Lookup keys made before names were compared by how they look are made again (once)."""
        if con.execute("SELECT name_keys FROM gallery_state FOR UPDATE").fetchone()[0] >= 2:
            return
        keys, clashes = rekeyed([(int(r[0]), r[1]) for r in con.execute("SELECT id, name FROM people")], name_key)
        con.execute("UPDATE people SET name_key = 'rekey#' || id")
        with con.cursor() as cur:
            cur.executemany("UPDATE people SET name_key = %s WHERE id = %s", [(k, pid) for pid, k in keys])
        con.execute("UPDATE gallery_state SET name_keys = 2")
        for pid, first in clashes:
            log.warning("person %d's name looks like person %d's (both enrolled before names were compared by look); "
                        "both are kept, new look-alikes are refused naming person %d", pid, first, first)

    def _check_model(self, con) -> None:
        stored_model, stored_dim, n = con.execute("SELECT model_id, dim, faces FROM gallery_state FOR UPDATE").fetchone()
        others = con.execute(
            "SELECT model_id, COUNT(*) FROM faces WHERE model_id <> %s GROUP BY model_id ORDER BY model_id", (self.model_id,)
        ).fetchall()
        if others:
            raise mixed_models_error(others, self.model_id, "use another database")
        if n and stored_dim is not None and stored_dim != self.dim:
            raise ModelMismatchError(f"stored vectors have {stored_dim} dimensions, model has {self.dim}")
        if stored_model != self.model_id or stored_dim != self.dim:
            con.execute("UPDATE gallery_state SET model_id = %s, dim = %s", (self.model_id, self.dim))

    def _ensure_index(self, con, dim: int) -> None:
        """The HNSW index for ``dim`` exists, and none for another dimension (inside the caller's transaction)."""
        names = [r[0] for r in con.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'faces' AND indexname LIKE 'faces_hnsw_%%'")]
        for name in names:
            if name != _index_name(dim):
                con.execute(f'DROP INDEX "{name}"')
        if _index_name(dim) not in names:
            con.execute(
                f"CREATE INDEX {_index_name(dim)} ON faces USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) "
                f"WITH (m = {int(self.hnsw_m)}, ef_construction = {int(self.hnsw_ef_construction)})"
            )

    @property
    def encrypted(self) -> bool:
        return False

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _read(self) -> Iterator:
        with self._pool.connection() as con:
            yield con

    @contextmanager
    def _tx(self) -> Iterator:
        """One write transaction, holding the gallery_state row; yields (connection, (model_id, dim))."""
        with self._pool.connection() as con:
            with con.transaction():
                model, dim = con.execute("SELECT model_id, dim FROM gallery_state FOR UPDATE").fetchone()
                yield con, (model, dim)

    def _check_current(self, state: tuple[str | None, int | None]) -> None:
        model, dim = state
        if model is not None and (model != self.model_id or dim != self.dim):
            raise reembedded_error(model, self.model_id)

    # ------------------------------------------------------------------ writes
    def _insert_faces(self, con, person_id: int, faces: Sequence[NewFace], vecs: np.ndarray, model_id: str) -> list[int]:
        if model_id != self.model_id:
            raise ModelMismatchError(f"embeddings made by {model_id} cannot join a gallery of {self.model_id}")
        now = _now()
        ids = []
        for f, v in zip(faces, vecs):
            ids.append(
                int(
                    con.execute(
                        "INSERT INTO faces (person_id, model_id, embedding, crop, source, created_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                        (person_id, model_id, v, f.crop_jpeg, f.source, now),
                    ).fetchone()[0]
                )
            )
        return ids

    def ensure_name_free(self, name: str) -> None:
        """Raise ``PersonExistsError`` if ``name`` is taken (the unique key checks again inside the enrolment)."""
        with self._read() as con:
            row = con.execute("SELECT id, name FROM people WHERE name_key = %s", (name_key(name),)).fetchone()
        if row is not None:
            raise exists_error(name, row[1], int(row[0]))

    def add_person(self, name: str, faces: Sequence[NewFace], model_id: str, max_name_length: int = 128) -> Person:
        """Enrol a new person with their faces, all or nothing. A name already enrolled is a ``PersonExistsError``."""
        name = clean_name(name, max_name_length)
        vecs = check_vectors(faces, self.dim, self.model_id)
        with self._tx() as (con, state):
            self._check_current(state)
            row = con.execute(
                "INSERT INTO people (name, name_key, created_at) VALUES (%s, %s, %s) ON CONFLICT (name_key) DO NOTHING RETURNING id",
                (name, name_key(name), _now()),
            ).fetchone()
            if row is None:
                taken = con.execute("SELECT id, name FROM people WHERE name_key = %s", (name_key(name),)).fetchone()
                raise exists_error(name, taken[1], int(taken[0]))
            pid = int(row[0])
            fids = self._insert_faces(con, pid, faces, vecs, model_id)
            _audit(con, audit.ENROLL, pid, faces=len(fids))
            con.execute("UPDATE gallery_state SET people = people + 1, faces = faces + %s, generation = generation + 1", (len(fids),))
        return self.get_person(pid)

    def add_faces(self, person_id: int, faces: Sequence[NewFace], model_id: str) -> Person:
        vecs = check_vectors(faces, self.dim, self.model_id)
        with self._tx() as (con, state):
            self._check_current(state)
            if con.execute("SELECT 1 FROM people WHERE id = %s FOR UPDATE", (person_id,)).fetchone() is None:
                raise PersonNotFoundError(f"no person with id {person_id}")
            fids = self._insert_faces(con, person_id, faces, vecs, model_id)
            _audit(con, audit.ADD_FACES, person_id, faces=len(fids))
            con.execute("UPDATE gallery_state SET faces = faces + %s, generation = generation + 1", (len(fids),))
        return self.get_person(person_id)

    def delete_person(self, person_id: int) -> Person:
        """Forget a person: their row, every face vector and crop (the index entries go with the rows)."""
        with self._tx() as (con, _):
            person = self._get_person(con, person_id)
            had_events = con.execute("SELECT EXISTS (SELECT 1 FROM events WHERE person_id = %s)", (person_id,)).fetchone()[0]
            con.execute("DELETE FROM faces WHERE person_id = %s", (person_id,))
            con.execute("DELETE FROM people WHERE id = %s", (person_id,))  # their events go with it (ON DELETE CASCADE)
            _audit(con, audit.DELETE, person_id, faces=person.face_count)
            con.execute(
                "UPDATE gallery_state SET people = people - 1, faces = faces - %s, generation = generation + 1", (person.face_count,)
            )
        self._purger.purge(also=("events",) if had_events else ())  # the dead rows hold the name, key, vectors and crops
        return person

    def rename_person(self, person_id: int, name: str, max_name_length: int = 128) -> Person:
        """Give a person another name, under the rules of enrolment: ``clean_name``, and a name that looks
        like another person's is a ``PersonExistsError`` (``ensure_name_free``); their own is theirs."""
        name = clean_name(name, max_name_length)
        key = name_key(name)
        if not -(2**63) <= int(person_id) < 2**63:
            raise PersonNotFoundError(f"no person with id {person_id}")
        with self._read() as con:
            owner = con.execute("SELECT id FROM people WHERE name_key = %s", (key,)).fetchone()
        if owner is None or int(owner[0]) != person_id:  # "ada" -> "Ada" keeps their own key
            self.ensure_name_free(name)  # before the transaction, as enrolment does: it reads on a connection of its own
        with self._tx() as (con, _):
            if con.execute("SELECT 1 FROM people WHERE id = %s FOR UPDATE", (person_id,)).fetchone() is None:
                raise PersonNotFoundError(f"no person with id {person_id}")
            taken = con.execute("SELECT id, name FROM people WHERE name_key = %s", (key,)).fetchone()
            if taken is not None and int(taken[0]) != person_id:  # enrolled since the check above
                raise exists_error(name, taken[1], int(taken[0]))
            con.execute("UPDATE people SET name = %s, name_key = %s WHERE id = %s", (name, key, person_id))
            _audit(con, audit.RENAME, person_id)
            con.execute("UPDATE gallery_state SET generation = generation + 1")
        self._purger.purge()  # the old name, in the row version the update left dead
        return self.get_person(person_id)

    def delete_face(self, face_id: int) -> Person:
        """Forget one face: its row (vector, crop; the index entry goes with it). Its person stays, with the
        faces left (none, possibly); returned as they are now."""
        if not -(2**63) <= int(face_id) < 2**63:
            raise FaceNotFoundError(f"no face with id {face_id}")
        with self._tx() as (con, _):
            row = con.execute("DELETE FROM faces WHERE id = %s RETURNING person_id", (face_id,)).fetchone()
            if row is None:
                raise FaceNotFoundError(f"no face with id {face_id}")
            person_id = int(row[0])
            _audit(con, audit.DELETE_FACE, person_id, face=face_id)
            con.execute("UPDATE gallery_state SET faces = faces - 1, generation = generation + 1")
        self._purger.purge()
        return self.get_person(person_id)

    def stored_crops(self) -> list[tuple[int, bytes | None]]:
        """Every face's id and aligned crop (None where crops were not kept)."""
        with self._read() as con:
            return [(int(r[0]), None if r[1] is None else bytes(r[1])) for r in con.execute("SELECT id, crop FROM faces ORDER BY id")]

    def reembed(self, model_id: str, dim: int, vectors: dict[int, np.ndarray]) -> None:
        """Replace every face's vector with one made by another model, and its HNSW index, in one transaction."""
        dim = int(dim)
        with self._tx() as (con, _):
            ids = [int(r[0]) for r in con.execute("SELECT id FROM faces")]
            missing = sorted(set(ids) - set(vectors))
            if missing:
                raise ValueError(f"{len(missing)} faces have no new vector (e.g. face {missing[0]})")
            rows = []
            for fid in ids:
                v = np.asarray(vectors[fid], dtype=np.float32).reshape(-1)
                if v.shape[0] != dim or not np.all(np.isfinite(v)):
                    raise ValueError(f"face {fid}: vector of shape {v.shape} does not fit dimension {dim}")
                rows.append((v, model_id, fid))
            con.execute(f'DROP INDEX IF EXISTS "{_index_name(self.dim)}"')
            with con.cursor() as cur:
                cur.executemany("UPDATE faces SET embedding = %s, model_id = %s WHERE id = %s", rows)
            con.execute("UPDATE gallery_state SET model_id = %s, dim = %s, generation = generation + 1", (model_id, dim))
            _audit(con, audit.REEMBED, None, faces=len(ids), model=model_id)
            self._ensure_index(con, dim)
        self.model_id, self.dim = model_id, dim

    def seal_existing(self, key: str) -> int:
        raise EncryptionError(
            "the PostgreSQL gallery is not sealed by FaceGate: encrypt the database's storage instead (docs/deployment.md, PostgreSQL)"
        )

    def record(self, action: str, person_id: int | None = None, **detail: object) -> None:
        """An audit entry for an action that changes nothing here (an export)."""
        with self._pool.connection() as con, con.transaction():
            _audit(con, action, person_id, **detail)

    def audit_log(self, limit: int = 100, before: int | None = None) -> list[audit.AuditEntry]:
        with self._read() as con:
            return _audit_read(con, limit, before)

    def export(self) -> list[tuple[Person, list[tuple[int, str | None, str, bytes]]]]:
        """Every person with their faces' (id, source, created_at, float32 vector bytes), one consistent snapshot."""
        with self._pool.connection() as con:
            con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                people = con.execute("SELECT id, name, created_at FROM people ORDER BY id").fetchall()
                faces: dict[int, list] = {}
                for f in con.execute("SELECT id, person_id, source, created_at, embedding FROM faces ORDER BY id"):
                    faces.setdefault(int(f[1]), []).append((int(f[0]), f[2], f[3], as_vector(f[4]).tobytes()))
            finally:
                con.execute("COMMIT")
        return [(Person(int(p[0]), p[1], p[2], len(faces.get(p[0], []))), faces.get(p[0], [])) for p in people]

    def flush(self) -> None:
        """Nothing to flush: every write is committed before it returns."""

    # ------------------------------------------------------------------ reads
    def _get_person(self, con, person_id: int) -> Person:
        row = con.execute("SELECT id, name, created_at FROM people WHERE id = %s", (person_id,)).fetchone()
        if row is None:
            raise PersonNotFoundError(f"no person with id {person_id}")
        faces = con.execute(
            "SELECT id, source, created_at, crop IS NOT NULL FROM faces WHERE person_id = %s ORDER BY id", (person_id,)
        ).fetchall()
        return Person(int(row[0]), row[1], row[2], len(faces), tuple(FaceRecord(int(f[0]), f[1], f[2], bool(f[3])) for f in faces))

    def get_person(self, person_id: int) -> Person:
        if not -(2**63) <= int(person_id) < 2**63:
            raise PersonNotFoundError(f"no person with id {person_id}")
        with self._read() as con:
            return self._get_person(con, person_id)

    def find_person(self, name: str) -> Person | None:
        key = name_key(clean_name(name, 10_000))
        with self._read() as con:
            row = con.execute("SELECT id FROM people WHERE name_key = %s", (key,)).fetchone()
            return self._get_person(con, int(row[0])) if row else None

    def list_people(self) -> list[Person]:
        with self._read() as con:
            rows = con.execute(
                "SELECT p.id, p.name, p.created_at, COUNT(f.id) FROM people p LEFT JOIN faces f ON f.person_id = p.id "
                "GROUP BY p.id ORDER BY p.id"
            ).fetchall()
        return [Person(int(r[0]), r[1], r[2], int(r[3])) for r in rows]

    def face_crop(self, face_id: int) -> bytes | None:
        if not -(2**63) <= int(face_id) < 2**63:
            return None
        with self._read() as con:
            row = con.execute("SELECT crop FROM faces WHERE id = %s", (face_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def stats(self) -> tuple[int, int, str]:
        """(people, faces, search mode), read from the database: the same on every server."""
        with self._read() as con:
            people, faces = con.execute("SELECT people, faces FROM gallery_state").fetchone()
        return int(people), int(faces), "exact" if faces <= self.exact_search_max else "hnsw"

    def search(self, query: np.ndarray, k: int = 5, *, exact: bool | None = None) -> list[Neighbour]:
        """The ``k`` faces most similar (cosine) to ``query``, nearest first, as the database holds them now."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ModelMismatchError(f"query has {q.shape[0]} dimensions; this gallery's model {self.model_id} has {self.dim}")
        if not np.all(np.isfinite(q)):
            raise ValueError("query contains non-finite values")
        if k <= 0:
            return []
        limit = {None: self.exact_search_max, True: 2**62, False: -1}[exact]  # exact up to this many faces
        with self._read() as con:
            rows = con.execute(self._search_sql, {"q": q, "k": int(k), "max": limit, "model": self.model_id}).fetchall()
        model, dim = rows[0][0], rows[0][1]
        self._check_current((model, dim))
        return [Neighbour(int(r[2]), int(r[3]), r[4], 1.0 - float(r[5])) for r in rows if r[2] is not None]

    @property
    def _search_sql(self) -> str:
        """One statement, one round trip: the state row (model check, face count) and the k nearest.

        Both branches are gated by one-time filters on the state row, so only one runs: up to
        ``max`` faces the plain column is scanned (exact; the expression index cannot serve it),
        above, the HNSW index on ``embedding::vector(dim)`` is. A gallery re-embedded with another
        model by another server matches neither branch: the caller sees the new model and refuses.
        """
        d = int(self.dim)
        return (
            "WITH s AS MATERIALIZED (SELECT model_id, dim, faces FROM gallery_state), "
            "nn AS ("
            " (SELECT id, person_id, embedding <=> %(q)s AS d FROM faces"
            "  WHERE (SELECT faces FROM s) <= %(max)s AND (SELECT model_id FROM s) = %(model)s"
            f"  AND (SELECT dim FROM s) = {d} ORDER BY d, id LIMIT %(k)s)"
            " UNION ALL"
            f" (SELECT id, person_id, embedding::vector({d}) <=> %(q)s::vector({d}) AS d FROM faces"
            "  WHERE (SELECT faces FROM s) > %(max)s AND (SELECT model_id FROM s) = %(model)s"
            f"  AND (SELECT dim FROM s) = {d} ORDER BY embedding::vector({d}) <=> %(q)s::vector({d}) LIMIT %(k)s)) "
            "SELECT s.model_id, s.dim, nn.id, nn.person_id, p.name, nn.d "
            "FROM s LEFT JOIN (nn JOIN people p ON p.id = nn.person_id) ON true ORDER BY nn.d, nn.id"
        )

    @property
    def purge_pending(self) -> bool:
        """True while a deleted person's rows may still be in the tables' files (``PgPurger``)."""
        return self._purger.pending

    def close(self) -> None:
        self._purger.close()
        self._pool.close()


class PgKeyStore:
    """API keys in the PostgreSQL gallery's database (same interface as ``facegate.security.keys.KeyStore``).

    Every check is a query (a primary-key lookup): a key created or revoked through any server or
    the CLI counts on every server's next request. Its own small pool, so that key checks never
    wait behind searches for a connection.
    """

    def __init__(self, url: str) -> None:
        self._pool = migrated_pool(url, "facegate-keys")

    def close(self) -> None:
        self._pool.close()

    def create(self, role: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key; returns its record and the plain key (shown once, never stored)."""
        secret = new_secret(role, name)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._pool.connection() as con, con.transaction():
            while True:
                kid = secrets.token_hex(4)
                row = con.execute(
                    "INSERT INTO api_keys (id, role, name, secret_sha256, created_at) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (id) DO NOTHING RETURNING id",
                    (kid, role, name, secret_hash(secret), now),
                ).fetchone()
                if row is not None:
                    break
            _audit(con, audit.KEY_CREATE, None, key=kid, role=role)
        return ApiKey(kid, role, name, now, None), plain_key(kid, secret)

    def revoke(self, key_id: str) -> ApiKey:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._pool.connection() as con, con.transaction():
            n = con.execute("UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", (now, key_id)).rowcount
            if n:
                _audit(con, audit.KEY_REVOKE, None, key=key_id)
        found = [k for k in self.list() if k.id == key_id]
        if not found:
            raise KeyRequestError(f"no key with id {key_id!r}", field="key_id")
        return found[0]

    def list(self) -> list[ApiKey]:
        with self._pool.connection() as con:
            rows = con.execute("SELECT id, role, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKey(*r) for r in rows]

    def enforcing(self) -> bool:
        """True once any active key exists: from then on every protected route needs a key."""
        with self._pool.connection() as con:
            return bool(con.execute("SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)").fetchone()[0])

    def check(self, key: str) -> tuple[str, str] | None:
        """(key id, role) of a valid, active key, else None."""
        parsed = parse(key)
        if parsed is None:
            return None
        kid, secret = parsed
        with self._pool.connection() as con:
            row = con.execute("SELECT role, secret_sha256 FROM api_keys WHERE id = %s AND revoked_at IS NULL", (kid,)).fetchone()
        if row is None:
            return None
        role, digest = row
        return (kid, role) if matches(digest, secret) else None

    def audit_log(self, limit: int = 100, before: int | None = None) -> list[audit.AuditEntry]:
        with self._pool.connection() as con:
            return _audit_read(con, limit, before)
