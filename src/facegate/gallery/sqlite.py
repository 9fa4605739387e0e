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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from facegate.security import audit
from facegate.security.encryption import Sealer
from facegate.errors import EncryptionError, FaceNotFoundError, InvalidNameError, ModelMismatchError, PersonNotFoundError
from .hnswindex import HnswIndex
from .pqindex import PQIndex, RowMap, exact_top
from .names import check_visible, exists_error, rekeyed
from .names import name_key as _look_key
from .purge import WalPurger
from facegate.rank import Neighbour

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "gallery.sqlite3"
INDEX_NAME = "faces.hnsw"
INDEX_META = "faces.hnsw.json"
#: Generations kept in the change log; a process further behind reloads in full.
CHANGE_LOG_KEEP = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    crop BLOB,
    source TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_person ON faces(person_id);
CREATE TABLE IF NOT EXISTS changes (
    generation INTEGER PRIMARY KEY,
    op TEXT NOT NULL,
    person_id INTEGER NOT NULL,
    first_face INTEGER,
    last_face INTEGER
);
"""


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


def _digest(path: Path) -> str:
    """Content hash of the index file, so a torn or tampered file is rebuilt rather than trusted."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def name_key(name: str) -> str:
    """Uniqueness key of a name: how it looks (``gallery.names``: NFKC case-folded, TR39 skeleton), so
    look-alikes in any script, width or case are one name."""
    return _look_key(name)


def _seal_names(cur: sqlite3.Cursor, sealer: Sealer) -> int:
    """Every person's name sealed and their lookup key hashed, in the caller's transaction; the count."""
    rows = cur.execute("SELECT id, name FROM people").fetchall()
    for pid, name in rows:
        cur.execute("UPDATE people SET name = ?, name_key = ? WHERE id = ?", (sealer.seal_text(name), sealer.blind(name_key(name)), pid))
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('names', 'sealed')")
    return len(rows)


def _seal_sources(cur: sqlite3.Cursor, sealer: Sealer) -> int:
    """Every face's source label (an enrolment photo's file name, which may hold the name) sealed, in
    the caller's transaction; the count."""
    rows = cur.execute("SELECT id, source FROM faces WHERE source IS NOT NULL").fetchall()
    for fid, source in rows:
        cur.execute("UPDATE faces SET source = ? WHERE id = ?", (sealer.seal_text(source), fid))
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('sources', 'sealed')")
    return len(rows)


def _person_id_by_key(db: sqlite3.Connection | sqlite3.Cursor, key: str) -> int | None:
    row = db.execute("SELECT id FROM people WHERE name_key = ?", (key,)).fetchone()
    return int(row[0]) if row else None


class _RWLock:
    """Many readers (queries, the index saver) or one writer (index mutations)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Vectors:
    """Face ids, owners and vectors in growable arrays: an append costs O(new rows), not O(gallery).

    Readers take ``view()`` and keep using it while writers append (rows past a view's end) or
    compact (new arrays), so exact search needs no lock.
    """

    def __init__(self, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray) -> None:
        self.n = len(ids)
        cap = max(1024, 2 * self.n)
        dim = vectors.shape[1]
        self._ids = np.zeros(cap, np.int64)
        self._persons = np.zeros(cap, np.int64)
        self._vecs = np.zeros((cap, dim), np.float32)
        self._ids[: self.n], self._persons[: self.n], self._vecs[: self.n] = ids, persons, vectors
        #: Face id -> row, for re-ranking index candidates (None: ids too sparse, bisection instead).
        self.rows = RowMap.build(self._ids[: self.n])

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n
        return self._ids[:n], self._persons[:n], self._vecs[:n]

    def append(self, ids: np.ndarray, person_id: int, vectors: np.ndarray) -> None:
        need = self.n + len(ids)
        if need > len(self._ids):
            cap = max(need, 2 * len(self._ids))
            grow = lambda a, shape: np.concatenate([a, np.zeros(shape, a.dtype)])  # noqa: E731
            extra = cap - len(self._ids)
            self._ids = grow(self._ids, (extra,))
            self._persons = grow(self._persons, (extra,))
            self._vecs = grow(self._vecs, (extra, self._vecs.shape[1]))
        self._ids[self.n : need], self._persons[self.n : need], self._vecs[self.n : need] = ids, person_id, vectors
        if self.rows is not None and not self.rows.add(np.asarray(ids, np.int64), self.n):
            self.rows = None
        self.n = need

    def remove_person(self, person_id: int) -> np.ndarray:
        return self._drop(self.view()[1] == person_id)

    def remove_faces(self, face_ids: np.ndarray) -> np.ndarray:
        """Drop the rows of ``face_ids``; returns the ids that were there."""
        return self._drop(np.isin(self.view()[0], face_ids))

    def _drop(self, mask: np.ndarray) -> np.ndarray:
        """Compact into new arrays without the rows of ``mask`` (views taken before keep the old ones)."""
        ids, persons, vecs = self.view()
        gone = ids[mask].copy()
        if len(gone):
            keep = ~mask
            fresh = _Vectors(ids[keep], persons[keep], vecs[keep])
            self._ids, self._persons, self._vecs, self.rows = fresh._ids, fresh._persons, fresh._vecs, fresh.rows
            self.n = fresh.n
        return gone


def _now() -> str:
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


class Gallery(GalleryCounts):
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
        self._index_lock = _RWLock()  # the search index: queries and saves read, adds, deletes and rebuilds write
        self._save_lock = threading.Lock()
        self._dirty = threading.Event()
        self._closing = False
        self._stop = threading.Event()
        self._saved_stamp: tuple[int, int] | None = None
        self._index_stamp: tuple[int, int] = (-1, -1)
        self.save_delay_s = save_delay_s
        self._sealer = Sealer(encryption_key)
        # The HNSW file holds the vectors in the clear: an encrypted gallery keeps its index in memory only.
        self._persist_index = not self._sealer.active and ann_index == "hnsw"
        self._db = sqlite3.connect(
            self.data_dir / DB_NAME, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted biometric data is overwritten, not left in free pages
        self._purger = WalPurger(self._db, self._lock, str(self.data_dir / DB_NAME))  # ... nor in the WAL
        try:
            with self._tx() as cur:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                cur.execute(audit.AUDIT_SCHEMA)
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
        self._saver = threading.Thread(target=self._saver_loop, name="facegate-index-saver", daemon=True)
        self._saver.start()

    @classmethod
    def open_existing(cls, data_dir: Path, **kwargs) -> Gallery | None:
        """Open a gallery with the model id it was made with (no model needed), or None if there is none."""
        db = Path(data_dir) / DB_NAME
        if not db.is_file():
            return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'dim')").fetchall())
        except sqlite3.DatabaseError:
            return None
        finally:
            con.close()
        if "model_id" not in meta:
            return None
        return cls(data_dir, meta["model_id"], int(meta["dim"]), **kwargs)

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so writers never deadlock."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    def _bump(self, cur: sqlite3.Cursor, change: tuple[str, int, int | None, int | None] | None = None) -> int:
        """Next generation. ``change`` (op, person, first face, last face) goes to the change log, from
        which other processes catch up incrementally; a write without one makes them reload in full."""
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        gen = int(cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        if change is not None:
            cur.execute("INSERT INTO changes VALUES (?, ?, ?, ?, ?)", (gen, *change))
        cur.execute("DELETE FROM changes WHERE generation <= ?", (gen - CHANGE_LOG_KEEP,))
        return gen

    def _check_model(self, cur: sqlite3.Cursor) -> None:
        row = cur.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        others = cur.execute(
            "SELECT model_id, COUNT(*) FROM faces WHERE model_id != ? GROUP BY model_id", (self.model_id,)
        ).fetchall()
        if others:
            raise mixed_models_error(others, self.model_id, "start a new data directory")
        if row is None or row[0] != self.model_id:
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('model_id', ?)", (self.model_id,))
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(self.dim),))

    def _check_encryption(self, cur: sqlite3.Cursor) -> bool:
        """Refuse a missing or wrong key; True when this open sealed the names of a gallery encrypted
        before names were (its plain pages are then scrubbed, after the transaction)."""
        row = cur.execute("SELECT value FROM meta WHERE key = 'encryption'").fetchone()
        fp = self._sealer.fingerprint
        if row is not None:
            if fp is None:
                raise EncryptionError(
                    f"the gallery in {self.data_dir} is encrypted: set FACEGATE_ENCRYPTION_KEY to its key"
                )
            if row[0] != fp:
                raise EncryptionError(f"FACEGATE_ENCRYPTION_KEY is not the key the gallery in {self.data_dir} was sealed with")
            scrub = False
            if cur.execute("SELECT 1 FROM meta WHERE key = 'names' AND value = 'sealed'").fetchone() is None:
                n = _seal_names(cur, self._sealer)
                log.info("sealed the names of %d people (a gallery encrypted before names were)", n)
                scrub = True
            if cur.execute("SELECT 1 FROM meta WHERE key = 'sources' AND value = 'sealed'").fetchone() is None:
                n = _seal_sources(cur, self._sealer)
                log.info("sealed the source labels of %d faces (a gallery encrypted before they were)", n)
                scrub = True
            return scrub
        elif fp is not None:
            if cur.execute("SELECT 1 FROM faces UNION ALL SELECT 1 FROM people LIMIT 1").fetchone() is not None:
                raise EncryptionError(
                    f"the gallery in {self.data_dir} holds unencrypted faces: seal them first with "
                    "`facegate gallery encrypt` (with FACEGATE_ENCRYPTION_KEY set)"
                )
            cur.execute("INSERT INTO meta VALUES ('encryption', ?)", (fp,))
            cur.execute("INSERT INTO meta VALUES ('names', 'sealed')")
            cur.execute("INSERT INTO meta VALUES ('sources', 'sealed')")
        return False

    def _rekey_names(self, cur: sqlite3.Cursor) -> None:
        """Lookup keys made before names were compared by how they look are made again (once)."""
        if cur.execute("SELECT 1 FROM meta WHERE key = 'name_keys' AND value = '2'").fetchone() is not None:
            return
        rows = [(pid, self._sealer.open_text(n)) for pid, n in cur.execute("SELECT id, name FROM people").fetchall()]
        keys, clashes = rekeyed(rows, self._lookup_key)
        cur.execute("UPDATE people SET name_key = 'rekey#' || id")
        cur.executemany("UPDATE people SET name_key = ? WHERE id = ?", [(k, pid) for pid, k in keys])
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('name_keys', '2')")
        for pid, first in clashes:
            log.warning("person %d's name looks like person %d's (both enrolled before names were compared by look); "
                        "both are kept, new look-alikes are refused naming person %d", pid, first, first)

    def _scrub(self) -> None:
        """After sealing in place: the plain pages are overwritten (secure_delete); checkpoint and
        rebuild the file so that none survive."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _name(self, person_id: int, stored: str) -> str:
        """A person's name in the clear: the one search already keeps in memory (opened once, at load or
        write; ids are never reused, and a rename reaches it through the change log: readers catch up
        first), else opened from ``stored``, its column value (a person another process enrolled since
        this one last caught up)."""
        name = self._names.get(person_id)
        return name if name is not None else self._sealer.open_text(stored)

    def _seal_source(self, source: str | None) -> str | None:
        return None if source is None else self._sealer.seal_text(source)

    def _source(self, stored: str | None) -> str | None:
        """A face's source label in the clear (sealed with the names when encrypted)."""
        return None if stored is None else self._sealer.open_text(stored)

    def _lookup_key(self, name: str) -> str:
        """The ``name_key`` column's value for ``name``: its case-folded form, keyed-hashed when sealed."""
        return self._sealer.blind(name_key(name))

    @property
    def purge_pending(self) -> bool:
        """True while a deleted person's data may still be in the -wal file (a reader blocked its purge)."""
        return self._purger.pending

    @property
    def encrypted(self) -> bool:
        return self._sealer.active

    def _generation(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    # ------------------------------------------------------------------ in-memory state
    def _load(self) -> None:
        """(Re)load vectors from SQLite and the HNSW index from disk, rebuilding it if it does not match."""
        with self._lock:
            stored = self._db.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
            if stored is not None and stored[0] != self.model_id:
                raise reembedded_error(stored[0], self.model_id)
            # data_version first, then one read snapshot: a commit in between is seen again at the next sync.
            self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute("SELECT f.id, f.person_id, f.embedding FROM faces f ORDER BY f.id").fetchall()
                self._names = {pid: self._sealer.open_text(n) for pid, n in self._db.execute("SELECT id, name FROM people")}
                generation = self._generation()
            finally:
                self._db.execute("COMMIT")
            self.full_loads += 1
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            persons = np.array([r[1] for r in rows], dtype=np.int64)
            vectors = (
                np.vstack([np.frombuffer(self._sealer.open(r[2]), dtype=np.float32) for r in rows])
                if rows
                else np.zeros((0, self.dim), np.float32)
            )
            if vectors.shape[1] != self.dim:
                raise ModelMismatchError(f"stored vectors have {vectors.shape[1]} dimensions, model has {self.dim}")
            self._table = _Vectors(ids, persons, vectors)
            self._generation_loaded = generation
            index = self._open_index()
            with self._index_lock.write():
                self._index = index
                self._index_stamp = (self._generation_loaded, self._table.n)

    def _open_index(self):
        path, meta_path = self.data_dir / INDEX_NAME, self.data_dir / INDEX_META
        ids, _, vectors = self._table.view()
        n = len(ids)
        if not self._persist_index:
            for stale in (path, meta_path):
                stale.unlink(missing_ok=True)  # vectors in the clear must not outlive a switch to encryption or to "pq"
            return self._build_index(vectors, ids)
        try:
            meta = json.loads(meta_path.read_text())
            if (
                meta.get("generation") == self._generation_loaded
                and meta.get("model_id") == self.model_id
                and meta.get("count") == n
                and meta.get("dim") == self.dim
                and meta.get("digest") == _digest(path)
            ):
                return HnswIndex.load(path, self.dim, n, self.hnsw_ef)
            log.warning(
                "HNSW index is stale or damaged (index generation %s, database %s); rebuilding",
                meta.get("generation"),
                self._generation_loaded,
            )
        except FileNotFoundError:
            log.info("no HNSW index yet; building it from the database")
        except Exception as exc:  # corrupt file, truncated JSON, wrong format: derived data, so rebuild
            log.warning("HNSW index unreadable (%s); rebuilding", exc)
        index = self._build_index(vectors, ids)
        self._write_index_files(index, self._generation_loaded, n)
        return index

    def _build_index(self, vectors: np.ndarray, ids: np.ndarray) -> PQIndex | HnswIndex:
        self.index_rebuilt = True
        if self.ann_index == "pq":
            return PQIndex(self.dim, vectors, ids)  # seconds for a million faces
        return HnswIndex.build(self.dim, vectors, ids, m=self.hnsw_m, ef_construction=self.hnsw_ef_construction, ef=self.hnsw_ef)

    def _write_index_files(self, index: HnswIndex, generation: int, count: int, guard=None) -> None:
        """Atomic save: write beside (under a name of this process and thread), rename, then the stamp.

        ``guard`` is held only while hnswlib writes the file.
        """
        path, meta_path = self.data_dir / INDEX_NAME, self.data_dir / INDEX_META
        tag = f".{os.getpid()}.{threading.get_ident()}.tmp"
        tmp = path.with_name(path.name + tag)
        with guard or nullcontext():
            index.save(tmp)
        digest = _digest(tmp)
        os.replace(tmp, path)
        stamp = {"generation": generation, "model_id": self.model_id, "count": count, "dim": self.dim, "digest": digest}
        tmpm = meta_path.with_name(meta_path.name + tag)
        tmpm.write_text(json.dumps(stamp))
        os.replace(tmpm, meta_path)

    def _save_index(self) -> None:
        """Save the live index. Takes only the index's read lock: queries go on; index writes wait."""
        if not self._persist_index:
            self._saved_stamp = self._index_stamp
            return
        with self._save_lock:
            with self._index_lock.read():
                index, stamp = self._index, self._index_stamp
            self._write_index_files(index, *stamp, guard=self._index_lock.read())
            self._saved_stamp = stamp

    def _saver_loop(self) -> None:
        """Background saves, coalesced: a burst of enrolments costs one save, and no request waits for it."""
        while True:
            self._dirty.wait()
            if self._closing:
                return
            self._stop.wait(self.save_delay_s)  # coalesce a burst; close() cuts the wait short
            self._dirty.clear()
            if self._closing:  # close() saves what is left
                return
            try:
                self._save_index()
            except Exception:  # derived data: a failed save only means a rebuild at the next start
                log.exception("saving the HNSW index failed")

    def flush(self) -> None:
        """Save the index now if it changed since the last save (tests, shutdown)."""
        if self._saved_stamp != self._index_stamp:
            self._save_index()

    def _sync(self) -> None:
        """Catch up with commits of other processes (cheap when there are none: one PRAGMA)."""
        dv = self._db.execute("PRAGMA data_version").fetchone()[0]
        if dv == self._data_version:
            return
        self._data_version = dv  # before reading: a commit from now on changes it again
        if self._generation() != self._generation_loaded:
            self._catch_up()

    def _catch_up(self) -> None:
        """Apply other processes' writes from the change log; reload in full only where it has a gap
        (a re-embedding, or a process more than ``CHANGE_LOG_KEEP`` writes behind)."""
        self._db.execute("BEGIN")
        try:
            changes = self._db.execute(
                "SELECT generation, op, person_id, first_face, last_face FROM changes WHERE generation > ? ORDER BY generation",
                (self._generation_loaded,),
            ).fetchall()
            target = self._generation()
            gens = [c[0] for c in changes]
            if not changes or gens != list(range(self._generation_loaded + 1, target + 1)):
                changes = None
            else:
                added = {}
                for gen, op, pid, first, last in changes:
                    if op == "add":
                        added[gen] = self._db.execute(
                            "SELECT f.id, f.embedding, p.name FROM faces f JOIN people p ON p.id = f.person_id "
                            "WHERE f.person_id = ? AND f.id BETWEEN ? AND ? ORDER BY f.id",
                            (pid, first, last),
                        ).fetchall()
                    elif op == "rename":  # the name as it is now (a later rename or delete wins, as it should)
                        added[gen] = self._db.execute("SELECT name FROM people WHERE id = ?", (pid,)).fetchall()
        finally:
            self._db.execute("COMMIT")
        if changes is None:
            log.info("gallery changed on disk by another process; reloading")
            self._load()
            return
        removed = False
        for gen, op, pid, _, _ in changes:
            if op == "add" and added[gen]:  # rows gone already: deleted by a later change
                rows = added[gen]
                vecs = np.vstack([np.frombuffer(self._sealer.open(r[1]), dtype=np.float32) for r in rows])
                self._index_add([r[0] for r in rows], pid, self._name(pid, rows[0][2]), vecs)
            elif op == "delete":
                removed |= self._index_remove(pid)
            elif op == "rename" and added[gen]:
                self._names[pid] = self._sealer.open_text(added[gen][0][0])
            elif op == "delete_face":
                removed |= self._index_remove_faces([first])
        self._after_write(target)
        if removed:
            self._save_index()

    def _caught_up(self, generation: int) -> bool:
        """After our commit: if others committed between our sync and our write, catch up (our own
        write included, from the log) instead of patching."""
        if generation == self._generation_loaded + 1:
            return False
        self._catch_up()
        return True

    def _index_add(self, face_ids: list[int], person_id: int, name: str, vectors: np.ndarray) -> None:
        ids = np.asarray(face_ids, np.int64)
        self._names[person_id] = name
        with self._index_lock.write():
            self._table.append(ids, person_id, vectors)
            self._index.add(vectors, ids)
            self._rebuild_if_needed()

    def _index_remove(self, person_id: int) -> bool:
        """Drop a person's faces from memory and the index; True if there were any."""
        with self._index_lock.write():
            ids = self._table.remove_person(person_id)
            if len(ids):
                self._index.remove(ids)
                self._rebuild_if_needed()
        self._names.pop(person_id, None)
        return bool(len(ids))

    def _index_remove_faces(self, face_ids: list[int]) -> bool:
        """Drop single faces from memory and the index (their person stays); True if any was there."""
        with self._index_lock.write():
            ids = self._table.remove_faces(np.asarray(face_ids, np.int64))
            if len(ids):
                self._index.remove(ids)
                self._rebuild_if_needed()
        return bool(len(ids))

    def _rebuild_if_needed(self) -> None:
        """Under the index write lock: a new PQ index once a tenth of it is deleted faces (their codes then
        leave memory), or when the gallery has doubled since the codebooks were trained (up to 65k faces);
        an HNSW graph never asks."""
        if self._index.needs_rebuild():
            ids, _, vectors = self._table.view()
            self._index = self._build_index(vectors, ids)

    def _apply_add(self, face_ids: list[int], person_id: int, name: str, vectors: np.ndarray, generation: int) -> None:
        if self._caught_up(generation):
            return
        self._index_add(face_ids, person_id, name, vectors)
        self._after_write(generation)

    def _apply_delete(self, person_id: int, generation: int) -> None:
        if self._caught_up(generation):
            return
        removed = self._index_remove(person_id)
        self._after_write(generation)
        if removed:
            self._save_index()  # now, not later: the deleted vectors must leave the disk before we answer

    def _apply_rename(self, person_id: int, name: str, generation: int) -> None:
        if self._caught_up(generation):
            return
        self._names[person_id] = name
        self._after_write(generation)

    def _apply_delete_face(self, face_id: int, generation: int) -> None:
        if self._caught_up(generation):
            return
        removed = self._index_remove_faces([face_id])
        self._after_write(generation)
        if removed:
            self._save_index()  # now: the deleted vector must leave the disk before we answer

    def _after_write(self, generation: int) -> None:
        # Not data_version: our own commits do not change it, and another process's may not be applied yet.
        self._generation_loaded = generation
        self._index_stamp = (generation, self._table.n)
        self._dirty.set()

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
        self._closing = True
        self._stop.set()
        self._dirty.set()
        self._saver.join(timeout=30)
        with self._lock:
            try:
                self._sync()  # never stamp a stale index as current
                self.flush()
            finally:
                self._purger.close()
                self._db.close()
