"""Liveness challenges in the gallery's database: what each step of a challenge costs the server.

Per round: ``new`` (POST /v1/challenges: purge when due, count the open ones, insert), ``take`` (the
answer spends it: one conditional UPDATE), ``replayed`` (the answer's 4 frames' SHA-256 remembered),
``passed`` and ``spend_passed`` (an enrolment spends it). Timed per call, in one process, with
``--threads`` stores on one database (each its own connection, as separate server processes have)
working at once. The embedded gallery's SQLite file (synchronous=FULL: an fsync per write) or
PostgreSQL (``--pg URL`` or ``dev``: a throwaway one, fsync on). Frames are random bytes (hashing a
real 50 kB JPEG adds ~0.1 ms per frame, the same for both).

    python bench/challenge_store.py [--rounds 300] [--threads 1] [--pg dev|postgresql://...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from facegate.security.challenges import ChallengeStore

STEPS = ("new", "take", "replayed", "passed", "spend_passed")


def rounds(store: ChallengeStore, n: int, owner: str, out: dict[str, list[float]]) -> None:
    vec = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    for _ in range(n):
        t = [time.perf_counter()]
        c = store.new(owner)
        t.append(time.perf_counter())
        store.take(c.id, owner)
        t.append(time.perf_counter())
        store.replayed([os.urandom(50_000) for _ in range(4)])
        t.append(time.perf_counter())
        store.passed(c.id, owner, vec)
        t.append(time.perf_counter())
        store.spend_passed(c.id, owner)
        t.append(time.perf_counter())
        for step, a, b in zip(STEPS, t, t[1:]):
            out[step].append((b - a) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pg", default=None, help="a postgresql:// URL (an empty database); 'dev': a throwaway one")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="fg-bench-chal-")
    dev = None
    if a.pg == "dev":
        from facegate.gallery.devdb import DevPostgres

        dev = DevPostgres().start()
        url = dev.create_database("bench_challenges")
    else:
        url = a.pg
    try:
        if url:
            from facegate.gallery.pg_challenges import PgChallengeStore

            make = lambda: PgChallengeStore(url)  # noqa: E731
        else:
            from facegate.gallery.challenges import SqliteChallengeStore

            make = lambda: SqliteChallengeStore(Path(tmp.name) / "gallery.sqlite3")  # noqa: E731
        stores = [ChallengeStore(backend=make()) for _ in range(a.threads)]
        times: dict[str, list[float]] = {s: [] for s in STEPS}
        rounds(stores[0], 20, "key:warm@h", {s: [] for s in STEPS})  # connections, caches
        per = [{s: [] for s in STEPS} for _ in stores]
        threads = [threading.Thread(target=rounds, args=(s, a.rounds, f"key:k{i}@h", per[i])) for i, s in enumerate(stores)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        for p in per:
            for s in STEPS:
                times[s] += p[s]
        for s in stores:
            s.close()
    finally:
        if dev is not None:
            dev.stop()
        tmp.cleanup()

    backend = "postgresql" if url else "sqlite"
    result = {
        "backend": backend, "threads": a.threads, "rounds": a.rounds * a.threads,
        "rounds_per_s": round(a.rounds * a.threads / wall, 1), "load_average": os.getloadavg()[0],
        "ms": {s: {"median": round(float(np.median(v)), 2), "p95": round(float(np.percentile(v, 95)), 2)} for s, v in times.items()},
    }
    print(f"{backend}, {a.threads} thread(s), {result['rounds']} rounds: {result['rounds_per_s']} rounds/s (load average {result['load_average']:.1f})")
    for s, m in result["ms"].items():
        print(f"  {s:13s} median {m['median']:6.2f} ms   p95 {m['p95']:6.2f} ms")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
