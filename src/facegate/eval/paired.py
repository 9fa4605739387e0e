"""Is a difference between two variants real? Paired differences with person-level bootstrap intervals (pure numpy).

Two variants measured on the same photos (the float model and its int8 copy, two landmark sources)
often differ by a handful of genuine pairs at a small false accept rate: on lfw-dev's 1,965 genuine
pairs one pair is 0.05 points of TAR, and the FAR 1e-4 threshold is set by the top 25 of 255,000
impostor scores. Whether such a difference says anything about other photos is what the interval
tells: a 95 % interval that holds 0 does not separate the variants on this set.

Pairs are not independent (one poor photo misses with all its mates), so the bootstrap resamples
people, not pairs: each draw gives every person a multinomial weight (how often the person was
drawn); a genuine pair counts its person's weight, an impostor pair the product of its two people's
weights. Both variants get the same draws (paired), so what the photos share cancels out of the
difference. Compared on the faces both variants embedded and let through their gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import pair_scores

#: The false accept rates the TAR difference is given at.
FARS = (1e-3, 1e-4)


class _Pairs:
    """Every unordered pair of faces: its two people (indices) and whether it is genuine."""

    def __init__(self, labels: Sequence) -> None:
        people, person = np.unique(np.asarray(labels), return_inverse=True)
        self.people = len(people)
        i, j = np.triu_indices(len(person), k=1)
        self.genuine = person[i] == person[j]
        self.gp = person[i][self.genuine]  # a genuine pair's person
        self.ip, self.iq = person[i][~self.genuine], person[j][~self.genuine]
        self.labels = labels

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(genuine, impostor) scores in this pairing's order: ``metrics.pair_scores`` enumerates pairs the same way."""
        gen, imp = pair_scores(vectors, list(self.labels))
        return gen.astype(np.float64), imp.astype(np.float64)


class _Variant:
    """One variant's scores, sorted once, and its weighted rates for any person weights."""

    def __init__(self, pairs: _Pairs, genuine: np.ndarray, impostor: np.ndarray) -> None:
        g, m = np.argsort(genuine), np.argsort(impostor)
        self.gen, self.gp = genuine[g], pairs.gp[g]
        self.imp, self.ip, self.iq = impostor[m], pairs.ip[m], pairs.iq[m]
        # EER candidates: the genuine scores and the top impostor scores (the EER lies where both rates are small)
        self.cand = np.unique(np.concatenate([self.gen, self.imp[-5000:]]))

    def rates(self, w: np.ndarray) -> dict[str, float]:
        gw, iw = w[self.gp], w[self.ip] * w[self.iq]
        g_total, i_total = gw.sum(), iw.sum()
        if g_total == 0 or i_total == 0:  # a draw of people with no mated (or no non-mated) pair: no figure
            return {**{f"tar@far={far:g}": np.nan for far in FARS}, "eer": np.nan}
        above = np.concatenate([np.cumsum(iw[::-1])[::-1], [0.0]])  # impostor weight at or above imp[k]
        below = np.concatenate([[0.0], np.cumsum(gw)])  # genuine weight under gen[k]
        out = {}
        for far in FARS:
            # the lowest impostor score whose weight at or above it stays within far: the threshold just above the next
            k = int(np.searchsorted(-above[:-1], -far * i_total, side="left"))  # first k with above[k] <= far * total
            thr = np.nextafter(self.imp[k - 1], np.inf) if k > 0 else -np.inf
            out[f"tar@far={far:g}"] = 1.0 - below[np.searchsorted(self.gen, thr, side="left")] / g_total
        fa = above[np.searchsorted(self.imp, self.cand, side="left")] / i_total
        fr = below[np.searchsorted(self.gen, self.cand, side="left")] / g_total
        b = int(np.argmin(np.abs(fa - fr)))
        out["eer"] = float((fa[b] + fr[b]) / 2)
        return out


def paired_difference(
    labels: Sequence, a: np.ndarray, b: np.ndarray, *, draws: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Variant ``b`` minus variant ``a`` (rows of ``a`` and ``b``: the same faces, of people ``labels``):
    TAR at each of ``FARS`` and the EER, each with its 95 % person-bootstrap interval (``draws`` draws)."""
    pairs = _Pairs(labels)
    out: dict[str, Any] = {"faces": len(labels), "people": pairs.people, "genuine_pairs": int(pairs.genuine.sum()), "draws": draws}
    if not len(pairs.gp) or not len(pairs.ip):
        return out
    va, vb = _Variant(pairs, *pairs.scores(a)), _Variant(pairs, *pairs.scores(b))
    ones = np.ones(pairs.people)
    ra, rb = va.rates(ones), vb.rates(ones)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {k: [] for k in ra}
    for _ in range(draws):
        w = rng.multinomial(pairs.people, ones / pairs.people).astype(np.float64)
        da, db = va.rates(w), vb.rates(w)
        for k in boot:
            boot[k].append(db[k] - da[k])
    for k in ra:
        lo, hi = np.nanpercentile(boot[k], [2.5, 97.5])
        out[k] = {"a": ra[k], "b": rb[k], "difference": rb[k] - ra[k], "ci95": [float(lo), float(hi)]}
    return out
