"""Choose FaceGate's defaults on a labelled folder (default ../shared/faces/lfw-dev), in-process.

For each detector (short/full range) embeds every photo's central face with and without its
mirror image, then prints verification figures for TTA none/concat/sum: TAR at FAR 1e-2/1e-3/1e-4
and EER over all pairs, plus the thresholds. Writes JSON with --json.

    python bench/lfw_tune.py [DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from facegate.vision import align as al
from facegate.vision.detect import BlazeFaceDetector
from facegate.vision.embed import l2_normalize, load_embedder
from facegate.eval.metrics import eer, pair_scores, tar_at_far

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_http import central_face  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/faces/lfw-dev"))
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    root = Path(args.folder)
    files = [(d.name, p) for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.iterdir())]
    model = load_embedder("sface")
    out = {"folder": str(root), "images": len(files), "results": []}
    for variant in ("short", "full"):
        det = BlazeFaceDetector(variant, 0.5)
        labels, crops, missed = [], [], 0
        t0 = time.perf_counter()
        for name, path in files:
            img, face = central_face(det, path)
            if face is None:
                missed += 1
                continue
            labels.append(name)
            crops.append(al.align(img, al.blazeface_points(face.keypoints)))
        a = np.stack(crops)
        e = model.embed(a)
        f = model.embed(a[:, :, ::-1])
        dt = time.perf_counter() - t0
        variants = {"none": e, "sum": l2_normalize(e + f), "concat": l2_normalize(np.hstack([e, f]))}
        print(f"\ndetector {variant}: {len(crops)} faces, {missed} photos without a face, {dt:.1f}s")
        print(f"{'tta':8} {'TAR@1e-2':>9} {'TAR@1e-3':>9} {'TAR@1e-4':>9} {'EER':>7} {'thr@1e-3':>9} {'thr@1e-4':>9} {'thrEER':>7}")
        for tta, v in variants.items():
            g, i = pair_scores(v, labels)
            r = {"detector": variant, "tta": tta, "genuine_pairs": len(g), "impostor_pairs": len(i), "missed": missed}
            for far in (1e-2, 1e-3, 1e-4):
                tar, thr = tar_at_far(g, i, far)
                r[f"tar@{far:g}"], r[f"thr@{far:g}"] = tar, thr
            r["eer"], r["thr@eer"] = eer(g, i)
            out["results"].append(r)
            print(
                f"{tta:8} {r['tar@0.01']:9.4f} {r['tar@0.001']:9.4f} {r['tar@0.0001']:9.4f} {r['eer']:7.4f}"
                f" {r['thr@0.001']:9.4f} {r['thr@0.0001']:9.4f} {r['thr@eer']:7.4f}"
            )
        det.close()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
