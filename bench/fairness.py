"""Fair share under a flood (issue 19, finding 11): one key flooding /predict against one polite key.

Starts `facegate serve` (keys on, default settings) on loopback with two client keys (empty gallery), then runs
two load processes at once for --seconds: --clients connections of the flooding key (from 127.0.0.2) that resend at
once whatever the answer, and --clients connections of the polite key (from 127.0.0.3) that wait Retry-After on a
503 or 429. Each /predict is one face. The load runs in --rounds stretches, each right after the model's best
faces/s is measured (the embedding model with flip TTA alone, this process, the better of one caller on all threads
and one caller per thread, batch 1 and 4): this shared machine's pace drifts, so each stretch is compared with the
model just before it, and the figures are the medians of the rounds.

Each --flood-clients count is a scenario on the same server: 16 flooding connections against 16 polite ones is
equal demand (each key should get half of what is served); 64 against 16 is a heavier flood, whose refusals it
ignores. Prints, per scenario, the polite key's served faces/s as a share of the model's best, both keys'
together, the polite p99 latency and the refusals each key got; --markdown writes the table the docs include.
Bounded: about --seconds + 6 s a round, per scenario, + 10 s.

    python bench/fairness.py [--seconds 20] [--clients 16] [--flood-clients 16 64] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_http import start_server  # noqa: E402
from httpload import client_process  # noqa: E402
from load import predict_body, tta_rate  # noqa: E402
from report import write_report  # noqa: E402


def _key(data_dir: str, role: str, name: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    r = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "keys", "create", "--role", role, "--name", name, "--data", data_dir],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    return r.stdout.strip()


def model_best(tta, lane, threads: int, seconds: float = 1.5) -> float:
    rates = []
    for n in (1, 4):
        rates.append(tta_rate(tta, n, seconds)["requests_per_s"])
        rates.append(tta_rate(lane, n, seconds, callers=threads)["requests_per_s"])
    return max(rates)


def summary(rounds: list, flood_n: int, args) -> dict:
    """One scenario's figures: medians over its rounds of (model best, flood result, polite result)."""

    def rate(r: dict) -> float:
        return len(r["latencies"]) / r["wall"]

    polite_shares = [rate(p) / b for b, _, p in rounds]
    total_shares = [(rate(f) + rate(p)) / b for b, f, p in rounds]
    lat_all = [x for _, _, p in rounds for x in p["latencies"]]
    lat = np.array(lat_all) if lat_all else np.array([float("nan")])

    def codes(which: int) -> dict:
        out: dict = {}
        for r in rounds:
            for k, v in r[which]["codes"].items():
                out[str(k)] = out.get(str(k), 0) + v
        return out

    return {
        "flood_clients": flood_n,
        "polite_clients": args.clients,
        "model_best_faces_per_s": round(float(np.median([b for b, _, _ in rounds])), 2),
        "model_best_by_round": [round(b, 2) for b, _, _ in rounds],
        "polite_faces_per_s": round(float(np.median([rate(p) for _, _, p in rounds])), 2),
        "flood_faces_per_s": round(float(np.median([rate(f) for _, f, _ in rounds])), 2),
        "polite_share": round(float(np.median(polite_shares)), 3),
        "total_share": round(float(np.median(total_shares)), 3),
        "polite_share_by_round": [round(x, 3) for x in polite_shares],
        "total_share_by_round": [round(x, 3) for x in total_shares],
        "polite_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
        "polite_p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1),
        "polite_codes": codes(2),
        "flood_codes": codes(1),
        "errors": {"polite": sum(r[2]["errors"] for r in rounds), "flood": sum(r[1]["errors"] for r in rounds)},
        "seconds": args.seconds,
        "rounds": args.rounds,
    }


def markdown(results: list[dict]) -> str:
    rows = [
        "| flooding connections | polite connections | model alone, faces/s | polite key, faces/s | flooding key, faces/s "
        "| polite share | both keys | polite p99 | refusals to the flooding key (429 / 503) | refusals to the polite key |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        fc, pc = r["flood_codes"], r["polite_codes"]
        polite_refused = pc.get("429", 0) + pc.get("503", 0)
        rows.append(
            f"| {r['flood_clients']} | {r['polite_clients']} | {r['model_best_faces_per_s']:.1f} | {r['polite_faces_per_s']:.1f} "
            f"| {r['flood_faces_per_s']:.1f} | {100 * r['polite_share']:.0f} % | {100 * r['total_share']:.0f} % "
            f"| {r['polite_p99_ms']:.0f} ms | {fc.get('429', 0)} / {fc.get('503', 0)} | {polite_refused} |"
        )
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="of load per scenario, in all its rounds")
    ap.add_argument("--clients", type=int, default=16, help="connections of the polite key")
    ap.add_argument("--flood-clients", type=int, nargs="+", default=[16, 64], help="connections of the flooding key, one scenario each")
    ap.add_argument("--rounds", type=int, default=4, help="stretches of load, each right after the model alone")
    ap.add_argument("--serve-args", default="", help="extra `facegate serve` flags")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--markdown")
    args = ap.parse_args()

    from facegate.config import Settings
    from facegate.vision.embed import FlipTTA, load_embedder

    threads = Settings().inference_threads
    tta = FlipTTA(load_embedder("sface", threads=threads), "sum")
    lane = FlipTTA(load_embedder("sface", threads=1), "sum")
    body = predict_body()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data")
        Path(data).mkdir()
        _key(data, "admin", "ops")
        flood_key, polite_key = _key(data, "client", "flood"), _key(data, "client", "polite")
        proc, url = start_server(data, args.serve_args.split())
        try:
            import httpx

            # The gallery stays empty: /predict embeds and searches all the same (and answers 'unknown').
            with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {polite_key}"}) as c:
                for _ in range(3):
                    assert c.post("/predict", json=body).status_code == 200  # warm
            ctx = mp.get_context("spawn")
            for flood_n in args.flood_clients:
                rounds = []
                for _ in range(args.rounds):  # the machine's pace drifts: the model alone right before each stretch
                    best = model_best(tta, lane, threads, 1.0)
                    qf, qp = ctx.Queue(), ctx.Queue()
                    span = args.seconds / args.rounds
                    flood_kw = {"key": flood_key, "source": "127.0.0.2", "honour": ()}  # resends at once, whatever the answer
                    polite_kw = {"key": polite_key, "source": "127.0.0.3", "honour": (429, 503)}  # waits Retry-After
                    pf = ctx.Process(target=client_process, args=(url, body, flood_n, span, qf, flood_kw))
                    pp = ctx.Process(target=client_process, args=(url, body, args.clients, span, qp, polite_kw))
                    pf.start()
                    pp.start()
                    flood, polite = qf.get(timeout=span + 60), qp.get(timeout=span + 60)
                    pf.join(10)
                    pp.join(10)
                    rounds.append((best, flood, polite))
                r = summary(rounds, flood_n, args)
                results.append(r)
                print(
                    f"{flood_n} flooding vs {args.clients} polite: model best {r['model_best_faces_per_s']:.1f} faces/s | "
                    f"polite {r['polite_faces_per_s']:.1f}/s = {100 * r['polite_share']:.0f} % | flood {r['flood_faces_per_s']:.1f}/s | "
                    f"total {100 * r['total_share']:.0f} % | polite p99 {r['polite_p99_ms']:.0f} ms",
                    flush=True,
                )
                time.sleep(2.0)  # the flood's held refusals drain before the next scenario
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    write_report({"scenarios": results}, markdown(results), args.json_out, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
