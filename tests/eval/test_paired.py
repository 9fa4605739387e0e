"""Paired differences between two variants with person-bootstrap intervals (``facegate.eval.paired``)."""

from __future__ import annotations

import numpy as np

from facegate.eval.metrics import tar_at_far
from facegate.eval.paired import paired_difference


def faces(seed: int = 1, people: int = 120, each: int = 6, noise: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around one centre per person: labels and vectors."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(people), each)
    v = rng.normal(size=(people, 128))[labels] + rng.normal(scale=noise, size=(people * each, 128))
    return labels, v / np.linalg.norm(v, axis=1, keepdims=True)


def test_one_variant_against_itself_differs_by_nothing():
    labels, v = faces()
    d = paired_difference(labels, v, v, draws=100)
    assert d["faces"] == 720 and d["people"] == 120 and d["genuine_pairs"] == 120 * 15
    for key in ("tar@far=0.001", "tar@far=0.0001", "eer"):
        assert d[key]["difference"] == 0.0 and d[key]["ci95"] == [0.0, 0.0]


def test_the_point_figures_are_the_usual_ones():
    """With every person once (no resampling) the TAR is ``metrics.tar_at_far``'s, exactly."""
    labels, v = faces()
    d = paired_difference(labels, v, v, draws=1)
    sims = v @ v.T
    iu = np.triu_indices(len(v), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    gen, imp = sims[iu][same], sims[iu][~same]
    for far in (1e-3, 1e-4):
        assert abs(d[f"tar@far={far:g}"]["a"] - tar_at_far(gen, imp, far)[0]) < 1e-12


def test_a_worse_variant_is_told_apart_and_a_slightly_changed_one_is_not():
    labels, v = faces()
    rng = np.random.default_rng(7)

    def perturbed(scale: float) -> np.ndarray:
        w = v + rng.normal(scale=scale, size=v.shape)
        return w / np.linalg.norm(w, axis=1, keepdims=True)

    worse = paired_difference(labels, v, perturbed(0.03), draws=300)
    lo, hi = worse["tar@far=0.001"]["ci95"]
    assert worse["tar@far=0.001"]["difference"] < 0 and hi < 0, worse["tar@far=0.001"]
    same_ish = paired_difference(labels, v, perturbed(0.001), draws=300)
    lo, hi = same_ish["tar@far=0.0001"]["ci95"]
    assert lo <= 0.0 <= hi, same_ish["tar@far=0.0001"]
