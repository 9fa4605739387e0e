"""What the passive liveness check costs a request: milliseconds a face, in process, one request at a time.

Imports the two MiniFASNet checkpoints into a throwaway data directory (or uses --data's), then on the
reference's three samples and --photos lfw-dev photos measures, interleaved round by round:

- ``check``: ``Pipeline.passive_check`` of one located face (both crops, both models, the fusion);
- ``identify off`` / ``identify passive``: ``Pipeline.identify_all`` of the photo with liveness off and
  "passive" (same models, same gallery); their difference is what the setting adds to a request.

Medians and minima of wall time over --rounds, and the median CPU time of the calling thread
(onnxruntime runs these single-threaded models in it); the machine's load average is printed
beside them (a shared machine inflates wall-time medians; minima and CPU times much less).

    python bench/liveness.py [--data DIR] [--rounds 30] [--photos 20] [--json bench/results/liveness.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facegate.config import Settings
from facegate.pipeline import Pipeline
from facegate.vision.imageio import read_image_file

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINIFAS = SHARED / "models" / "minifasnet"
LFW = SHARED / "faces" / "lfw-dev"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a data directory with the liveness models imported (default: import them into a temporary one)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--photos", type=int, default=20, help="lfw-dev photos besides the three samples")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="facegate-bench-liveness-")
    data = a.data
    if data is None:
        from facegate.vision.liveness_import import import_liveness

        data = Path(tmp.name) / "data"
        for f, arch in (("2.7_80x80_MiniFASNetV2.pth", "minifasnet-v2"), ("4_0_0_80x80_MiniFASNetV1SE.pth", "minifasnet-v1se")):
            import_liveness(MINIFAS / f, arch, data / "models")
    paths = sorted((MINIFAS / "samples").glob("*.jpg")) + sorted(LFW.glob("*/*"))[: a.photos]
    images = [read_image_file(str(p)) for p in paths]
    off = Pipeline.from_settings(Settings(data_dir=data, liveness="off"))
    on = Pipeline.from_settings(Settings(data_dir=data / "on", liveness="off"))
    on.liveness, on.settings = off.liveness, Settings(data_dir=data / "on", liveness="passive")
    located = [off.locate(img) for img in images]
    times: dict[str, list[float]] = {"check": [], "identify off": [], "identify passive": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # this thread's CPU time: less sensitive to a busy machine
    for img, lf in zip(images, located):  # warm-up
        off.passive_check(img, [lf]), off.identify_all(img), on.identify_all(img)
    load = os.getloadavg()
    for _ in range(a.rounds):
        for img, lf in zip(images, located):
            t0, c0 = time.perf_counter(), time.thread_time()
            off.passive_check(img, [lf])
            t1, c1 = time.perf_counter(), time.thread_time()
            off.identify_all(img)
            t2, c2 = time.perf_counter(), time.thread_time()
            on.identify_all(img)
            t3, c3 = time.perf_counter(), time.thread_time()
            cpu["check"].append(c1 - c0)
            cpu["identify off"].append(c2 - c1)
            cpu["identify passive"].append(c3 - c2)
            times["check"].append(t1 - t0)
            times["identify off"].append(t2 - t1)
            times["identify passive"].append(t3 - t2)
    off.close(), on.close()
    ms = {k: {"median": round(1e3 * float(np.median(v)), 2), "min": round(1e3 * float(np.min(v)), 2)} for k, v in times.items()}
    cpu_ms = {k: round(1e3 * float(np.median(v)), 2) for k, v in cpu.items()}
    added = np.array(times["identify passive"]) - np.array(times["identify off"])
    doc = {
        "photos": len(images),
        "rounds": a.rounds,
        "models": off.liveness.names,
        "ms": ms,
        "cpu ms median": cpu_ms,
        "identify added median ms": round(1e3 * float(np.median(added)), 2),
        "load average before": [round(x, 2) for x in load],
        "load average after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    for k, v in ms.items():
        print(f"{k:<18} median {v['median']:7.2f} ms   min {v['min']:7.2f} ms   CPU median {cpu_ms[k]:7.2f} ms")
    print(f"passive adds {doc['identify added median ms']:.2f} ms a face to identify (median of paired differences)")
    print(f"load average {doc['load average before']} -> {doc['load average after']} on {doc['cpus']} CPUs")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
