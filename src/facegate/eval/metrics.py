"""Verification and identification error rates from similarity scores (pure numpy)."""

from __future__ import annotations

import numpy as np


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) where at most ``far`` of impostor scores are >= threshold."""
    imp = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    gen = np.asarray(genuine, dtype=np.float64)
    if len(imp) == 0 or len(gen) == 0:
        raise ValueError("need genuine and impostor scores")
    allowed = int(np.floor(far * len(imp)))
    # Threshold just above the (allowed+1)-th highest impostor score.
    thr = float(np.nextafter(imp[allowed], np.inf)) if allowed < len(imp) else float(imp[-1])
    return float(np.mean(gen >= thr)), thr


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(equal error rate, threshold): where false accepts equal false rejects."""
    gen = np.asarray(genuine, dtype=np.float64)
    imp = np.asarray(impostor, dtype=np.float64)
    thrs = np.unique(np.concatenate([gen, imp]))
    far = np.array([np.mean(imp >= t) for t in thrs]) if len(thrs) < 5000 else None
    if far is None:
        thrs = np.quantile(np.concatenate([gen, imp]), np.linspace(0, 1, 4001))
        far = np.array([np.mean(imp >= t) for t in thrs])
    frr = np.array([np.mean(gen < t) for t in thrs])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(thrs[i])


def pair_scores(vectors: np.ndarray, labels: list) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs' cosine similarities, split into (genuine, impostor)."""
    v = np.asarray(vectors, dtype=np.float32)
    sims = v @ v.T
    lab = np.asarray(labels)
    iu = np.triu_indices(len(v), k=1)
    same = lab[iu[0]] == lab[iu[1]]
    s = sims[iu]
    return s[same], s[~same]
