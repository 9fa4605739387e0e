"""The SQLite gallery's in-memory state: every face's id, owner and vector and every name in the
clear, loaded from the database, kept current by this process's writes and, for other processes'
writes, caught up from the change log (``changes``: one row a generation, written by ``_bump``)."""

from __future__ import annotations

import logging
import sqlite3
import threading

import numpy as np

from facegate.errors import ModelMismatchError
from facegate.security.encryption import Sealer
from .common import reembedded_error
from .pqindex import RowMap

log = logging.getLogger(__name__)

#: Generations kept in the change log; a process further behind reloads in full.
CHANGE_LOG_KEEP = 1000


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


class InMemory:
    """``Gallery``'s in-memory vectors and names (``_table``, ``_names``), the change log and catching
    up from it; the index itself is kept by ``upkeep.IndexUpkeep``."""

    _db: sqlite3.Connection
    _lock: threading.RLock
    _sealer: Sealer
    model_id: str
    dim: int
    full_loads: int

    def _bump(self, cur: sqlite3.Cursor, change: tuple[str, int, int | None, int | None] | None = None) -> int:
        """Next generation. ``change`` (op, person, first face, last face) goes to the change log, from
        which other processes catch up incrementally; a write without one makes them reload in full."""
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        gen = int(cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        if change is not None:
            cur.execute("INSERT INTO changes VALUES (?, ?, ?, ?, ?)", (gen, *change))
        cur.execute("DELETE FROM changes WHERE generation <= ?", (gen - CHANGE_LOG_KEEP,))
        return gen

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
