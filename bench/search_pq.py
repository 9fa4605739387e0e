"""Large-gallery search as the gallery does it by default: 4-bit PQ scan of every face + exact re-rank.

Same synthetic face-like population as ``bench/search.py`` (vectors fitted to SFace's statistics on
lfw-dev; its data options apply here too), so the two read side by side. For each size:

- index: PQIndex build time (codebook training on <= 65k faces + encoding all), memory (RSS growth
  of this process), single add p50/p99;
- per ``--rerank`` (candidates re-ranked per result wanted; the gallery's ``pq_rerank``): single-query
  p50/p99 (one query at a time: scan + exact re-rank, exactly ``Gallery.search``'s code; from 200k faces
  the shards are scanned in parallel) and recall@5, and how often the first answer is the exact first,
  against exact search;
- with ``--gallery``: a real SQLite ``Gallery`` holding the faces (written in one transaction), its
  start time (load + index build) and ``Gallery.search()`` p50/p99 at the default setting, and
  ``Gallery.add_person`` with one face (an SQLite commit with fsync, which dominates).

    python bench/search_pq.py [--sizes 10k,100k,1M] [--gallery] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402
from search import K, add_data_args, apply_isotropic, fmt_n, ground_truth, make_faces, malloc_trim, ms_stats, parse_size, recall, rss_bytes  # noqa: E402

from facegate.gallery.pqindex import PQIndex, RowMap, exact_top  # noqa: E402


def bench_index(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, reranks: list[int], adds: int) -> dict:
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)  # face ids as the gallery has them: ascending
    malloc_trim()
    rss0 = rss_bytes()
    t = time.perf_counter()
    index = PQIndex(vectors.shape[1], vectors, ids)
    build_s = time.perf_counter() - t
    rss = rss_bytes() - rss0
    out = {"build_s": build_s, "rss_mib": rss / 2**20, "by_rerank": {}}
    table = RowMap.build(ids)  # the gallery's id -> row map, as ``Gallery.search`` re-ranks
    for r in reranks:
        for q in queries[:20]:  # warm-up
            exact_top(q, index.candidates(q, K * r), ids, vectors, K, table)
        found, secs = np.empty((len(queries), K), np.int64), []
        for i, q in enumerate(queries):
            t = time.perf_counter_ns()
            rows, _ = exact_top(q, index.candidates(q, K * r), ids, vectors, K, table)
            secs.append(time.perf_counter_ns() - t)
            found[i] = rows  # rows == positions in ``vectors``, as ``truth``
        out["by_rerank"][r] = {**ms_stats(secs), "recall_at_5": recall(found, truth), "recall_at_1": float(np.mean(found[:, 0] == truth[:, 0]))}
    extra = vectors[:adds] + np.float32(0.01)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    secs = []
    for i, v in enumerate(extra):
        t = time.perf_counter_ns()
        index.add(v[None], np.array([len(vectors) + 1 + i], np.int64))
        secs.append(time.perf_counter_ns() - t)
    out["add"] = ms_stats(secs)
    return out


def bench_gallery(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, tmp: Path) -> dict:
    """Through the real ``Gallery``: SQLite, load at start, the default search path."""
    from facegate.gallery.sqlite import Gallery, NewFace

    data = tmp / f"g{len(vectors)}"
    g = Gallery(data, "bench", vectors.shape[1], exact_search_max=0, save_delay_s=60)
    t = time.perf_counter()
    g.add_person("everyone", [NewFace(v) for v in vectors], "bench")  # one transaction
    write_s = time.perf_counter() - t
    g.close()
    t = time.perf_counter()
    g = Gallery(data, "bench", vectors.shape[1], exact_search_max=0, save_delay_s=60)
    start_s = time.perf_counter() - t
    assert g.search_mode == "pq"
    for q in queries[:20]:
        g.search(q, K)
    secs, found = [], np.empty((len(queries), K), np.int64)
    for i, q in enumerate(queries):
        t = time.perf_counter_ns()
        hits = g.search(q, K)
        secs.append(time.perf_counter_ns() - t)
        found[i] = [h.face_id - 1 for h in hits]  # face ids 1..n in insertion order == rows
    adds = []
    for i, v in enumerate(queries[:50]):  # an enrolment of one face, as a new person
        t = time.perf_counter_ns()
        g.add_person(f"new {i}", [NewFace(v)], "bench")
        adds.append(time.perf_counter_ns() - t)
    g.close()
    return {"write_s": write_s, "start_s": start_s, "search": {**ms_stats(secs), "recall_at_5": recall(found, truth)}, "add_person": ms_stats(adds)}


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpus']} cores, Python {m['python']}, faiss {m['faiss']}; one query at a time "
        "(from 200k faces its shards are scanned in parallel). "
        f"Synthetic SFace-like vectors (bench/search.py's population), {m['queries']} queries per size.",
        "",
        "| faces | build | index memory | re-rank | query p50 / p99 | recall@5 | first = exact first | add p50 / p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        for rr, q in r["index"]["by_rerank"].items():
            lines.append(
                f"| {fmt_n(r['size'])} | {r['index']['build_s']:.1f} s | {r['index']['rss_mib']:.0f} MiB | {rr} | "
                f"{q['p50_ms']:.2f} / {q['p99_ms']:.2f} ms | {q['recall_at_5']:.4f} | {q['recall_at_1']:.4f} | "
                f"{r['index']['add']['p50_ms'] * 1000:.0f} / {r['index']['add']['p99_ms'] * 1000:.0f} µs |"
            )
    gal = [r for r in report["results"] if r.get("gallery")]
    if gal:
        lines += ["", "Through `Gallery` (SQLite, default settings, `exact_search_max=0`):", "",
                  "| faces | written in | start (load + index) | `search()` p50 / p99 | recall@5 | `add_person` (1 face, fsync) p50 / p99 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in gal:
            g = r["gallery"]
            lines.append(
                f"| {fmt_n(r['size'])} | {g['write_s']:.0f} s | {g['start_s']:.1f} s | {g['search']['p50_ms']:.2f} / {g['search']['p99_ms']:.2f} ms "
                f"| {g['search']['recall_at_5']:.4f} | {g['add_person']['p50_ms']:.1f} / {g['add_person']['p99_ms']:.1f} ms |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,100k,1M")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rerank", default="10,20,50,100")
    ap.add_argument("--adds", type=int, default=200)
    ap.add_argument("--gallery", action="store_true", help="also measure through a real SQLite Gallery")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--markdown", dest="md_out")
    add_data_args(ap)
    args = ap.parse_args(argv)
    apply_isotropic(args, argv)
    import faiss

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    meta = {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__,
            "queries": args.queries, "loadavg_start": [round(x, 2) for x in os.getloadavg()], "args": vars(args)}
    reranks = [int(x) for x in args.rerank.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="facegate-pq-") as td:
        for size in sorted(parse_size(s) for s in args.sizes.split(",")):
            faces = make_faces(size, args)
            queries, _ = faces.queries(args.queries)
            truth = ground_truth(faces.vectors, queries)
            r = {"size": size, "index": bench_index(faces.vectors, queries, truth, reranks, args.adds)}
            print(f"{fmt_n(size)}: build {r['index']['build_s']:.1f} s; " + "; ".join(
                f"rerank {k}: {v['p50_ms']:.2f} ms, recall@5 {v['recall_at_5']:.4f}" for k, v in r["index"]["by_rerank"].items()), file=sys.stderr)
            if args.gallery:
                r["gallery"] = bench_gallery(faces.vectors, queries, truth, Path(td))
                print(f"{fmt_n(size)}: gallery {r['gallery']}", file=sys.stderr)
            results.append(r)
            del faces, queries, truth
            malloc_trim()
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"meta": meta, "results": results}
    write_report(report, markdown(report), args.json_out, args.md_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
