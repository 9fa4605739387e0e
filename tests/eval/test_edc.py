"""Error-versus-discard characteristics (facegate.eval.edc) on synthetic data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.eval import edc


def _scores(n: int, errors: int, threshold: float = 0.5) -> np.ndarray:
    """n genuine scores, the first ``errors`` of them below ``threshold``."""
    s = np.full(n, 0.9)
    s[:errors] = 0.1
    return s


def test_quality_that_orders_the_misses_first_gives_the_ideal_curve():
    n, e = 1000, 40
    gen = _scores(n, e)
    q = np.arange(n, dtype=float)  # the misses hold the lowest qualities
    fnmr, cut = edc.edc(gen, q, 0.5)
    ideal = edc.ideal_line(e, n)
    assert fnmr[0] == pytest.approx(e / n)
    np.testing.assert_allclose(fnmr, ideal, atol=1e-12)
    # The ideal line reaches zero once 4% are discarded, and the cut there is the 41st quality.
    k = int(np.argmin(np.abs(edc.FRACTIONS - 0.04)))
    assert fnmr[k] == 0 and cut[k] == 40
    # The same quality read backwards discards only good pairs: the FNMR rises.
    worse, _ = edc.edc(gen, -q, 0.5)
    assert np.all(np.diff(worse) >= 0) and worse[-1] == pytest.approx(e / (0.8 * n))
    assert edc.pauc_ratio(edc.FRACTIONS, fnmr) < 0.45 < 1 < edc.pauc_ratio(edc.FRACTIONS, worse)


def test_random_quality_stays_on_the_flat_line():
    rng = np.random.default_rng(3)
    n, e = 100_000, 5000
    gen = rng.permutation(_scores(n, e))
    fnmr, _ = edc.edc(gen, rng.random(n), 0.5)
    flat = edc.random_line(e / n)
    assert np.all(flat == e / n)
    # ~1000 +- 30 misses fall in the 20% discarded: the rest keep 5.0 +- 0.04%.
    assert np.max(np.abs(fnmr - flat)) < 0.002
    assert edc.pauc_ratio(edc.FRACTIONS, fnmr) == pytest.approx(1.0, abs=0.02)


def test_ties_are_discarded_in_random_order_in_expectation():
    # All misses come first in the array; a constant quality must not discard them first (a stable sort would).
    gen = _scores(500, 25)
    fnmr, _ = edc.edc(gen, np.zeros(500), 0.5)
    np.testing.assert_allclose(fnmr, 25 / 500, rtol=1e-12)
    # Two levels: the 100 low ones hold the 25 misses; up to 20% discarded we are inside that group.
    q = np.ones(500)
    q[:100] = 0
    fnmr, _ = edc.edc(gen, q, 0.5)
    k = int(np.argmin(np.abs(edc.FRACTIONS - 0.1)))  # 50 of the 100 discarded: 12.5 misses expected
    assert fnmr[k] == pytest.approx((25 - 12.5) / 450)
    assert fnmr[-1] == pytest.approx(0.0)


def test_orientation_pairwise_min_and_limits():
    np.testing.assert_array_equal(edc.orient([-30.0, 10.0, None], "abs"), [-30.0, -10.0, np.inf])
    np.testing.assert_array_equal(edc.orient([0.2, 0.0], "high"), [-0.2, -0.0])
    np.testing.assert_array_equal(edc.orient([5.0, np.nan], "low"), [5.0, np.inf])
    assert [edc.orientation(s) for s in ("yaw", "pitch", "clipped", "sharpness")] == ["abs", "abs", "high", "low"]
    with pytest.raises(ValueError):
        edc.orient([1.0], "sideways")
    q = np.array([3.0, 1.0, 2.0])
    np.testing.assert_array_equal(edc.pair_quality(q, np.array([0, 0, 1]), np.array([1, 2, 2])), [1.0, 2.0, 1.0])
    # A max-yaw limit of 20 degrees refuses |yaw| > 20: the pairs with a face at -30.
    yaw = edc.orient([-30.0, 10.0, 20.0, 5.0], "abs")
    i, j, _ = edc.pairs([0, 0, 1, 1])
    pq = edc.pair_quality(yaw, i, j)
    r = edc.at_limit(np.array([0.1, 0.9, 0.9, 0.9, 0.9, 0.9]), pq, 0.5, edc.oriented_limit(20, "abs"))
    assert r == {"discarded": pytest.approx(3 / 6), "fnmr": 0.0}


def test_threshold_is_fixed_on_the_full_set():
    imp = np.linspace(0, 1, 1000, endpoint=False)
    thr = edc.fixed_threshold(imp, 0.01)
    assert np.sum(imp >= thr) == 10 and np.sum(imp >= np.nextafter(thr, -1)) == 11


def _synthetic(seed: int = 1):
    """120 people x 6 photos; the 5% of faces with quality < 0.05 are very noisy (they hold the misses)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(120), 6)
    n = len(labels)
    quality = rng.random(n)
    noise = 0.3 + 2.0 * (quality < 0.05)
    v = rng.normal(size=(120, 64))[labels] + rng.normal(size=(n, 64)) * noise[:, None]
    return labels, v / np.linalg.norm(v, axis=1, keepdims=True), quality, rng


def test_analyse_tells_an_informative_signal_from_noise():
    labels, v, quality, rng = _synthetic()
    res = edc.analyse(
        labels,
        v,
        {"sharpness": quality, "noise": rng.random(len(labels)), "clipped": quality},
        gates={"gate_retry": quality >= 0.05},
        limits={"gate_retry": {"sharpness": 0.05}},
        draws=500,
    )
    assert res["genuine_pairs"] == 120 * 15 and res["false_non_matches"] > 20
    assert res["fmr_achieved"] <= 1e-3
    s = res["signals"]
    assert s["sharpness"]["pauc_ratio"] < 0.7 and s["sharpness"]["p_random"] <= 0.01
    assert 0.85 < s["noise"]["pauc_ratio"] < 1.15 and s["noise"]["p_random"] > 0.05
    # "clipped" is read as high = poor: the same values the other way round are no better than random.
    assert s["clipped"]["orientation"] == "high" and s["clipped"]["pauc_ratio"] > 0.95
    # The gate discards the failing faces first; its limit removes most of the misses.
    g = s["gate_retry"]
    assert g["kind"] == "gate" and g["pauc_ratio"] < 0.7 and g["p_random"] <= 0.01
    lim = s["sharpness"]["at_limit"]["gate_retry"]
    assert lim["limit"] == 0.05 and lim["fnmr"] < 0.3 * res["fnmr"]
    gl = g["at_limit"]["gate_retry"]
    assert (lim["discarded"], lim["fnmr"]) == (gl["discarded"], gl["fnmr"])
    assert res["random"]["fnmr"] == [res["fnmr"]] * len(res["fractions"])
    assert res["ideal"]["pauc_ratio"] < s["sharpness"]["pauc_ratio"]
    assert res["null"]["p05"] < 1 < res["null"]["p95"]


def test_one_bad_face_discards_all_its_pairs():
    # Person 0: faces 0..3; face 0 misses with its three mates; every other pair is clean.
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    i, j, same = edc.pairs(labels)
    gen = np.where((i[same] == 0), 0.1, 0.9)
    q = edc.pair_quality(np.array([0.0, 5, 5, 5, 5, 5, 5, 5]), i[same], j[same])
    assert np.count_nonzero(q == 0) == 3
    r = edc.at_limit(gen, q, 0.5, 1.0)
    assert r == {"discarded": pytest.approx(3 / 8), "fnmr": 0.0}


def test_table_fits_80_columns():
    labels, v, quality, _ = _synthetic()
    qualities = {"a_very_long_signal_name_indeed": quality, "yaw": quality - 0.5}
    res = edc.analyse(labels, v, qualities, gates={"gate_enrol": quality > 0.02}, draws=200)
    lines = edc.table_lines("default / a-long-degradation-name", res)
    assert len(lines) == 3 + 3 and all(len(ln) <= 80 for ln in lines)
    assert lines[3].startswith("a_very_long_sig") and "YES" in lines[3]
