"""The gallery of enrolled people: SQLite is the truth, the search index is derived from it.

- Every write is one SQLite transaction (WAL), so a crash leaves either all of an enrolment or none.
- Up to ``exact_search_max`` faces, search is exact. Beyond, the default index scans product-quantized
  codes of every face and re-ranks the best exactly (``pqindex``; in memory, rebuilt at start in
  seconds); ``ann_index="hnsw"`` keeps the reference design's hnswlib graph, saved beside the database.
- The HNSW index file carries the generation of the database it was built from; on open, a
  missing, stale (generation or count differs) or unreadable index is rebuilt from SQLite.
- Every vector carries the id of the model that made it; a gallery refuses vectors of another.
- Writes made by another process on the same data directory (e.g. ``facegate enroll`` while the
  server runs) are noticed through SQLite's ``data_version`` before the next search.

The ``Gallery`` class is the façade; its parts live beside it: ``schema`` (tables, connection,
transactions), ``sealing`` (sealed names, sources, vectors and crops), ``memory`` (the in-memory
vectors and names, the change log other processes catch up from), ``upkeep`` (the search index and
its saver thread), ``purge`` (the WAL purge after a delete), and ``common`` (what the PostgreSQL
backend shares: records, name and vector checks, errors, counts).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facegate.errors import EncryptionError, FaceNotFoundError, ModelMismatchError, PersonNotFoundError
from facegate.rank import Neighbour
from facegate.security import audit
from facegate.security.encryption import Sealer
from .common import (
    FaceRecord,
    GalleryCounts,
    NewFace,
    Person,
    check_vectors,
    clean_name,
    mixed_models_error,
    name_key,
    now as _now,
    reembedded_error,
)
from .memory import CHANGE_LOG_KEEP, InMemory
from .names import exists_error
from .pqindex import exact_top
from .purge import WalPurger
from .events import seal_event_rows
from .challenges import clear_passed_faces
from .schema import DB_NAME, SCHEMA_VERSION, Transactions, connect, create_tables, stored_model
from .sealing import SealedColumns, _seal_names, _seal_sources
from .upkeep import INDEX_META, INDEX_NAME, IndexUpkeep

__all__ = [
    "CHANGE_LOG_KEEP",
    "DB_NAME",
    "INDEX_META",
    "INDEX_NAME",
    "SCHEMA_VERSION",
    "FaceRecord",
    "Gallery",
    "GalleryCounts",
    "NewFace",
    "Person",
    "check_vectors",
    "clean_name",
    "mixed_models_error",
    "name_key",
    "reembedded_error",
]


def _person_id_by_key(db: sqlite3.Connection | sqlite3.Cursor, key: str) -> int | None:
    row = db.execute("SELECT id FROM people WHERE name_key = ?", (key,)).fetchone()
    return int(row[0]) if row else None


class Gallery(Transactions, SealedColumns, InMemory, IndexUpkeep, GalleryCounts):
    """People and their face vectors in ``data_dir``; nearest-neighbour search over all faces."""

    def __init__(
        self,
        data_dir: Path,
        model_id: str,
        dim: int,
        *,
        exact_search_max: int = 20_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 200,
        hnsw_ef: int = 256,
        ann_index: str = "pq",
        pq_rerank: int = 50,
        save_delay_s: float = 1.0,
        encryption_key: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.model_id = model_id
        self.dim = int(dim)
        self.exact_search_max = exact_search_max
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef = hnsw_ef
        if ann_index not in ("pq", "hnsw"):
            raise ValueError(f"ann_index must be 'pq' or 'hnsw', not {ann_index!r}")
        #: Search beyond exact_search_max: "pq" (codes of every face scanned, best k x pq_rerank re-ranked
        #: exactly; in memory, rebuilt at start) or "hnsw" (hnswlib graph, saved beside the database).
        self.ann_index = ann_index
        self.pq_rerank = pq_rerank
        #: Candidates fetched from the index per face asked for, all re-ranked exactly: the PQ codes are
        #: coarse (recall@5 >= 0.99 at 50, ``bench/search_pq.py``); the graph's distances are exact.
        self._depth = pq_rerank if ann_index == "pq" else 1
        self._lock = threading.RLock()  # the database connection and the in-memory tables
        self._init_upkeep(save_delay_s)
        self._sealer = Sealer(encryption_key)
        # The HNSW file holds the vectors in the clear: an encrypted gallery keeps its index in memory only.
        self._persist_index = not self._sealer.active and ann_index == "hnsw"
        self._db = connect(self.data_dir / DB_NAME)
        self._purger = WalPurger(self._db, self._lock, str(self.data_dir / DB_NAME))  # ... nor in the WAL
        try:
            with self._tx() as cur:
                create_tables(cur)
                scrub = self._check_encryption(cur)
                self._rekey_names(cur)
                cur.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                cur.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
                self._check_model(cur)
            if scrub:
                self._scrub()
            self.index_rebuilt = False
            #: Full reloads from the database (the first load included); catching up from the change log is not one.
            self.full_loads = 0
            self._load()
            self._saved_stamp = self._index_stamp  # just loaded from, or written to, disk
        except BaseException:
            self._db.close()
            raise
        self._start_saver()

    @classmethod
    def open_existing(cls, data_dir: Path, **kwargs) -> Gallery | None:
        """Open a gallery with the model id it was made with (no model needed), or None if there is none."""
        found = stored_model(Path(data_dir) / DB_NAME)
        if found is None:
            return None
        return cls(data_dir, *found, **kwargs)

    @property
    def purge_pending(self) -> bool:
        """True while a deleted person's data may still be in the -wal file (a reader blocked its purge)."""
        return self._purger.pending

    @property
    def encrypted(self) -> bool:
        return self._sealer.active

    # ------------------------------------------------------------------ writes
    def _insert_faces(self, cur: sqlite3.Cursor, person_id: int, faces: Sequence[NewFace], vecs: np.ndarray, model_id: str) -> list[int]:
        if model_id != self.model_id:
            raise ModelMismatchError(f"embeddings made by {model_id} cannot join a gallery of {self.model_id}")
        ids = []
        now = _now()
        for f, v in zip(faces, vecs):
            cur.execute(
                "INSERT INTO faces (person_id, model_id, embedding, crop, source, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (person_id, model_id, self._sealer.seal(v.tobytes()), self._sealer.seal(f.crop_jpeg), self._seal_source(f.source), now),
            )
            ids.append(int(cur.lastrowid))
        return ids

    def ensure_name_free(self, name: str) -> None:
        """Raise ``PersonExistsError`` if ``name`` is taken (checked again inside the enrolment transaction)."""
        with self._lock:
            existing = _person_id_by_key(self._db, self._lookup_key(name))
            if existing is not None:
                stored = self._db.execute("SELECT name FROM people WHERE id = ?", (existing,)).fetchone()[0]
                raise exists_error(name, self._name(existing, stored), existing)

    def add_person(self, name: str, faces: Sequence[NewFace], model_id: str, max_name_length: int = 128) -> Person:
        """Enrol a new person with their faces, all or nothing. A name already enrolled is a ``PersonExistsError``."""
        name = clean_name(name, max_name_length)
        vecs = check_vectors(faces, self.dim, self.model_id)
        with self._lock:
            self._sync()
            with self._tx() as cur:
                self.ensure_name_free(name)
                cur.execute(
                    "INSERT INTO people (name, name_key, created_at) VALUES (?, ?, ?)",
                    (self._sealer.seal_text(name), self._lookup_key(name), _now()),
                )
                pid = int(cur.lastrowid)
                fids = self._insert_faces(cur, pid, faces, vecs, model_id)
                audit.record(cur, audit.ENROLL, pid, faces=len(fids))
                gen = self._bump(cur, ("add", pid, fids[0], fids[-1]))
            self._apply_add(fids, pid, name, vecs, gen)
            return self.get_person(pid)

    def add_faces(self, person_id: int, faces: Sequence[NewFace], model_id: str) -> Person:
        vecs = check_vectors(faces, self.dim, self.model_id)
        with self._lock:
            self._sync()
            with self._tx() as cur:
                row = cur.execute("SELECT name FROM people WHERE id = ?", (person_id,)).fetchone()
                if row is None:
                    raise PersonNotFoundError(f"no person with id {person_id}")
                fids = self._insert_faces(cur, person_id, faces, vecs, model_id)
                audit.record(cur, audit.ADD_FACES, person_id, faces=len(fids))
                gen = self._bump(cur, ("add", person_id, fids[0], fids[-1]))
            self._apply_add(fids, person_id, self._name(person_id, row[0]), vecs, gen)
            return self.get_person(person_id)

    def delete_person(self, person_id: int) -> Person:
        """Forget a person: their row, every face vector and crop, and their index entries."""
        with self._lock:
            self._sync()
            person = self.get_person(person_id)
            with self._tx() as cur:
                cur.execute("DELETE FROM faces WHERE person_id = ?", (person_id,))
                cur.execute("DELETE FROM people WHERE id = ?", (person_id,))
                audit.record(cur, audit.DELETE, person_id, faces=person.face_count)
                gen = self._bump(cur, ("delete", person_id, None, None))
            # Old page images of the deleted rows live on in the WAL until a checkpoint: flush and empty it
            # (or, while a reader blocks that, say so and retry: purge_pending).
            self._purger.purge()
            self._apply_delete(person_id, gen)
            return person

    def rename_person(self, person_id: int, name: str, max_name_length: int = 128) -> Person:
        """Give a person another name, under the rules of enrolment: ``clean_name``, and a name that looks
        like another person's is a ``PersonExistsError`` (``ensure_name_free``); their own is theirs."""
        name = clean_name(name, max_name_length)
        with self._lock:
            self._sync()
            with self._tx() as cur:
                if cur.execute("SELECT 1 FROM people WHERE id = ?", (person_id,)).fetchone() is None:
                    raise PersonNotFoundError(f"no person with id {person_id}")
                key = self._lookup_key(name)
                if _person_id_by_key(cur, key) != person_id:  # "ada" -> "Ada" keeps their own key
                    self.ensure_name_free(name)
                cur.execute("UPDATE people SET name = ?, name_key = ? WHERE id = ?", (self._sealer.seal_text(name), key, person_id))
                audit.record(cur, audit.RENAME, person_id)
                gen = self._bump(cur, ("rename", person_id, None, None))
            self._apply_rename(person_id, name, gen)
            return self.get_person(person_id)

    def delete_face(self, face_id: int) -> Person:
        """Forget one face: its vector, crop and index entry. Its person stays, with the faces left (none,
        possibly: they keep their name and can be given faces again); returned as they are now."""
        with self._lock:
            self._sync()
            with self._tx() as cur:
                row = cur.execute("SELECT person_id FROM faces WHERE id = ?", (face_id,)).fetchone()
                if row is None:
                    raise FaceNotFoundError(f"no face with id {face_id}")
                person_id = int(row[0])
                cur.execute("DELETE FROM faces WHERE id = ?", (face_id,))
                audit.record(cur, audit.DELETE_FACE, person_id, face=face_id)
                gen = self._bump(cur, ("delete_face", person_id, face_id, face_id))
            self._purger.purge()  # the old page images in the WAL, as for a person
            self._apply_delete_face(face_id, gen)
            return self.get_person(person_id)

    def stored_crops(self) -> list[tuple[int, bytes | None]]:
        """Every face's id and aligned crop (None where crops were not kept)."""
        with self._lock:
            self._sync()
            return [(int(r[0]), self._sealer.open(r[1])) for r in self._db.execute("SELECT id, crop FROM faces ORDER BY id")]

    def reembed(self, model_id: str, dim: int, vectors: dict[int, np.ndarray]) -> None:
        """Replace every face's vector with one made by another model, in one transaction.

        ``vectors`` must cover every face; the index is rebuilt for the new model.
        """
        with self._lock:
            self._sync()
            with self._tx() as cur:
                ids = [int(r[0]) for r in cur.execute("SELECT id FROM faces")]
                missing = sorted(set(ids) - set(vectors))
                if missing:
                    raise ValueError(f"{len(missing)} faces have no new vector (e.g. face {missing[0]})")
                for fid in ids:
                    v = np.asarray(vectors[fid], dtype=np.float32).reshape(-1)
                    if v.shape[0] != dim or not np.all(np.isfinite(v)):
                        raise ValueError(f"face {fid}: vector of shape {v.shape} does not fit dimension {dim}")
                    cur.execute(
                        "UPDATE faces SET embedding = ?, model_id = ? WHERE id = ?", (self._sealer.seal(v.tobytes()), model_id, fid)
                    )
                cur.execute("INSERT OR REPLACE INTO meta VALUES ('model_id', ?)", (model_id,))
                cur.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(dim),))
                audit.record(cur, audit.REEMBED, None, faces=len(ids), model=model_id)
                self._bump(cur)
            self._purger.purge()  # the old model's vectors
            self.model_id, self.dim = model_id, int(dim)
            self._load()

    def seal_existing(self, key: str) -> int:
        """Encrypt an unencrypted gallery's vectors, crops, names and source labels in place, in one transaction; returns the faces sealed."""
        sealer = Sealer(key)
        with self._lock:
            self._sync()
            with self._tx() as cur:
                if cur.execute("SELECT 1 FROM meta WHERE key = 'encryption'").fetchone() is not None:
                    raise EncryptionError(f"the gallery in {self.data_dir} is already encrypted")
                rows = cur.execute("SELECT id, embedding, crop FROM faces").fetchall()
                for fid, emb, crop in rows:
                    cur.execute("UPDATE faces SET embedding = ?, crop = ? WHERE id = ?", (sealer.seal(emb), sealer.seal(crop), fid))
                people = _seal_names(cur, sealer)
                _seal_sources(cur, sealer)
                seal_event_rows(cur, sealer)  # the event log's names and crops, webhook secrets (gallery/events.py)
                clear_passed_faces(cur)  # passed liveness challenges' faces (gallery/challenges.py)
                cur.execute("INSERT INTO meta VALUES ('encryption', ?)", (sealer.fingerprint,))
                audit.record(cur, audit.ENCRYPT, None, faces=len(rows), people=people)
            self._scrub()
            self._sealer, self._persist_index = sealer, False
            for f in (INDEX_NAME, INDEX_META):
                (self.data_dir / f).unlink(missing_ok=True)
        return len(rows)

    def record(self, action: str, person_id: int | None = None, **detail: object) -> None:
        """An audit entry for an action that changes nothing here (an export)."""
        with self._tx() as cur:
            audit.record(cur, action, person_id, **detail)

    def audit_log(self, limit: int = 100, before: int | None = None) -> list[audit.AuditEntry]:
        with self._lock:
            return audit.read(self._db, limit, before)

    def export(self) -> list[tuple[Person, list[tuple[int, str | None, str, bytes]]]]:
        """Every person with their faces' (id, source, created_at, float32 vector bytes), one consistent read."""
        with self._lock:
            self._sync()
            self._db.execute("BEGIN")
            try:
                people = self._db.execute("SELECT id, name, created_at FROM people ORDER BY id").fetchall()
                faces: dict[int, list] = {}
                for f in self._db.execute("SELECT id, person_id, source, created_at, embedding FROM faces ORDER BY id"):
                    faces.setdefault(f[1], []).append((f[0], self._source(f[2]), f[3], self._sealer.open(f[4])))
            finally:
                self._db.execute("COMMIT")
        return [
            (Person(p[0], self._name(p[0], p[1]), p[2], len(faces.get(p[0], []))), faces.get(p[0], [])) for p in people
        ]

    # ------------------------------------------------------------------ reads
    def get_person(self, person_id: int) -> Person:
        with self._lock:
            self._sync()  # another process may have renamed them
            row = self._db.execute("SELECT id, name, created_at FROM people WHERE id = ?", (person_id,)).fetchone()
            if row is None:
                raise PersonNotFoundError(f"no person with id {person_id}")
            faces = self._db.execute(
                "SELECT id, source, created_at, crop IS NOT NULL FROM faces WHERE person_id = ? ORDER BY id", (person_id,)
            ).fetchall()
        faces_ = tuple(FaceRecord(f[0], self._source(f[1]), f[2], bool(f[3])) for f in faces)
        return Person(row[0], self._name(row[0], row[1]), row[2], len(faces), faces_)

    def find_person(self, name: str) -> Person | None:
        with self._lock:
            pid = _person_id_by_key(self._db, self._lookup_key(clean_name(name, 10_000)))
        return self.get_person(pid) if pid is not None else None

    def list_people(self) -> list[Person]:
        with self._lock:
            self._sync()
            people = self._db.execute("SELECT id, name, created_at FROM people ORDER BY id").fetchall()
            counts = dict(self._db.execute("SELECT person_id, COUNT(*) FROM faces GROUP BY person_id").fetchall())
        return [Person(p[0], self._name(p[0], p[1]), p[2], counts.get(p[0], 0)) for p in people]

    def face_crop(self, face_id: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT crop FROM faces WHERE id = ?", (face_id,)).fetchone()
        return self._sealer.open(row[0]) if row else None

    def stats(self) -> tuple[int, int, str]:
        """(people, faces, search mode), current with writes made by other processes."""
        with self._lock:
            self._sync()
            n = self._table.n
            return len(self._names), n, "exact" if n <= self.exact_search_max else self.ann_index

    def search(self, query: np.ndarray, k: int = 5, *, exact: bool | None = None) -> list[Neighbour]:
        """The ``k`` faces most similar (cosine) to ``query``, nearest first.

        Exact search reads a snapshot with no lock; an index search shares a read lock with the index
        saver, so neither a save nor another query ever blocks it, and re-ranks its candidates exactly.
        """
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ModelMismatchError(f"query has {q.shape[0]} dimensions; this gallery's model {self.model_id} has {self.dim}")
        with self._lock:
            self._sync()
            ids, persons, vectors = self._table.view()
            rows = self._table.rows
            names = self._names
        n = len(ids)
        if n == 0:
            return []
        k = min(k, n)
        use_exact = exact if exact is not None else n <= self.exact_search_max
        if use_exact:
            sims = vectors @ q
            top = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
            top = top[np.lexsort((ids[top], -sims[top]))]  # ties to the older face, as below
            hits = [(int(ids[i]), float(sims[i]), int(persons[i])) for i in top]
        else:
            with self._index_lock.read():
                found = self._index.candidates(q, k * self._depth)
            # Re-ranked exactly on the snapshot (rows found through the id map), ties to the older face:
            # a face deleted, or added after the snapshot, is not in it and is dropped.
            top, top_sims = exact_top(q, found, ids, vectors, k, rows)
            hits = [(int(ids[i]), float(s), int(persons[i])) for i, s in zip(top, top_sims)]
        return [Neighbour(fid, pid, names[pid], sim) for fid, sim, pid in hits if pid in names]

    def close(self) -> None:
        self._stop_saver()
        with self._lock:
            try:
                self._sync()  # never stamp a stale index as current
                self.flush()
            finally:
                self._purger.close()
                self._db.close()
