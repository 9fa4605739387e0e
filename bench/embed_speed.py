"""Embedding speed on this CPU: AdaFace IR-18/50/101 next to the bundled SFace, in ms per face.

Real AdaFace weights cannot be fetched here, and speed does not depend on weight values, so each
IResNet is built with random weights, saved as an AdaFace-style checkpoint and imported with
``facegate.vision.model_import.import_checkpoint`` into a temporary folder: the same ONNX graph a real
import makes. Every model runs through ``facegate.vision.embed.load_embedder`` (onnxruntime, CPU,
intra_op_num_threads=--threads, inter_op 1, the server's path, no flip TTA) at batch 1 and 16;
the unmodified SFace file (fixed batch 1) also runs at batch 1 in a plain onnxruntime session.
``--int8``: also SFace at ``precision = "int8"`` (its 8-bit copy, taken from --data DIR's models/int8 or
built there), timed in the same rounds as the float one; ``--threads 1`` gives faces/s per core.
Warm-up runs first, then --runs rounds that time every model and batch size in turn (so a burst of
load elsewhere hits all alike); a figure is the median call time / batch (the minimum is in the JSON).

    python bench/embed_speed.py [--runs 20] [--warmup 3] [--threads 2] [--json out.json]
    python bench/embed_speed.py --threads 1 --archs "" --int8 --data DIR   # float vs int8, per core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facegate.vision.embed import BUNDLED, load_embedder, model_path

BATCHES = (1, 16)


def time_interleaved(cases: dict[str, callable], warmup: int, runs: int) -> dict[str, list[float]]:
    """Seconds per call of each case. Rounds go through every case in turn, so a burst of load from
    elsewhere on the machine slows all of them alike instead of one model's whole series."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):
        for key, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return times


def export_random(arch: str, folder: Path) -> tuple[str, dict]:
    import torch

    from facegate.vision.iresnet import build_backbone
    from facegate.vision.model_import import import_checkpoint

    torch.manual_seed(0)
    model = build_backbone(arch)
    ckpt = folder / f"random_{arch}.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 0}, ckpt)
    card = import_checkpoint(ckpt, arch, folder / "models", check_samples=1)
    ckpt.unlink()
    params = sum(p.numel() for p in model.parameters())
    return card["name"], {"params_m": round(params / 1e6, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--archs", default="ir18,ir50,ir101")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--int8", action="store_true", help="also SFace at precision int8")
    ap.add_argument("--data", type=Path, help="with --int8: data directory holding (or to build) models/int8/sface.onnx")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (max(BATCHES), 112, 112, 3), dtype=np.uint8)
    rows: list[dict] = []
    cases: dict[tuple[int, int], callable] = {}  # (row, batch) -> one timed call

    # The unmodified SFace file: fixed batch 1, plain onnxruntime session.
    import onnxruntime as ort

    sface_file = model_path(BUNDLED["sface"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(sface_file), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    x1 = np.ascontiguousarray(crops[:1].astype(np.float32).transpose(0, 3, 1, 2))
    dim = int(sess.get_outputs()[0].shape[-1])
    rows.append(
        {"model": "sface (unmodified file)", "dim": dim, "onnx_mb": round(sface_file.stat().st_size / 2**20, 1)}
    )
    cases[(0, 1)] = lambda: sess.run(None, {inp: x1})

    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
        models: list[tuple[str, str, dict, Path | None]] = [("sface", "sface (load_embedder)", {}, None)]
        for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
            t0 = time.perf_counter()
            name, extra = export_random(arch, Path(tmp))
            print(f"exported {arch} (random weights) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            models.append((name, f"adaface {arch}", extra, Path(tmp) / "models"))
        if args.int8:
            int8_dir = (args.data or Path(tmp)) / "models"
            models.insert(1, ("sface", "sface int8 (load_embedder)", {}, int8_dir))
        for name, label, extra, models_dir in models:
            precision = "int8" if "int8" in label else "float"
            emb = load_embedder(name, threads=args.threads, models_dir=models_dir, precision=precision)
            size = (models_dir / ("int8" if precision == "int8" else "") / f"{name}.onnx") if models_dir else sface_file
            rows.append({"model": label, "dim": emb.dim, "onnx_mb": round(size.stat().st_size / 2**20, 1), **extra})
            for b in BATCHES:
                cases[(len(rows) - 1, b)] = lambda emb=emb, b=b: emb.raw(crops[:b])
        times = time_interleaved(cases, args.warmup, args.runs)
    for (i, b), ts in times.items():
        rows[i].setdefault("ms_per_face", {})[str(b)] = statistics.median(ts) * 1000 / b
        rows[i].setdefault("min_ms_per_face", {})[str(b)] = min(ts) * 1000 / b

    base = next(r for r in rows if r["model"] == "sface (load_embedder)")["ms_per_face"]
    print(
        f"\nms per face, median of {args.runs} runs after {args.warmup} warm-up; onnxruntime "
        f"{ort.__version__}, intra_op_num_threads={args.threads}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'model':26} {'dim':>4} {'params':>7} {'ONNX MB':>8} {'batch 1':>9} {'batch 16':>9} {'x SFace (b16)':>14} {'faces/s/core (b16)':>19}")
    for r in rows:
        ms = r["ms_per_face"]
        b1 = f"{ms['1']:.2f}"
        b16 = f"{ms['16']:.2f}" if "16" in ms else "-"
        ratio = f"{ms['16'] / base['16']:.2f}" if "16" in ms else "-"
        params = f"{r['params_m']}M" if "params_m" in r else "-"
        if "16" in ms:
            r["faces_per_s_per_core"] = 1000 / ms["16"] / args.threads
        per_core = f"{r['faces_per_s_per_core']:.0f}" if "16" in ms else "-"
        print(f"{r['model']:26} {r['dim']:>4} {params:>7} {r['onnx_mb']:>8} {b1:>9} {b16:>9} {ratio:>14} {per_core:>19}")

    if args.json_out:
        out = {
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": args.threads,
            "onnxruntime": ort.__version__,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "rows": rows,
        }
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
