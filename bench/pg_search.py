"""PostgreSQL + pgvector HNSW next to hnswlib, on the same synthetic face-like vectors.

The vectors are bench/search.py's (calibrated on SFace embeddings of lfw-dev; seeded). For each
gallery size: hnswlib as the embedded gallery builds it (M=32, ef_construction=200, 2 threads;
query ef=256), and pgvector as the PostgreSQL gallery builds it (the same M and ef_construction,
``CREATE INDEX ... USING hnsw ((embedding::vector(128)) vector_cosine_ops)`` after a COPY, with
maintenance_work_mem 1 GB and one parallel worker) on a throwaway PostgreSQL 18 (facegate.gallery.devdb).
Reported: build time, single-query p50/p99 and recall@5 against exact search for several
``hnsw.ef_search``, both as raw SQL and through ``PgGallery.search`` (what a FaceGate server does
per face: the state row, the index scan, the join with people); and PostgreSQL's exact search
(sequential scan), used up to ``exact_search_max`` faces.

    python bench/pg_search.py                         # 10k and 100k
    python bench/pg_search.py --sizes 2000 --queries 100
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402
import search as sb  # noqa: E402  (bench/search.py: the synthetic faces and the recall helpers)

from facegate.gallery.postgres import PgGallery  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
M, EFC, HNSWLIB_EF = 32, 200, 256
MODEL = "bench/synthetic"


log = sb.log
#: Untimed queries before each timed series (statement preparation, a new pool's connections, cold pages).
WARMUP = 20


def ms(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}


def bench_hnswlib(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    import hnswlib

    t = time.perf_counter()
    idx = hnswlib.Index(space="ip", dim=x.shape[1])
    idx.init_index(max_elements=len(x), M=M, ef_construction=EFC)
    idx.add_items(x, np.arange(len(x)), num_threads=2)
    build = time.perf_counter() - t
    idx.set_ef(HNSWLIB_EF)
    idx.set_num_threads(1)
    for q in queries[:WARMUP]:
        idx.knn_query(q[None], k=sb.K)
    found, times = np.empty((len(queries), sb.K), np.int64), []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        labels, _ = idx.knn_query(q[None], k=sb.K)
        times.append(time.perf_counter() - t)
        found[i] = labels[0]
    return {"build_s": round(build, 2), "ef": HNSWLIB_EF, **ms(times), "recall_at_5": round(sb.recall(found, truth), 4)}


def load_pg(url: str, faces: sb.Faces) -> tuple[object, float]:
    """A PgGallery holding the faces (people = identities), loaded by COPY; returns it and the index build time."""
    import psycopg
    from pgvector.psycopg import register_vector

    g = PgGallery(url, MODEL, faces.dim, exact_search_max=0, hnsw_m=M, hnsw_ef_construction=EFC)
    n = len(faces.vectors)
    with psycopg.connect(url) as con:
        register_vector(con)
        con.execute(f"DROP INDEX faces_hnsw_{faces.dim}")
        with con.cursor() as cur:
            with cur.copy("COPY people (id, name, name_key, created_at) FROM STDIN") as cp:
                for i in range(faces.n_id):
                    cp.write_row((i + 1, f"id{i}", f"id{i}", "bench"))
            with cur.copy("COPY faces (id, person_id, model_id, embedding, created_at) FROM STDIN WITH (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "int8", "text", "vector", "text"])
                for i in range(n):
                    cp.write_row((i + 1, int(faces.identity[i]) + 1, MODEL, faces.vectors[i], "bench"))
        con.execute("UPDATE gallery_state SET people = %s, faces = %s", (faces.n_id, n))
        con.execute("SELECT setval(pg_get_serial_sequence('faces', 'id'), %s)", (n,))
        con.commit()
        con.autocommit = True
        con.execute("VACUUM ANALYZE faces")
        con.autocommit = False
        con.execute("SET maintenance_work_mem = '1GB'")
        con.execute("SET max_parallel_maintenance_workers = 1")  # leader + 1 = the 2 cores
        t = time.perf_counter()
        with con.transaction():
            g._ensure_index(con, faces.dim)
        build = time.perf_counter() - t
    return g, build


def bench_pg(url: str, faces: sb.Faces, queries: np.ndarray, truth: np.ndarray, efs: list[int], exact_queries: int) -> dict:
    import psycopg
    from pgvector.psycopg import register_vector

    g, build = load_pg(url, faces)
    out = {"build_s": round(build, 2), "by_ef": []}
    d = faces.dim
    sql = f"SELECT id FROM faces ORDER BY embedding::vector({d}) <=> %s::vector({d}) LIMIT {sb.K}"
    with psycopg.connect(url, autocommit=True) as con:
        register_vector(con)
        size = con.execute("SELECT pg_relation_size(%s)", (f"faces_hnsw_{d}",)).fetchone()[0]
        out["index_mib"] = round(size / 2**20, 1)
        for ef in efs:
            con.execute(f"SET hnsw.ef_search = {ef:d}")
            for q in queries[:WARMUP]:
                con.execute(sql, (q,), prepare=True).fetchall()
            found, times = np.empty((len(queries), sb.K), np.int64), []
            for i, q in enumerate(queries):
                t = time.perf_counter()
                rows = con.execute(sql, (q,), prepare=True).fetchall()
                times.append(time.perf_counter() - t)
                found[i] = [r[0] - 1 for r in rows] + [-1] * (sb.K - len(rows))
            gal_times = []
            gal = PgGallery(url, MODEL, d, exact_search_max=0, ef_search=ef, prepare=False)
            for q in queries[:WARMUP]:
                gal.search(q, sb.K)
            for q in queries:
                t = time.perf_counter()
                gal.search(q, sb.K)
                gal_times.append(time.perf_counter() - t)
            gal.close()
            row = {"ef_search": ef, "sql": ms(times), "gallery_search": ms(gal_times), "recall_at_5": round(sb.recall(found, truth), 4)}
            log(f"  pgvector ef_search={ef}: {row}")
            out["by_ef"].append(row)
        ex_times = []
        for q in queries[:WARMUP]:
            g.search(q, sb.K, exact=True)
        for q in queries[:exact_queries]:
            t = time.perf_counter()
            g.search(q, sb.K, exact=True)
            ex_times.append(time.perf_counter() - t)
        out["exact_gallery_search"] = ms(ex_times)
    g.close()
    return out


def markdown(report: dict) -> str:
    lines = [
        "| faces | engine | build (2 cores) | index | query p50 / p99 (SQL) | `search()` p50 / p99 | recall@5 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["sizes"]:
        n = sb.fmt_n(r["n"])
        h = r["hnswlib"]
        lines.append(f"| {n} | hnswlib M={M}, ef={h['ef']} | {h['build_s']} s | in memory | {h['p50']} / {h['p99']} ms | - | {h['recall_at_5']:.3f} |")
        p = r["pgvector"]
        for e in p["by_ef"]:
            lines.append(
                f"| {n} | pgvector M={M}, ef_search={e['ef_search']} | {p['build_s']} s | {p['index_mib']} MiB | "
                f"{e['sql']['p50']} / {e['sql']['p99']} ms | {e['gallery_search']['p50']} / {e['gallery_search']['p99']} ms | {e['recall_at_5']:.3f} |"
            )
        x = p["exact_gallery_search"]
        lines.append(f"| {n} | PostgreSQL exact (seq scan) | - | - | - | {x['p50']} / {x['p99']} ms | 1.000 (by definition) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,100k")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--exact-queries", type=int, default=50)
    ap.add_argument("--ef-search", default="40,100,200")
    ap.add_argument("--dim", type=int, default=128)
    sb.add_data_args(ap)  # the same synthetic population as bench/search.py
    ap.add_argument("--json", dest="json_out", default=str(RESULTS / "pg_search.json"))
    ap.add_argument("--markdown", dest="md_out", default=str(RESULTS / "pg_search.md"))
    args = ap.parse_args(argv)
    sb.apply_isotropic(args, argv)

    from facegate.gallery.devdb import DevPostgres

    efs = [int(x) for x in args.ef_search.split(",")]
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "M": M, "ef_construction": EFC, "k": sb.K, "queries": args.queries, "sizes": [],
    }
    with DevPostgres(fsync=False, shared_buffers="1GB") as pg:
        import psycopg

        with psycopg.connect(pg.url, autocommit=True) as con:
            report["machine"]["postgres"] = con.execute("SHOW server_version").fetchone()[0]
        for n in [sb.parse_size(s) for s in args.sizes.split(",")]:
            log(f"N={sb.fmt_n(n)}: generating faces")
            faces = sb.make_faces(n, args)
            queries, _ = faces.queries(args.queries)
            truth = sb.ground_truth(faces.vectors, queries)
            log("  hnswlib")
            h = bench_hnswlib(faces.vectors, queries, truth)
            log(f"  hnswlib: {h}")
            log("  pgvector: loading and building")
            p = bench_pg(pg.create_database(f"bench_{n}"), faces, queries, truth, efs, args.exact_queries)
            log(f"  pgvector build {p['build_s']} s, index {p['index_mib']} MiB, exact {p['exact_gallery_search']}")
            report["sizes"].append({"n": n, "hnswlib": h, "pgvector": p})
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(report, markdown(report), args.json_out, args.md_out)
    log(f"wrote {args.json_out} and {args.md_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
