"""Server memory with the default model and a large gallery (issue target: 100k faces in <= 1.5 GB).

Fills a data directory with N synthetic faces (unit vectors in SFace's space, stamped with the
server's model id, as `facegate enroll` would store them, without crops), starts `facegate serve`
on it, sends a few real `/predict` requests and `/v1/identify` calls, then reads the server's
resident memory (VmRSS) and its peak (VmHWM) from /proc.

    python bench/memory.py [--faces 100000] [--json bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_http import start_server  # noqa: E402


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM of a process and its children (uvicorn runs in the one process here), MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) / 1024
    return out


def fill(data_dir: Path, n: int, model_id: str, dim: int, people_size: int = 5) -> float:
    from facegate.gallery.sqlite import Gallery, NewFace

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    g = Gallery(data_dir, model_id, dim, save_delay_s=3600)
    try:
        for start in range(0, n, people_size):
            v = rng.standard_normal((min(people_size, n - start), dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            g.add_person(f"person {start // people_size}", [NewFace(x) for x in v], model_id)
    finally:
        g.close()  # writes the HNSW index once
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--json", dest="json_out", default=str(Path(__file__).resolve().parent / "results" / "memory.json"))
    args = ap.parse_args()

    from skimage import data as skdata

    from facegate.clients.http import predict_payload
    from facegate.config import Settings
    from facegate.vision.detect import BlazeFaceDetector
    from facegate.vision.embed import FlipTTA, load_embedder

    s = Settings()
    emb = FlipTTA(load_embedder(s.model, threads=1), s.tta)
    img = np.ascontiguousarray(skdata.astronaut())
    det = BlazeFaceDetector("short")
    face = det.detect(img)[0]
    det.close()
    payload = predict_payload(img, face, margin=0.25)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        fill_s = fill(data_dir, args.faces, emb.model_id, emb.dim)
        proc, url = start_server(str(data_dir), [])
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                health = c.get("/healthz").json()
                idle = proc_memory(proc.pid)
                for _ in range(20):
                    assert c.post("/predict", json=payload).status_code == 200
                served = proc_memory(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    result = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "faces": args.faces,
        "search": health["gallery"]["search"],
        "model": health["model"],
        "fill_s": round(fill_s, 1),
        "rss_idle_mib": round(idle["VmRSS"]),
        "rss_after_requests_mib": round(served["VmRSS"]),
        "peak_mib": round(served["VmHWM"]),
    }
    print(json.dumps(result, indent=1))
    Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
