"""The SQLite gallery's search index upkeep: building it (PQ codes or an HNSW graph), loading a saved
HNSW file when its stamp matches, rebuilding when the index asks, and saving it atomically from a
background saver thread (coalesced) or at once after a delete."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from .hnswindex import HnswIndex
from .pqindex import PQIndex

log = logging.getLogger(__name__)

INDEX_NAME = "faces.hnsw"
INDEX_META = "faces.hnsw.json"


def _digest(path: Path) -> str:
    """Content hash of the index file, so a torn or tampered file is rebuilt rather than trusted."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


class IndexUpkeep:
    """``Gallery``'s search index and its saver thread (the index is built from ``_table``, the
    in-memory vectors)."""

    data_dir: Path
    model_id: str
    dim: int
    ann_index: str
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef: int
    _persist_index: bool
    _generation_loaded: int

    def _init_upkeep(self, save_delay_s: float) -> None:
        self._index_lock = _RWLock()  # the search index: queries and saves read, adds, deletes and rebuilds write
        self._save_lock = threading.Lock()
        self._dirty = threading.Event()
        self._closing = False
        self._stop = threading.Event()
        self._saved_stamp: tuple[int, int] | None = None
        self._index_stamp: tuple[int, int] = (-1, -1)
        self.save_delay_s = save_delay_s

    def _start_saver(self) -> None:
        self._saver = threading.Thread(target=self._saver_loop, name="facegate-index-saver", daemon=True)
        self._saver.start()

    def _stop_saver(self) -> None:
        self._closing = True
        self._stop.set()
        self._dirty.set()
        self._saver.join(timeout=30)

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

    def _rebuild_if_needed(self) -> None:
        """Under the index write lock: a new PQ index once a tenth of it is deleted faces (their codes then
        leave memory), or when the gallery has doubled since the codebooks were trained (up to 65k faces);
        an HNSW graph never asks."""
        if self._index.needs_rebuild():
            ids, _, vectors = self._table.view()
            self._index = self._build_index(vectors, ids)
