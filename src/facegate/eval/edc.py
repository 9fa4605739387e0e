"""Error-versus-discard characteristics (EDC) of quality signals (pure numpy).

The ISO/IEC 29794-1 / NIST way to judge a quality measure by what it predicts: fix the
comparison threshold on the full set at a target false match rate, then discard the share of
genuine comparisons with the lowest pairwise quality (the lower of the two samples' qualities)
and see how the false non-match rate of the rest falls. A signal that knows nothing gives, in
expectation, a flat curve (discarding at random removes errors and comparisons alike); the
ideal one removes a false non-match with every comparison it discards.

Conventions:

* qualities are *oriented* so that low = poor (``orient``): signals where high is worse
  (``clipped``) are negated, angles (``yaw``, ``roll``, ``pitch``) become ``-|angle|``;
  a value that could not be measured (None / NaN) counts as best: the gate never refuses on it;
* tied pairwise qualities are discarded in a random order, and the curve is its expectation
  (each tie group's errors spread evenly over its members), so a signal gets no credit from an
  arbitrary tie-break and a constant signal is exactly the random line;
* "clearly below random" is judged against random *face* qualities (``null_ratios``): a
  uniform random number per face, pairwise min, the same pairs. Shared faces make errors
  cluster (one bad photo misses with all its mates), so this null is wider, and fairer, than
  shuffling pairs.

Knows nothing of the pipeline: the caller passes scores, labels and per-face qualities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import tar_at_far

#: How each known signal is oriented: "low" (small is poor), "high" (large is poor), "abs" (far from 0 is poor).
ORIENTATION: dict[str, str] = {
    "face_px": "low",
    "det_score": "low",
    "sharpness": "low",
    "brightness": "low",
    "brightness_hi": "high",  # the same measure read the other way: over-lit faces first
    "clipped": "high",
    "yaw": "abs",
    "pitch": "abs",
    "roll": "abs",
    "feature_norm": "low",
    "coverage": "low",
}

#: Discard fractions of the curves (0 to 20% in 0.25% steps).
FRACTIONS = np.round(np.linspace(0.0, 0.2, 81), 6)
#: The partial area is taken up to this discard fraction.
PAUC_UPTO = 0.10
#: FNMR reported at these discard fractions.
REPORT_AT = (0.0, 0.01, 0.03, 0.05, 0.10, 0.20)


def orientation(name: str) -> str:
    """A signal's orientation; an unknown one is assumed "low" (say so where it is reported)."""
    return ORIENTATION.get(name, "low")


def orient(values: Sequence[float | None] | np.ndarray, how: str) -> np.ndarray:
    """Values turned so that low = poor; unmeasured (None/NaN) -> +inf (never discarded before a measured face)."""
    x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if how == "low":
        q = x
    elif how == "high":
        q = -x
    elif how == "abs":
        q = -np.abs(x)
    else:
        raise ValueError(f"orientation must be low, high or abs, not {how!r}")
    return np.where(np.isnan(q), np.inf, q)


def oriented_limit(limit: float, how: str) -> float:
    """A gate limit (min for "low", max for "high"/"abs") on the oriented scale: a face is refused below it."""
    return float(limit) if how == "low" else -float(limit)


def pairs(labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair (i < j) of samples: (i, j, same person)."""
    lab = np.asarray(labels)
    i, j = np.triu_indices(len(lab), k=1)
    return i, j, lab[i] == lab[j]


def pair_quality(face_q: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The pairwise quality: the lower of the two samples' (oriented) qualities."""
    q = np.asarray(face_q, dtype=np.float64)
    return np.minimum(q[i], q[j])


def fixed_threshold(impostor: np.ndarray, fmr: float) -> float:
    """The threshold that accepts at most ``fmr`` of the impostor comparisons (fixed before any discard)."""
    return tar_at_far(np.zeros(1), impostor, fmr)[1]


def _expected_removed(errors: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(errors removed after discarding the k lowest, for k = 0..n, in expectation over ties; q sorted)."""
    order = np.argsort(q, kind="stable")
    qs, e = q[order], errors[order].astype(np.float64)
    # Tie groups: each member carries the group's mean error (a random order within the group, in expectation).
    _, start, counts = np.unique(qs, return_index=True, return_counts=True)
    sums = np.add.reduceat(e, start) if len(e) else np.zeros(0)
    e_mean = np.repeat(sums / np.maximum(counts, 1), counts)
    return np.concatenate([[0.0], np.cumsum(e_mean)]), qs


def edc(
    genuine: np.ndarray, pair_q: np.ndarray, threshold: float, fractions: np.ndarray = FRACTIONS
) -> tuple[np.ndarray, np.ndarray]:
    """(FNMR, quality cut) at each discard fraction of the genuine comparisons, the threshold fixed.

    A fraction f discards f x n comparisons, the lowest-quality first (fractional counts: linearly
    between the neighbouring whole ones). The cut is the pairwise quality of the first comparison
    kept: a per-face limit at that value discards about that share.
    """
    g = np.asarray(genuine, dtype=np.float64)
    q = np.asarray(pair_q, dtype=np.float64)
    n = len(g)
    if n == 0:
        raise ValueError("no genuine comparisons")
    f = np.asarray(fractions, dtype=np.float64)
    if np.any(f < 0) or np.any(f >= 1):
        raise ValueError("discard fractions must be in [0, 1)")
    errors = g < threshold
    removed, qs = _expected_removed(errors, q)
    k = f * n
    left = errors.sum() - np.interp(k, np.arange(n + 1), removed)
    fnmr = np.maximum(left, 0.0) / (n - k)
    cut = qs[np.minimum(np.floor(k + 1e-9).astype(int), n - 1)]
    return fnmr, cut


def random_line(fnmr0: float, fractions: np.ndarray = FRACTIONS) -> np.ndarray:
    """Discarding at random: the expected FNMR stays where it was."""
    return np.full(len(fractions), float(fnmr0))


def ideal_line(errors: int, n: int, fractions: np.ndarray = FRACTIONS) -> np.ndarray:
    """Discarding the false non-matches first: one error fewer with every comparison discarded."""
    k = np.asarray(fractions, dtype=np.float64) * n
    return np.maximum(errors - k, 0.0) / (n - k)


def pauc(fractions: np.ndarray, fnmr: np.ndarray, upto: float = PAUC_UPTO) -> float:
    """Area under the curve from 0 to ``upto`` discarded (trapezoids; ``upto`` must be a grid point)."""
    f = np.asarray(fractions, dtype=np.float64)
    m = f <= upto + 1e-12
    if not math.isclose(f[m][-1], upto, abs_tol=1e-9):
        raise ValueError(f"{upto} is not one of the fractions")
    y = np.asarray(fnmr, dtype=np.float64)[m]
    return float(np.sum((y[1:] + y[:-1]) * np.diff(f[m])) / 2)


def pauc_ratio(fractions: np.ndarray, fnmr: np.ndarray, upto: float = PAUC_UPTO) -> float | None:
    """The partial area relative to the random line's (1: no better than random; the ideal line's is the floor)."""
    base = float(fnmr[0]) * upto
    return pauc(fractions, fnmr, upto) / base if base > 0 else None


def null_ratios(
    i: np.ndarray,
    j: np.ndarray,
    errors: np.ndarray,
    n_faces: int,
    *,
    draws: int = 2000,
    seed: int = 0,
    fractions: np.ndarray = FRACTIONS,
    upto: float = PAUC_UPTO,
) -> np.ndarray:
    """pAUC ratios of ``draws`` random face qualities (uniform per face, pairwise min) over the same genuine pairs."""
    e = np.asarray(errors, dtype=bool)
    n, total = len(e), int(e.sum())
    if n == 0 or total == 0:
        return np.zeros(0)
    f = np.asarray(fractions, dtype=np.float64)
    m = f <= upto + 1e-12
    k = f[m] * n
    lo = np.floor(k).astype(int)
    w = k - lo
    hi = np.minimum(lo + 1, n)
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for start in range(0, draws, 256):
        d = min(256, draws - start)
        fq = rng.random((d, n_faces))
        pq = np.minimum(fq[:, i], fq[:, j])
        es = np.take_along_axis(np.broadcast_to(e, pq.shape), np.argsort(pq, axis=1), axis=1)
        removed = np.concatenate([np.zeros((d, 1)), np.cumsum(es, axis=1)], axis=1)
        rem = removed[:, lo] * (1 - w) + removed[:, hi] * w
        fnmr = (total - rem) / (n - k)
        area = np.sum((fnmr[:, 1:] + fnmr[:, :-1]) * np.diff(f[m]), axis=1) / 2
        out[start : start + d] = area / (total / n * upto)
    return out


def at_limit(genuine: np.ndarray, pair_q: np.ndarray, threshold: float, limit: float) -> dict[str, float | None]:
    """What a gate refusing faces below ``limit`` (oriented) does to the genuine pairs: the share discarded
    and the FNMR of the rest."""
    g = np.asarray(genuine, dtype=np.float64)
    keep = np.asarray(pair_q) >= limit
    return {
        "discarded": float(1 - keep.mean()),
        "fnmr": float(np.mean(g[keep] < threshold)) if keep.any() else None,
    }


def analyse(
    labels: Sequence[Any],
    vectors: np.ndarray,
    qualities: Mapping[str, Sequence[float | None] | np.ndarray],
    *,
    fmr: float = 1e-3,
    gates: Mapping[str, Sequence[bool] | np.ndarray] | None = None,
    limits: Mapping[str, Mapping[str, float]] | None = None,
    draws: int = 2000,
    seed: int = 0,
    fractions: np.ndarray = FRACTIONS,
    upto: float = PAUC_UPTO,
) -> dict[str, Any]:
    """EDC of every quality signal, and of each gate, over every pair of the faces given.

    ``vectors``: unit embeddings, one per face (cosine = dot product). ``qualities``: per-face raw
    values by signal name (oriented here by ``ORIENTATION``). ``gates``: per-face pass (True) /
    fail verdicts: failing faces are discarded first, ties in random order. ``limits``: per gate,
    the limit in force per signal (raw value), for the FNMR at that limit.
    """
    v = np.asarray(vectors, dtype=np.float64)
    i, j, same = pairs(labels)
    sims = np.einsum("ij,ij->i", v[i], v[j]) if len(i) else np.zeros(0)
    gen, imp = sims[same], sims[~same]
    if not len(gen) or not len(imp):
        raise ValueError("need genuine and impostor pairs")
    thr = fixed_threshold(imp, fmr)
    gi, gj = i[same], j[same]
    errors = gen < thr
    n, e = len(gen), int(errors.sum())
    f = np.asarray(fractions, dtype=np.float64)
    fnmr0 = e / n
    null = null_ratios(gi, gj, errors, len(v), draws=draws, seed=seed, fractions=f, upto=upto)
    ideal = ideal_line(e, n, f)
    out: dict[str, Any] = {
        "fmr": fmr,
        "threshold": thr,
        "fmr_achieved": float(np.mean(imp >= thr)),
        "faces": int(len(v)),
        "genuine_pairs": n,
        "impostor_pairs": int(len(imp)),
        "false_non_matches": e,
        "fnmr": fnmr0,
        "pauc_upto": upto,
        "fractions": [round(float(x), 6) for x in f],
        "random": {"fnmr": random_line(fnmr0, f).tolist(), "pauc_ratio": 1.0 if e else None},
        "ideal": {"fnmr": ideal.tolist(), "pauc_ratio": pauc_ratio(f, ideal, upto)},
        "null": (
            {"draws": draws} | {f"p{round(100 * a):02d}": float(np.quantile(null, a)) for a in (0.05, 0.5, 0.95)}
            if len(null)
            else None
        ),
        "signals": {},
    }

    def summary(name: str, face_q: np.ndarray, kind: str, how: str | None) -> dict[str, Any]:
        pq = pair_quality(face_q, gi, gj)
        curve, cut = edc(gen, pq, thr, f)
        ratio = pauc_ratio(f, curve, upto)
        better = None if ratio is None or not len(null) else int(np.sum(null <= ratio + 1e-12))
        row: dict[str, Any] = {
            "kind": kind,
            "orientation": how,
            "measured_faces": int(np.isfinite(face_q).sum()),
            "pauc_ratio": ratio,
            # One-sided: the share of random face orderings doing at least as well (with the +1 of a permutation test).
            "p_random": None if better is None else (1 + better) / (1 + len(null)),
            "fnmr": curve.tolist(),
            "cut": [None if not np.isfinite(c) else (float(c) if how in (None, "low") else float(-c)) for c in cut],
        }
        for at in REPORT_AT:
            idx = int(np.argmin(np.abs(f - at)))
            if abs(f[idx] - at) < 1e-9:
                row[f"fnmr@{at:g}"] = float(curve[idx])
        return row

    for name, raw in qualities.items():
        how = orientation(name)
        fq = orient(raw, how)
        row = summary(name, fq, "signal" if name in ORIENTATION else "signal (orientation assumed)", how)
        for gate, lim in (limits or {}).items():
            if name in lim and lim[name] is not None:
                effect = at_limit(gen, pair_quality(fq, gi, gj), thr, oriented_limit(lim[name], how))
                row.setdefault("at_limit", {})[gate] = {"limit": lim[name]} | effect
        out["signals"][name] = row
    for name, passed in (gates or {}).items():
        fq = np.asarray(passed, dtype=np.float64)
        row = summary(name, fq, "gate", None)
        row["at_limit"] = {name: {"limit": None} | at_limit(gen, pair_quality(fq, gi, gj), thr, 1.0)}
        row["cut"] = None
        out["signals"][name] = row
    return out


def table_lines(name: str, res: Mapping[str, Any], width: int = 80) -> list[str]:
    """The EDC summary of one dataset as plain lines no wider than ``width``."""
    null = res.get("null")
    counts = f"{res['faces']} faces, {res['genuine_pairs']:,} genuine pairs, {res['false_non_matches']} misses"
    lines = [f"EDC {name}: {counts}"]
    info = f"  at FMR {res['fmr']:g} (thr {res['threshold']:.3f})"
    if null:
        info += f"; random faces 5-95%: {null['p05']:.2f}-{null['p95']:.2f}; ideal {res['ideal']['pauc_ratio']:.2f}"
    lines.append(info)
    lines.append(f"{'signal':<15}{'pAUC/rnd':>9}{'p':>7}{'FNMR%@0':>9}{'@1%':>7}{'@5%':>7}{'cut@5%':>9}  {'below?':<6}")

    def pct(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"

    for sig, row in res["signals"].items():
        ratio = row["pauc_ratio"]
        p = row["p_random"]
        cut = row["cut"][int(np.argmin(np.abs(np.asarray(res["fractions"]) - 0.05)))] if row.get("cut") else None
        below = "-" if p is None else ("YES" if p <= 0.01 else ("weak" if p <= 0.05 else "no"))
        ptext = "-" if p is None else ("<.001" if p < 0.001 else f"{p:.3f}")
        lines.append(
            f"{sig[:15]:<15}{'-' if ratio is None else f'{ratio:.2f}':>9}{ptext:>7}"
            f"{pct(row.get('fnmr@0')):>9}{pct(row.get('fnmr@0.01')):>7}{pct(row.get('fnmr@0.05')):>7}"
            f"{'-' if cut is None else f'{cut:.4g}':>9}  {below:<6}"
        )
    return [ln[:width].rstrip() for ln in lines]
