"""Candidates for large-gallery search from an hnswlib graph (``ann_index = "hnsw"``, the reference design's
index), behind the same interface as ``PQIndex``: ``add``, ``remove``, ``needs_rebuild``, ``candidates``.

Unlike the PQ codes it is saved (by the gallery, beside the database), so a start does not rebuild it.
hnswlib keeps a deleted element's vector in the file: ``remove`` overwrites it with noise before marking
it deleted. Not thread-safe: the gallery holds its index lock (reads for ``candidates`` and saves,
writes for the rest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _hnswlib():
    """hnswlib, an optional extra (it builds from source): a clear message where it is not installed."""
    try:
        import hnswlib
    except ImportError as exc:
        raise RuntimeError("ann_index = 'hnsw' needs hnswlib: pip install 'facegate[hnsw]' (a C++ compiler builds it)") from exc
    return hnswlib


class HnswIndex:
    """An hnswlib inner-product graph over face ids and the number of live (not deleted) faces in it."""

    def __init__(self, index, live: int) -> None:
        """Use ``build`` or ``load``."""
        self._index = index
        self.live = live

    @classmethod
    def build(cls, dim: int, vectors: np.ndarray, ids: np.ndarray, *, m: int, ef_construction: int, ef: int) -> HnswIndex:
        hnswlib = _hnswlib()
        n = len(ids)
        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=max(2 * n, 1024), M=m, ef_construction=ef_construction, allow_replace_deleted=False)
        index.set_ef(ef)
        if n:
            index.add_items(vectors, ids, num_threads=-1)  # a rebuild may use every core
        return cls(index, n)

    @classmethod
    def load(cls, path: Path, dim: int, live: int, ef: int) -> HnswIndex:
        """The graph saved at ``path``, holding ``live`` faces not deleted (the caller checked its stamp)."""
        hnswlib = _hnswlib()
        index = hnswlib.Index(space="ip", dim=dim)
        index.load_index(str(path), max_elements=max(live, 16))
        index.set_ef(ef)
        return cls(index, live)

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        cap = self._index.get_max_elements()
        need = self._index.get_current_count() + len(ids)
        if need > cap:
            self._index.resize_index(max(need, 2 * cap))
        self._index.add_items(vectors, ids, num_threads=1)
        self.live += len(ids)

    def remove(self, ids: np.ndarray) -> None:
        """The faces ``ids`` were deleted: their vectors overwritten with noise (the file must not keep
        them), then marked deleted."""
        if not len(ids):
            return
        noise = np.random.default_rng().standard_normal((len(ids), self._index.dim)).astype(np.float32)
        self._index.add_items(noise / np.linalg.norm(noise, axis=1, keepdims=True), ids, num_threads=1)
        for fid in np.asarray(ids).tolist():
            self._index.mark_deleted(int(fid))
        self.live -= len(ids)

    def needs_rebuild(self) -> bool:
        """Never: deleted elements are skipped by the graph, and it needs no training."""
        return False

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Face ids of the (about) ``n`` nearest faces to ``query``, best first."""
        n = min(n, self.live)
        if n <= 0:
            return np.zeros(0, np.int64)
        labels, _ = self._index.knn_query(np.asarray(query, np.float32).reshape(1, -1), k=n)
        return labels[0].astype(np.int64)
