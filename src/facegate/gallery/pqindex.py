"""Candidates for large-gallery search: a 4-bit product-quantization scan of every face (faiss fast scan).

Why not a graph (HNSW) for large galleries: face embeddings have a high intrinsic dimension, and a
query's top 5 beyond its own identity are strangers at nearly equal similarity. On vectors fitted to
SFace's statistics (``bench/search.py``, 2 cores) hnswlib reached recall@5 0.936 at 1.5 ms per query
for a million faces and needed ef=1024 (5.5 ms) for 0.986, after a 760 s build. Scanning compact
codes of *all* faces (32 bytes each, SIMD lookup tables) and re-ranking the best ``k x rerank``
exactly finds the same top 5 (recall@5 >= 0.99) in about the same time, builds in seconds, adds a face
in microseconds and needs no index file: it is rebuilt from the vectors at start.

The index holds candidates only; the gallery re-ranks them with the exact vectors it keeps, and a face
deleted from the gallery is dropped there. Deleted faces' codes stay in memory (never on disk) until
``stale_fraction`` of the index is stale, when the gallery rebuilds it.
"""

from __future__ import annotations

import os
import threading

import numpy as np

#: Codebooks are trained on at most this many faces (a seeded sample): more adds build time, not recall.
TRAIN_MAX = 65_536
#: Below this many training vectors the codebooks are filled up with seeded random unit vectors (a tiny
#: gallery: every face is a candidate anyway), and retrained as the gallery doubles.
TRAIN_MIN = 1024


#: From this many faces a query scans the shards in parallel (one thread each); below, one after another
#: (a thread hand-off costs more than it saves on a scan of well under a millisecond).
PARALLEL_MIN = 200_000


class PQIndex:
    """Face ids -> 4-bit PQ codes (``sub`` sub-quantizers of 16 centroids each) in faiss's fast-scan layout.

    ``sub`` defaults to one sub-quantizer per 2 dimensions (SFace's 128-d: 64, 32 bytes a face; a 512-d
    AdaFace: 256, 128 bytes), the precision measured in ``bench/search_pq.py``.

    The codes are dealt round-robin into ``shards`` (default: one per core, at most 4) sharing one codebook,
    so that a query on a large gallery scans them in parallel: at a million faces one scan is memory-bound
    at about 1.8 ms on one core of this 2-core machine, two halves take about 1.3 ms. The total work is the
    same, so under load (the cores busy with the model) nothing is gained or lost.
    """

    def __init__(self, dim: int, vectors: np.ndarray, ids: np.ndarray, *, sub: int = 0, shards: int = 0) -> None:
        import faiss

        sub = sub or max(1, dim // 2)
        while dim % sub:
            sub -= 1
        self.sub = sub
        self.trained_on = len(ids)
        self.stale = 0
        self._next = 0
        rng = np.random.default_rng(0)
        train = vectors[np.sort(rng.choice(len(vectors), TRAIN_MAX, replace=False))] if len(vectors) > TRAIN_MAX else vectors
        if len(train) < TRAIN_MIN:
            filler = rng.standard_normal((TRAIN_MIN - len(train), dim)).astype(np.float32)
            train = np.vstack([train, filler / np.linalg.norm(filler, axis=1, keepdims=True)])
        n_shards = shards or max(1, min(4, os.cpu_count() or 1))
        # One thread: a rebuild runs while the server serves, and faiss's OpenMP teams on cores the model
        # keeps busy made training 100x slower in a measurement (52 s instead of 0.5 s for 3,000 faces).
        _threads(1)
        codebook = faiss.IndexPQFastScan(dim, sub, 4, faiss.METRIC_INNER_PRODUCT)
        codebook.train(np.ascontiguousarray(train, dtype=np.float32))
        self._shards = [faiss.IndexIDMap(faiss.clone_index(codebook)) for _ in range(n_shards)]
        if len(ids):
            self.add(vectors, ids)

    @property
    def count(self) -> int:
        return sum(int(s.ntotal) for s in self._shards)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Not thread-safe with ``candidates``: the gallery holds its index write lock."""
        _threads(1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, np.int64)
        n = len(self._shards)
        for k in range(n):  # round-robin, continuing where the last add stopped
            part = slice((k - self._next) % n, None, n)
            if len(ids[part]):
                self._shards[k].add_with_ids(np.ascontiguousarray(vectors[part]), np.ascontiguousarray(ids[part]))
        self._next = (self._next + len(ids)) % n

    def remove(self, ids: np.ndarray) -> None:
        """The faces ``ids`` were deleted from the gallery: their codes remain until the next rebuild (the
        gallery drops them from the candidates), counted towards it."""
        self.stale += len(ids)

    def needs_rebuild(self, stale_fraction: float = 0.1) -> bool:
        """Too many deleted faces among the candidates, or codebooks trained on too few faces."""
        live = self.count - self.stale
        undertrained = self.trained_on < TRAIN_MAX and live >= 2 * max(self.trained_on, TRAIN_MIN)
        return self.stale > stale_fraction * max(1, self.count) or undertrained

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Face ids of the ``n`` best codes for ``query``, best first (some may be deleted faces)."""
        n = min(n, self.count)
        if n <= 0:
            return np.zeros(0, np.int64)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)

        def scan(shard) -> tuple[np.ndarray, np.ndarray]:
            _threads(1)  # one thread per scan: the other cores serve other requests and the model
            d, i = shard.search(q, min(n, max(1, int(shard.ntotal))))
            return d[0], i[0]

        parts = list(_pool().map(scan, self._shards)) if self.count >= PARALLEL_MIN and len(self._shards) > 1 else [scan(s) for s in self._shards]
        scores = np.concatenate([d for d, _ in parts])
        labels = np.concatenate([i for _, i in parts])
        keep = labels >= 0
        scores, labels = scores[keep], labels[keep]
        return labels[np.argsort(-scores, kind="stable")[:n]]


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    """Threads for parallel shard scans, shared by every index of the process (faiss releases the GIL)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="facegate-pq")
        return _POOL


#: A face-id -> row map is kept while it spans at most this many ids per face (plus ROW_MAP_SLACK): a
#: gallery whose ids grew sparse through many deletions falls back to bisection rather than hold a map
#: far larger than its faces.
ROW_MAP_SPREAD = 8
ROW_MAP_SLACK = 1 << 20


class RowMap:
    """Face id -> row of the gallery's arrays, 4 bytes per id from the smallest live one to the largest
    (with room to grow: up to twice that).

    Why: re-ranking 250 candidates found their rows by bisection in the ascending ids, 20 steps each
    on an array the scan before it had pushed out of the caches: 0.18 of the 2 ms of a query at a
    million faces; one look-up each instead (``bench/search_pq.py``). Appends fill it in place; rows a
    reader's snapshot does not have yet are ignored by ``exact_top``.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.base = int(ids.min()) if len(ids) else 1
        span = int(ids.max()) - self.base + 1 if len(ids) else 0
        self.rows = np.full(max(1024, 2 * span), -1, np.int32)
        self.rows[ids - self.base] = np.arange(len(ids), dtype=np.int32)

    @classmethod
    def build(cls, ids: np.ndarray) -> RowMap | None:
        """A map for ``ids``, or None where they are too sparse for one."""
        span = int(ids.max()) - int(ids.min()) + 1 if len(ids) else 0
        return cls(ids) if span <= ROW_MAP_SPREAD * len(ids) + ROW_MAP_SLACK else None

    def add(self, ids: np.ndarray, first_row: int) -> bool:
        """Record appended ``ids`` at rows from ``first_row``; False when the map cannot hold them (too
        sparse, or below its base): the caller drops it."""
        if not len(ids):
            return True
        if int(ids.min()) < self.base:
            return False
        need = int(ids.max()) - self.base + 1
        if need > len(self.rows):
            if need > ROW_MAP_SPREAD * (first_row + len(ids)) + ROW_MAP_SLACK:
                return False
            grown = np.full(max(need, 2 * len(self.rows)), -1, np.int32)
            grown[: len(self.rows)] = self.rows
            self.rows = grown  # a reader holding the old array still finds every row it can use
        self.rows[ids - self.base] = np.arange(first_row, first_row + len(ids), dtype=np.int32)
        return True

    def positions(self, found: np.ndarray) -> np.ndarray:
        """The row of each id in ``found`` (-1 where it has none)."""
        rel = found - self.base
        inside = (rel >= 0) & (rel < len(self.rows))
        pos = np.full(len(found), -1, np.int64)
        pos[inside] = self.rows[rel[inside]]
        return pos


def exact_top(
    query: np.ndarray, found: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int, rows: RowMap | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate face ids exactly: (rows of ``ids``/``vectors``, similarities) of the best ``k``,
    ties to the older face. ``ids`` ascend (face ids only grow); a candidate not among them (deleted, or
    added after this snapshot) is dropped. ``rows``: the ids' ``RowMap``, else they are found by bisection."""
    if not len(ids) or not len(found):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if rows is not None:
        pos = rows.positions(found)
        keep = (pos >= 0) & (pos < len(ids))  # rows past the snapshot's end were appended after it
        order = np.argsort(pos[keep])  # a gather in memory order (the order is set below)
        found, pos = found[keep][order], pos[keep][order]
    else:
        found = np.sort(found)  # sorted needles: a faster search and a gather in memory order
        pos = np.minimum(np.searchsorted(ids, found), len(ids) - 1)
    pos = pos[ids[pos] == found]  # with a map too: it only speeds the look-up, the ids decide
    sims = vectors[pos] @ query
    top = np.lexsort((ids[pos], -sims))[:k]
    return pos[top], sims[top]


def _threads(n: int) -> None:
    """faiss's OpenMP thread count is per calling thread: set it where the work runs."""
    import faiss

    faiss.omp_set_num_threads(n)
