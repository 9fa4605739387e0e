"""Gallery search benchmark: exact numpy search vs hnswlib (space="ip") on synthetic face-like vectors.

Synthetic data imitates face embeddings rather than uniform noise: N/``--faces-per-identity``
identities, each a random unit centre; each face is normalise(centre + noise), the noise scaled so
that two faces of one identity have cosine ~``--same-cos``. Identities get a random number of faces
(multinomial); queries are fresh noisy samples of identities present in the gallery; everything is
seeded. The defaults are calibrated on SFace embeddings of ../shared/faces/lfw-dev (707 faces, 120
people): genuine cosine 0.65 [p5 0.46, p95 0.81], impostor 0.09 +- 0.09, PCA participation ratios and
k-NN (MLE) local intrinsic dimension matched to within sampling noise, via mildly anisotropic centres
and noise, a direction shared by all identities and a per-face noise level (image quality).
``--isotropic`` gives the plain model (isotropic, same-identity cosine 0.7, impostor cosine ~0).

For each gallery size it reports
- exact search as ``gallery.py`` does it (matrix-vector product + argpartition), query p50/p99;
- hnswlib per (M, ef_construction): build time (add_items, ``--build-threads`` threads), memory
  (saved index file size and process RSS growth from /proc/self/status), save_index / digest /
  load_index time, single-item add latency after the build (after the resize the gallery would do),
  in-place replace and mark_deleted latency (the gallery's delete path), and per ef: single-query
  p50/p99 (knn_query of one vector, num_threads=1) and recall@5 against exact search, with recall@1,
  recall by rank and recall of genuine (same-identity) vs impostor neighbours;
- a check of knn_query running concurrently with add_items (in a subprocess, in case it crashes).

Sizes up to ``--full-sweep-max`` get the full (M, ef_construction, ef) sweep; larger sizes build only
gallery.py's defaults plus the most promising other configuration of the largest fully swept size
(skipped if its estimated build time does not fit ``--time-budget``). The chosen setting is the
cheapest one, ordered by (M, ef_construction, ef) -- memory, then build/insert cost, then query
cost -- that meets recall@5 >= ``--recall-target``, query p50 <= ``--p50-target`` ms and single add
p50 <= ``--add-target`` ms at the largest size measured.

    python bench/search.py                      # 10k, 100k, 1M (~23 min on 2 idle cores)
    python bench/search.py --quick              # 10k and 100k
    python bench/search.py --sizes 2000 --queries 50 --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

K = 5
_T0 = time.perf_counter()

# gallery.py's defaults (read from the code when importable, so the report follows it)
DEFAULT_M, DEFAULT_EFC, DEFAULT_EF, DEFAULT_EXACT_MAX = 16, 200, 64, 20_000
try:  # pragma: no cover - depends on the checkout
    import inspect

    from facegate.gallery.sqlite import Gallery

    _p = inspect.signature(Gallery.__init__).parameters
    DEFAULT_M = _p["hnsw_m"].default
    DEFAULT_EFC = _p["hnsw_ef_construction"].default
    DEFAULT_EF = _p["hnsw_ef"].default
    DEFAULT_EXACT_MAX = _p["exact_search_max"].default
except Exception:
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def malloc_trim() -> None:
    """Give freed heap back to the OS so the next RSS delta starts clean (glibc only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def pct(a, q) -> float:
    return float(np.percentile(np.asarray(a, dtype=np.float64), q)) if len(a) else float("nan")


def ms_stats(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e6
    return {"p50_ms": pct(a, 50), "p99_ms": pct(a, 99), "mean_ms": float(a.mean()) if len(a) else float("nan"), "n": len(a)}


def fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def parse_size(s: str) -> int:
    s = s.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


# ---------------------------------------------------------------------------------------- data
class Faces:
    """A seeded synthetic face population: identity centres, a gallery, and query samples.

    face = normalise(centre + noise). With the defaults everything is isotropic; ``centre_decay`` /
    ``noise_decay`` give the per-axis variances a power-law decay (variance of axis i ~ (i+1)^-decay),
    ``mean_norm`` adds a direction shared by all centres (real embeddings have one: impostor cosines
    average > 0), and ``quality_spread`` varies the noise level per face (log-normal), widening the
    genuine-cosine distribution as image quality does.
    """

    def __init__(self, n: int, dim: int, faces_per_identity: float, same_cos: float, seed: int, *,
                 centre_decay: float = 0.0, noise_decay: float = 0.0, mean_norm: float = 0.0,
                 quality_spread: float = 0.0) -> None:
        self.rng = np.random.default_rng([seed, n])
        self.dim = dim
        self.n_id = max(1, int(round(n / faces_per_identity)))
        axis = np.arange(1, dim + 1, dtype=np.float64)

        def scale(decay: float) -> np.ndarray:
            v = axis ** -decay
            return np.sqrt(v / v.mean()).astype(np.float32)

        self.centre_scale, self.noise_scale = scale(centre_decay), scale(noise_decay)
        self.quality_spread = quality_spread
        c = self.rng.standard_normal((self.n_id, dim), dtype=np.float32) * self.centre_scale
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        if mean_norm:
            u = self.rng.standard_normal(dim).astype(np.float32)
            c += np.float32(mean_norm) * (u / np.linalg.norm(u))
            c /= np.linalg.norm(c, axis=1, keepdims=True)
        self.centres = c
        # two faces (c + e1)/|..|, (c + e2)/|..| with |e|^2 ~ s^2 have cosine ~ 1 / (1 + s^2)
        self.sigma = float(np.sqrt(1.0 / same_cos - 1.0))
        self.identity = self.rng.integers(self.n_id, size=n)
        self.vectors = self.sample(self.identity)

    def sample(self, identity: np.ndarray, chunk: int = 200_000) -> np.ndarray:
        out = np.empty((len(identity), self.dim), np.float32)
        for s in range(0, len(identity), chunk):
            ids = identity[s : s + chunk]
            v = self.rng.standard_normal((len(ids), self.dim), dtype=np.float32)
            v *= self.noise_scale * np.float32(self.sigma / np.sqrt(self.dim))
            if self.quality_spread:
                v *= np.exp(self.quality_spread * self.rng.standard_normal((len(ids), 1))).astype(np.float32)
            v += self.centres[ids]
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            out[s : s + len(ids)] = v
        return out

    def queries(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh samples of identities that are in the gallery (picked via random gallery faces)."""
        ident = self.identity[self.rng.integers(len(self.identity), size=m)]
        return self.sample(ident), ident

    def stats(self, m: int = 4000) -> dict:
        ident = self.rng.integers(self.n_id, size=m)
        a, b = self.sample(ident), self.sample(ident)
        same = np.einsum("ij,ij->i", a, b)
        other = np.einsum("ij,ij->i", a, self.sample(self.rng.integers(self.n_id, size=m)))
        counts = np.bincount(self.identity, minlength=self.n_id)
        return {
            "identities": self.n_id,
            "identities_in_gallery": int((counts > 0).sum()),
            "faces_per_identity_max": int(counts.max()),
            "noise_sigma": self.sigma,
            "same_identity_cos": {"mean": float(same.mean()), "p5": pct(same, 5), "p95": pct(same, 95)},
            "different_identity_cos": {"mean": float(other.mean()), "p99": pct(other, 99), "max": float(other.max())},
        }


def make_faces(n: int, args) -> Faces:
    return Faces(n, args.dim, args.faces_per_identity, args.same_cos, args.seed, centre_decay=args.centre_decay,
                 noise_decay=args.noise_decay, mean_norm=args.mean_norm, quality_spread=args.quality_spread)


def exact_topk(vectors: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    """Exactly gallery.py's exact mode."""
    sims = vectors @ q
    n = len(sims)
    top = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
    return top[np.argsort(-sims[top], kind="stable")]


def ground_truth(vectors: np.ndarray, queries: np.ndarray, k: int = K, chunk: int = 64) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), chunk):
        sims = queries[s : s + chunk] @ vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[s : s + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(hits(found, truth).mean())


def hits(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(queries, k) bool: was the exact r-th neighbour among the approximate results?"""
    return (truth[:, :, None] == found[:, None, :]).any(-1)


def recall_detail(found: np.ndarray, truth: np.ndarray, identity: np.ndarray, qident: np.ndarray) -> dict:
    """recall@5 plus where the misses are: by rank, and for same-identity (genuine) vs other neighbours."""
    h = hits(found, truth)
    genuine = identity[truth] == qident[:, None]
    return {
        "recall_at_5": float(h.mean()),
        "recall_at_1": float(h[:, 0].mean()),
        "recall_by_rank": [float(x) for x in h.mean(0)],
        "genuine_recall": float(h[genuine].mean()) if genuine.any() else float("nan"),
        "impostor_recall": float(h[~genuine].mean()) if (~genuine).any() else float("nan"),
        "genuine_share_of_top5": float(genuine.mean()),
        "top1_identity_accuracy": float((identity[found[:, 0]] == qident).mean()),
        "exact_top1_identity_accuracy": float((identity[truth[:, 0]] == qident).mean()),
    }


# ---------------------------------------------------------------------------------------- hnsw
def build(hnswlib, x: np.ndarray, m: int, efc: int, threads: int, progress: bool, label: str):
    malloc_trim()
    rss0 = rss_bytes()
    idx = hnswlib.Index(space="ip", dim=x.shape[1])
    idx.init_index(max_elements=len(x), M=m, ef_construction=efc, random_seed=100)
    labels = np.arange(len(x), dtype=np.int64)
    chunk = max(20_000, len(x) // 50)
    bar = None
    if progress and len(x) >= 200_000:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(x), desc=label, unit="vec", mininterval=10, file=sys.stderr)
        except ImportError:
            bar = None
    t, c = time.perf_counter(), time.process_time()
    for s in range(0, len(x), chunk):
        idx.add_items(x[s : s + chunk], labels[s : s + chunk], num_threads=threads)
        if bar is not None:
            bar.update(min(chunk, len(x) - s))
    build_s = time.perf_counter() - t
    cpu_util = (time.process_time() - c) / (build_s * threads)  # < ~0.95: other processes took CPU
    if bar is not None:
        bar.close()
    return idx, build_s, rss_bytes() - rss0, cpu_util


def time_queries(idx, queries: np.ndarray, ef: int, num_threads: int = 1, warmup: int = 50):
    idx.set_ef(ef)
    for q in queries[:warmup]:
        idx.knn_query(q[None], k=K, num_threads=num_threads)
    found = np.empty((len(queries), K), np.int64)
    ns = []
    for i, q in enumerate(queries):
        t = time.perf_counter_ns()
        lab, _ = idx.knn_query(q[None], k=K, num_threads=num_threads)
        ns.append(time.perf_counter_ns() - t)
        found[i] = lab[0]
    return found, ns


def digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)  # as gallery.py's _digest
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bench_config(hnswlib, faces: Faces, queries, qident, truth, m, efc, efs, args, tmpdir: Path) -> dict:
    n = len(faces.vectors)
    label = f"N={fmt_n(n)} M={m} efc={efc}"
    log(f"{label}: building with {args.build_threads} threads ...")
    idx, build_s, rss_growth, cpu_util = build(hnswlib, faces.vectors, m, efc, args.build_threads, not args.no_progress, label)
    log(f"{label}: built in {build_s:.1f}s (CPU use {cpu_util:.0%} of {args.build_threads} threads), RSS +{rss_growth / 2**20:.0f} MiB ({rss_growth / n:.0f} B/vector)")
    res = {
        "size": n,
        "M": m,
        "ef_construction": efc,
        "build_s": build_s,
        "build_threads": args.build_threads,
        "build_vectors_per_s": n / build_s,
        "build_cpu_utilisation": cpu_util,
        "rss_growth_bytes": rss_growth,
        "rss_bytes_per_vector": rss_growth / n,
        "queries": [],
    }
    # ---- queries
    for ef in efs:
        found, ns = time_queries(idx, queries, max(ef, K))
        r = {"ef": ef, **recall_detail(found, truth, faces.identity, qident), **ms_stats(ns)}
        res["queries"].append(r)
        log(f"{label} ef={ef:4d}: p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  recall@5 {r['recall_at_5']:.4f}  "
            f"genuine {r['genuine_recall']:.4f}  by rank {' '.join(f'{x:.3f}' for x in r['recall_by_rank'])}")
    if m == DEFAULT_M and efc == DEFAULT_EFC:
        # the server calls knn_query without num_threads (-1 = all cores); hnswlib runs <= 4*threads rows inline
        _, ns = time_queries(idx, queries[: min(500, len(queries))], max(DEFAULT_EF, K), num_threads=-1)
        res["default_ef_num_threads_default"] = ms_stats(ns)
    # ---- persistence
    path = tmpdir / f"bench-{n}-{m}-{efc}.hnsw"
    t = time.perf_counter()
    idx.save_index(str(path))
    res["save_s"] = time.perf_counter() - t
    res["index_file_bytes"] = path.stat().st_size
    res["file_bytes_per_vector"] = res["index_file_bytes"] / n
    t = time.perf_counter()
    digest(path)
    res["digest_s"] = time.perf_counter() - t
    other = hnswlib.Index(space="ip", dim=faces.dim)
    t = time.perf_counter()
    other.load_index(str(path), max_elements=n)
    res["load_s"] = time.perf_counter() - t
    del other
    path.unlink()
    malloc_trim()
    log(
        f"{label}: index file {res['index_file_bytes'] / 2**20:.0f} MiB, save {res['save_s']:.2f}s, "
        f"blake2b {res['digest_s']:.2f}s, load {res['load_s']:.2f}s"
    )
    # ---- single adds after the build, as gallery._apply_add does (resize to max(need, 2*cap) first)
    idx.set_ef(max(DEFAULT_EF, K))
    new, _ = faces.queries(args.adds)
    cap = idx.get_max_elements()
    t = time.perf_counter()
    if idx.get_current_count() + len(new) > cap:
        idx.resize_index(max(idx.get_current_count() + len(new), 2 * cap))
    res["resize_s"] = time.perf_counter() - t
    res["resize_to"] = idx.get_max_elements()
    ns = []
    for i, v in enumerate(new):
        t = time.perf_counter_ns()
        idx.add_items(v[None], np.array([n + i], np.int64), num_threads=1)
        ns.append(time.perf_counter_ns() - t)
    res["add"] = ms_stats(ns)
    # ---- the gallery's delete path: overwrite the vector with noise (an in-place update), then mark_deleted
    victims = np.random.default_rng(args.seed).choice(n, size=min(args.adds, n), replace=False)
    noise = np.random.default_rng(args.seed + 1).standard_normal((len(victims), faces.dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    ns_rep, ns_del = [], []
    for lab, v in zip(victims.tolist(), noise):
        t = time.perf_counter_ns()
        idx.add_items(v[None], np.array([lab], np.int64), num_threads=1)
        ns_rep.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        idx.mark_deleted(lab)
        ns_del.append(time.perf_counter_ns() - t)
    res["replace"] = ms_stats(ns_rep)
    res["mark_deleted"] = ms_stats(ns_del)
    log(
        f"{label}: resize {res['resize_s'] * 1000:.0f} ms; add p50 {res['add']['p50_ms']:.3f} / p99 {res['add']['p99_ms']:.3f} ms; "
        f"replace p50 {res['replace']['p50_ms']:.3f} ms; mark_deleted p50 {res['mark_deleted']['p50_ms'] * 1000:.1f} us"
    )
    del idx
    malloc_trim()
    return res


# ---------------------------------------------------------------------------------------- concurrency
def concurrency_child(args) -> int:
    """Run in a subprocess (a crash must not take the benchmark down): knn_query concurrently with add_items."""
    import hnswlib

    faces = make_faces(args.concurrency_size, args)
    n = len(faces.vectors)
    adds = 5000
    idx = hnswlib.Index(space="ip", dim=args.dim)
    idx.init_index(max_elements=n + adds, M=DEFAULT_M, ef_construction=DEFAULT_EFC)
    idx.add_items(faces.vectors, np.arange(n), num_threads=args.build_threads)
    idx.set_ef(DEFAULT_EF)
    queries, _ = faces.queries(1000)
    truth = ground_truth(faces.vectors, queries)
    base, _ = time_queries(idx, queries, DEFAULT_EF)
    new, _ = faces.queries(adds)
    errors, bad_labels, done = [], 0, threading.Event()
    ns_during, found_during = [], []

    def writer():
        try:
            for i, v in enumerate(new):
                idx.add_items(v[None], np.array([n + i]), num_threads=1)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"add_items: {exc!r}")
        finally:
            done.set()

    th = threading.Thread(target=writer)
    th.start()
    qi = 0
    while not done.is_set():
        q = queries[qi % len(queries)]
        try:
            t = time.perf_counter_ns()
            lab, dist = idx.knn_query(q[None], k=K, num_threads=1)
            ns_during.append(time.perf_counter_ns() - t)
            if (lab < 0).any() or (lab >= n + adds).any() or not np.isfinite(dist).all():
                bad_labels += 1
            if qi < len(queries):
                found_during.append(lab[0])
        except Exception as exc:  # noqa: BLE001
            errors.append(f"knn_query: {exc!r}")
        qi += 1
    th.join()
    out = {
        "size": n,
        "concurrent_adds": adds,
        "queries_during_adds": qi,
        "errors": errors[:10],
        "error_count": len(errors),
        "out_of_range_results": bad_labels,
        "recall_at_5_before": recall(base, truth),
        "query_during_adds": ms_stats(ns_during),
        "count_after": idx.get_current_count(),
    }
    # recall against the original gallery can only drop because new, closer faces were added -- not a bug
    print(json.dumps(out))
    return 0


def concurrency_check(args) -> dict:
    log(f"concurrency check: knn_query while add_items runs in another thread (N={fmt_n(args.concurrency_size)}) ...")
    cmd = [sys.executable, __file__, "--_concurrency-child", "--concurrency-size", str(args.concurrency_size),
           "--dim", str(args.dim), "--seed", str(args.seed), "--same-cos", str(args.same_cos),
           "--faces-per-identity", str(args.faces_per_identity), "--build-threads", str(args.build_threads),
           "--centre-decay", str(args.centre_decay), "--noise-decay", str(args.noise_decay),
           "--mean-norm", str(args.mean_norm), "--quality-spread", str(args.quality_spread)]
    runs = []
    for _ in range(args.concurrency_runs):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        r = {"returncode": p.returncode}
        if p.returncode == 0:
            try:
                r.update(json.loads(p.stdout.strip().splitlines()[-1]))
            except Exception:  # noqa: BLE001
                r["stdout"] = p.stdout[-500:]
        else:
            r["stderr"] = p.stderr[-1000:]
        runs.append(r)
        log(f"concurrency run: rc={p.returncode} errors={r.get('error_count')} out_of_range={r.get('out_of_range_results')} "
            f"queries={r.get('queries_during_adds')}")
    return {
        "runs": runs,
        "crashes": sum(r["returncode"] != 0 for r in runs),
        "note": "hnswlib 0.8 documents knn_query as NOT thread-safe with add_items (and resize_index as unsafe "
        "with both); a clean run here does not prove safety -- keep the lock gallery.py holds.",
    }


# ---------------------------------------------------------------------------------------- selection
def pick_large_configs(swept: dict, sweep_build_times: dict, n_large: int, budget_left_s: float, args) -> list[tuple]:
    """Default config always; plus the cheapest other config that reached recall target + margin."""
    configs = [(DEFAULT_M, DEFAULT_EFC)]
    if not swept:
        return configs
    ranked = []
    for (m, efc), qs in swept["configs"].items():
        ok = [q for q in qs if q["recall_at_5"] >= args.recall_target + args.recall_margin and q["p50_ms"] <= args.p50_target / 1.5]
        if ok:
            best = min(ok, key=lambda q: q["ef"])
            ranked.append(((0, m, efc, best["ef"]), (m, efc)))
        else:  # none reaches the target: fall back to the best recall seen within the latency target
            fast = [q for q in qs if q["p50_ms"] <= args.p50_target / 1.5] or qs
            ranked.append(((1, -max(q["recall_at_5"] for q in fast), m, efc), (m, efc)))
    ranked.sort()
    est = {}
    for _, cfg in ranked:
        if cfg in configs:
            continue
        t_small = sweep_build_times.get((swept["size"], *cfg))
        growth = min(swept.get("growth", 1.3), 1.3)
        t_est = t_small * (n_large / swept["size"]) * growth if t_small else float("inf")
        est[cfg] = t_est
        default_est = sweep_build_times.get((swept["size"], DEFAULT_M, DEFAULT_EFC), 0) * (n_large / swept["size"]) * growth
        log(f"N={fmt_n(n_large)}: estimated builds: default {default_est:.0f}s, M={cfg[0]} efc={cfg[1]} {t_est:.0f}s; "
            f"budget left {budget_left_s:.0f}s")
        if t_est + default_est + 120 <= budget_left_s:
            configs.append(cfg)
            log(f"N={fmt_n(n_large)}: also building M={cfg[0]} efc={cfg[1]} (estimated {t_est:.0f}s)")
            break
        log(f"N={fmt_n(n_large)}: skipping M={cfg[0]} efc={cfg[1]}: estimated build {t_est:.0f}s does not fit the budget")
    return configs


def choose(rows: list[dict], size: int, args, metric: str = "recall_at_5") -> tuple[dict | None, str]:
    cands = [
        r for r in rows
        if r["size"] == size and r[metric] >= args.recall_target and r["p50_ms"] <= args.p50_target
        and r["add_p50_ms"] <= args.add_target
    ]
    if not cands:
        return None, f"no configuration measured at N={fmt_n(size)} meets {metric} >= {args.recall_target} with p50 <= {args.p50_target} ms"
    best = min(cands, key=lambda r: (r["M"], r["ef_construction"], r["ef"]))
    why = (
        f"cheapest of {len(cands)} qualifying settings at N={fmt_n(size)} ordered by (M, ef_construction, ef) "
        f"= (memory, build/insert cost, query cost): {metric} {best[metric]:.4f} >= {args.recall_target}, "
        f"p50 {best['p50_ms']:.3f} ms <= {args.p50_target} ms, add p50 {best['add_p50_ms']:.3f} ms <= {args.add_target} ms"
    )
    return best, why


# ---------------------------------------------------------------------------------------- report
def flat_rows(results: list[dict]) -> list[dict]:
    rows = []
    for size_res in results:
        for b in size_res["hnsw"]:
            for q in b["queries"]:
                rows.append({
                    "size": b["size"], "M": b["M"], "ef_construction": b["ef_construction"], "ef": q["ef"],
                    "p50_ms": q["p50_ms"], "p99_ms": q["p99_ms"], "recall_at_5": q["recall_at_5"],
                    "recall_at_1": q["recall_at_1"], "genuine_recall": q["genuine_recall"],
                    "impostor_recall": q["impostor_recall"], "top1_identity_accuracy": q["top1_identity_accuracy"],
                    "build_s": b["build_s"], "index_file_mib": b["index_file_bytes"] / 2**20,
                    "rss_growth_mib": b["rss_growth_bytes"] / 2**20, "add_p50_ms": b["add"]["p50_ms"],
                    "add_p99_ms": b["add"]["p99_ms"],
                    "is_default": (b["M"], b["ef_construction"], q["ef"]) == (DEFAULT_M, DEFAULT_EFC, DEFAULT_EF),
                })
    return rows


def markdown(report: dict) -> str:
    m = report["meta"]
    out = [
        "# Gallery search benchmark",
        "",
        f"{m['started']}, {m['cpu']} ({m['cpus']} CPUs), hnswlib {m['hnswlib']}, numpy {m['numpy']}, dim {m['dim']}, "
        f"{m['queries']} queries/size, k={K}; hnswlib built with num_threads={m['build_threads']}, queried one vector "
        f"at a time with num_threads=1. Total runtime {m['total_s'] / 60:.1f} min; load average at start/end "
        f"{m['loadavg_start']} / {m['loadavg_end']}.",
        "",
        f"Synthetic faces: {m['faces_per_identity']} faces per identity on average, same-identity cosine ~{m['same_cos']}, "
        f"centre/noise variance decay {m['centre_decay']}/{m['noise_decay']}, shared direction {m['mean_norm']}, "
        f"quality spread {m['quality_spread']}; queries are fresh samples of enrolled identities.",
        "",
        "## Exact search (gallery.py exact mode: matrix-vector product + argpartition)",
        "",
        "| N | same-id cos mean [p5, p95] | diff-id cos mean / p99 | top-5: genuine share, cos p5 | top-5 impostor cos mean / p99 | p50 ms | p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        d, e = r["data"], r["exact"]
        s = d["same_identity_cos"]
        out.append(f"| {fmt_n(r['size'])} | {s['mean']:.3f} [{s['p5']:.3f}, {s['p95']:.3f}] | "
                   f"{d['different_identity_cos']['mean']:.3f} / {d['different_identity_cos']['p99']:.3f} | "
                   f"{d['top5_genuine_cos']['share']:.2f}, {d['top5_genuine_cos']['p5']:.3f} | "
                   + (f"{d['top5_impostor_cos']['mean']:.3f} / {d['top5_impostor_cos']['p99']:.3f} | " if d["top5_impostor_cos"] else "- | ")
                   + f"{e['p50_ms']:.3f} | {e['p99_ms']:.3f} |")
    out += [
        "",
        "## hnswlib builds",
        "",
        "| N | M | efc | build s | index file MiB | B/vector (file) | RSS growth MiB | save s | blake2b s | load s "
        "| resize ms | add p50 / p99 ms | replace p50 / p99 ms | mark_deleted p50 / p99 µs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        for b in r["hnsw"]:
            out.append(
                f"| {fmt_n(b['size'])} | {b['M']} | {b['ef_construction']} | {b['build_s']:.1f} | "
                f"{b['index_file_bytes'] / 2**20:.0f} | {b['file_bytes_per_vector']:.0f} | {b['rss_growth_bytes'] / 2**20:.0f} | "
                f"{b['save_s']:.2f} | {b['digest_s']:.2f} | {b['load_s']:.2f} | {b['resize_s'] * 1000:.0f} | "
                f"{b['add']['p50_ms']:.2f} / {b['add']['p99_ms']:.2f} | {b['replace']['p50_ms']:.2f} / {b['replace']['p99_ms']:.2f} | "
                f"{b['mark_deleted']['p50_ms'] * 1000:.1f} / {b['mark_deleted']['p99_ms'] * 1000:.1f} |"
            )
    out += [
        "",
        "## hnswlib queries (single vector, num_threads=1)",
        "",
        "recall@5 against exact top-5; *genuine*: recall of the exact top-5 entries that are the query's own identity, "
        "*impostor*: of the others (other people that fill the top 5; their cosine is in the exact-search table); "
        "top-1 id: the first result is the query's identity.",
        "",
        "| N | M | efc | ef | p50 ms | p99 ms | recall@5 | recall@1 | genuine | impostor | top-1 id | |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ch = report.get("chosen")
    for r in report["rows"]:
        tags = []
        if r["is_default"]:
            tags.append("gallery.py default")
        if ch and all(r[k] == ch[k] for k in ("size", "M", "ef_construction", "ef")):
            tags.append("**chosen**")
        out.append(f"| {fmt_n(r['size'])} | {r['M']} | {r['ef_construction']} | {r['ef']} | {r['p50_ms']:.3f} | "
                   f"{r['p99_ms']:.3f} | {r['recall_at_5']:.4f} | {r['recall_at_1']:.4f} | {r['genuine_recall']:.4f} | "
                   f"{r['impostor_recall']:.4f} | {r['top1_identity_accuracy']:.4f} | {', '.join(tags)} |")
    out += ["", "## Chosen setting", ""]
    if ch:
        out.append(f"M={ch['M']}, ef_construction={ch['ef_construction']}, ef={ch['ef']} -- {report['chosen_reason']}.")
    else:
        out.append(f"None: {report['chosen_reason']}.")
    cg = report.get("chosen_by_genuine_recall")
    out.append("")
    if cg:
        out.append(f"Judged by genuine recall instead (the query's own identity's faces in the top 5): M={cg['M']}, "
                   f"ef_construction={cg['ef_construction']}, ef={cg['ef']} -- {report['chosen_by_genuine_recall_reason']}.")
    else:
        out.append(f"Judged by genuine recall instead: none -- {report['chosen_by_genuine_recall_reason']}.")
    out += ["", "## gallery.py defaults "
            f"(M={DEFAULT_M}, ef_construction={DEFAULT_EFC}, ef={DEFAULT_EF}, exact search up to {DEFAULT_EXACT_MAX} faces)", ""]
    for d in report["defaults"]:
        out.append(f"- N={fmt_n(d['size'])}: p50 {d['p50_ms']:.3f} ms, p99 {d['p99_ms']:.3f} ms, recall@5 {d['recall_at_5']:.4f} "
                   f"(genuine {d['genuine_recall']:.4f}, top-1 id {d['top1_identity_accuracy']:.4f}), "
                   f"build {d['build_s']:.1f}s, index {d['index_file_mib']:.0f} MiB, add p50 {d['add_p50_ms']:.2f} ms")
    cc = report.get("concurrency")
    if cc:
        out += ["", "## knn_query concurrent with add_items", ""]
        for r in cc["runs"]:
            out.append(f"- rc={r['returncode']}, errors={r.get('error_count')}, out-of-range results={r.get('out_of_range_results')}, "
                       f"{r.get('queries_during_adds')} queries during {r.get('concurrent_adds')} adds at N={fmt_n(r.get('size', 0))}")
        out.append(f"- {cc['note']}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------- main
def add_data_args(ap: argparse.ArgumentParser) -> None:
    """The synthetic population's options (shared with bench/search_pq.py)."""
    ap.add_argument("--faces-per-identity", type=float, default=4.0)
    # Defaults calibrated on SFace embeddings of ../shared/faces/lfw-dev (707 faces, 120 people): genuine cosine
    # mean 0.65 [p5 0.46, p95 0.81], impostor 0.09 +- 0.09 (p99 0.30), PCA participation ratio ~78 (all),
    # ~56 (identity means), ~96 (within identity) on 128 dims. --isotropic gives the plain model.
    ap.add_argument("--same-cos", type=float, default=0.67, help="typical cosine between two faces of one identity")
    ap.add_argument("--centre-decay", type=float, default=0.3, help="per-axis variance of identity centres ~ (i+1)^-decay")
    ap.add_argument("--noise-decay", type=float, default=0.2, help="per-axis variance of within-identity noise ~ (i+1)^-decay")
    ap.add_argument("--mean-norm", type=float, default=0.4, help="weight of a direction shared by all identities")
    ap.add_argument("--quality-spread", type=float, default=0.3, help="log-normal spread of the per-face noise level")
    ap.add_argument("--isotropic", action="store_true",
                    help="plain model: isotropic centres and noise, no shared direction, same-cos 0.7 unless given")
    ap.add_argument("--seed", type=int, default=1234)


def apply_isotropic(args: argparse.Namespace, argv: list[str] | None) -> None:
    if args.isotropic:
        args.centre_decay = args.noise_decay = args.mean_norm = args.quality_spread = 0.0
        if "--same-cos" not in " ".join(argv if argv is not None else sys.argv):
            args.same_cos = 0.7


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,100k,1M", help="comma-separated gallery sizes (10k, 1M, 2000 ...)")
    ap.add_argument("--quick", action="store_true", help="10k and 100k only")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000, help="queries per size for recall and latency")
    ap.add_argument("--exact-queries", type=int, default=300, help="timed exact-search queries per size")
    ap.add_argument("--adds", type=int, default=200, help="single adds / replaces / mark_deleted timed per build")
    add_data_args(ap)
    ap.add_argument("--M", dest="ms", default="16,32")
    ap.add_argument("--ef-construction", dest="efcs", default="100,200")
    ap.add_argument("--ef", dest="efs", default="32,64,128,256,512,1024")
    ap.add_argument("--full-sweep-max", type=parse_size, default=100_000,
                    help="sizes up to this get every (M, ef_construction); larger ones the default + 1 more")
    ap.add_argument("--large-configs", default="", help="override for large sizes, e.g. 16:200,16:100")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=25.0, help="minutes; an extra large build that won't fit is skipped")
    ap.add_argument("--recall-target", type=float, default=0.99)
    ap.add_argument("--recall-margin", type=float, default=0.005, help="extra recall asked of the swept size when picking large builds")
    ap.add_argument("--p50-target", type=float, default=2.0)
    ap.add_argument("--add-target", type=float, default=5.0)
    ap.add_argument("--no-concurrency-check", action="store_true")
    ap.add_argument("--concurrency-size", type=parse_size, default=20_000)
    ap.add_argument("--concurrency-runs", type=int, default=3)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--markdown", dest="md_out")
    ap.add_argument("--_concurrency-child", dest="child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    apply_isotropic(args, argv)
    if args.child:
        return concurrency_child(args)

    import hnswlib

    sizes = [10_000, 100_000] if args.quick else sorted(parse_size(s) for s in args.sizes.split(","))
    ms = [int(x) for x in args.ms.split(",")]
    efcs = [int(x) for x in args.efcs.split(",")]
    efs = [int(x) for x in args.efs.split(",")]
    budget_s = args.time_budget * 60
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
        "hnswlib": getattr(hnswlib, "__version__", None) or _dist_version("hnswlib"), "numpy": np.__version__,
        "dim": args.dim, "queries": args.queries, "exact_queries": args.exact_queries, "k": K,
        "build_threads": args.build_threads, "query_threads": 1, "sizes": sizes,
        "faces_per_identity": args.faces_per_identity, "same_cos": args.same_cos, "seed": args.seed,
        "centre_decay": args.centre_decay, "noise_decay": args.noise_decay, "mean_norm": args.mean_norm,
        "quality_spread": args.quality_spread,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "defaults": {"M": DEFAULT_M, "ef_construction": DEFAULT_EFC, "ef": DEFAULT_EF, "exact_search_max": DEFAULT_EXACT_MAX},
    }
    log(f"sizes {[fmt_n(s) for s in sizes]}, dim {args.dim}, {args.queries} queries, build threads {args.build_threads}, "
        f"hnswlib {meta['hnswlib']}, load {meta['loadavg_start']}")
    results, build_times, swept = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as td:
        tmpdir = Path(td)
        for size in sizes:
            log(f"N={fmt_n(size)}: generating faces ...")
            faces = make_faces(size, args)
            data_stats = faces.stats()
            queries, qident = faces.queries(args.queries)
            t = time.perf_counter()
            truth = ground_truth(faces.vectors, queries)
            tsim = np.einsum("qkd,qd->qk", faces.vectors[truth], queries)
            tgen = faces.identity[truth] == qident[:, None]
            data_stats["top5_genuine_cos"] = {"mean": float(tsim[tgen].mean()), "p5": pct(tsim[tgen], 5), "share": float(tgen.mean())}
            data_stats["top5_impostor_cos"] = (
                {"mean": float(tsim[~tgen].mean()), "p99": pct(tsim[~tgen], 99)} if (~tgen).any() else None
            )
            log(f"N={fmt_n(size)}: {data_stats['identities']} identities, same-id cos {data_stats['same_identity_cos']['mean']:.3f}, "
                f"diff-id cos p99 {data_stats['different_identity_cos']['p99']:.3f}; ground truth in {time.perf_counter() - t:.1f}s")
            # exact search, as gallery.py
            ns, agree = [], 0
            nq = min(args.exact_queries, len(queries))
            for q in queries[:10]:
                exact_topk(faces.vectors, q)
            for i, q in enumerate(queries[:nq]):
                t = time.perf_counter_ns()
                top = exact_topk(faces.vectors, q)
                ns.append(time.perf_counter_ns() - t)
                agree += len(set(top.tolist()) & set(truth[i].tolist()))
            exact = {**ms_stats(ns), "agreement_with_ground_truth": agree / (nq * K)}
            log(f"N={fmt_n(size)}: exact p50 {exact['p50_ms']:.3f} ms  p99 {exact['p99_ms']:.3f} ms")
            if size <= args.full_sweep_max:
                configs = [(m, efc) for m in ms for efc in efcs]
            elif args.large_configs:
                configs = [tuple(int(v) for v in c.split(":")) for c in args.large_configs.split(",")]
            else:
                configs = pick_large_configs(swept, build_times, size, budget_s - (time.perf_counter() - _T0), args)
            hnsw = []
            for m, efc in configs:
                b = bench_config(hnswlib, faces, queries, qident, truth, m, efc, efs, args, tmpdir)
                build_times[(size, m, efc)] = b["build_s"]
                hnsw.append(b)
            if size <= args.full_sweep_max:
                prev = [s for s in swept.get("sizes", []) if s < size]
                growth = 1.3
                if prev:  # per-vector build cost growth per 10x, from the previous swept size
                    p = prev[-1]
                    ratios = [build_times[(size, *c)] / build_times[(p, *c)] / (size / p)
                              for c in configs if (p, *c) in build_times and build_times[(p, *c)] > 0]
                    if ratios:
                        growth = float(np.median(ratios)) ** (1 / np.log10(size / p))
                swept = {"size": size, "sizes": swept.get("sizes", []) + [size], "growth": max(growth, 1.0),
                         "configs": {(b["M"], b["ef_construction"]): b["queries"] for b in hnsw}}
            results.append({"size": size, "data": data_stats, "exact": exact, "hnsw": hnsw})
            del faces, queries, qident, truth
            malloc_trim()

    concurrency = None if args.no_concurrency_check else concurrency_check(args)
    rows = flat_rows(results)
    largest = max(r["size"] for r in rows) if rows else 0
    chosen, why = choose(rows, largest, args)
    chosen_genuine, why_genuine = choose(rows, largest, args, "genuine_recall")
    defaults = [r for r in rows if r["is_default"]]
    # alternatives worth knowing: the fastest qualifying query at the largest size
    quals = [r for r in rows if r["size"] == largest and r["recall_at_5"] >= args.recall_target and r["p50_ms"] <= args.p50_target]
    fastest = min(quals, key=lambda r: r["p50_ms"]) if quals else None
    meta["total_s"] = time.perf_counter() - _T0
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "meta": meta, "results": results, "rows": rows, "chosen": chosen, "chosen_reason": why,
        "chosen_by_genuine_recall": chosen_genuine, "chosen_by_genuine_recall_reason": why_genuine,
        "fastest_qualifying": fastest, "defaults": defaults, "concurrency": concurrency,
        "targets": {"recall_at_5": args.recall_target, "p50_ms": args.p50_target, "add_ms": args.add_target},
    }
    print()
    write_report(report, markdown(report), args.json_out, args.md_out, default=_json_default)
    log(f"done in {meta['total_s'] / 60:.1f} min")
    return 0


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


if __name__ == "__main__":
    sys.exit(main())
