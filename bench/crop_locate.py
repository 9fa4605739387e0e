"""How the server finds the alignment points in a client's face crop: cost per crop and faithfulness.

For photos of a labelled folder (default ../shared/faces/lfw-dev), the reference is the central face
aligned on the whole photo; a client's crop (BlazeFace box grown by --margins, JPEG q90 as the
clients send it) is located by several strategies, embedded, and compared with the reference
(mean cosine similarity; higher is closer to the whole-photo alignment). Times are the locate step
alone, one thread.

    python bench/crop_locate.py [DIR] [--limit 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facegate.client import crop_face, encode_jpeg
from facegate.config import Settings
from facegate.detect import Face, pick_main_face
from facegate.imageio import decode_image
from facegate.pipeline import CROP_LIKE, Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_http import central_face  # noqa: E402


def eyes_box(eyes: np.ndarray) -> Face:
    """The box BlazeFace would give for these eye points (lfw-dev medians: centre 0.58 eye distances below
    the eyes' midpoint, width 2.45 eye distances)."""
    d = float(np.linalg.norm(eyes[1] - eyes[0]))
    u = (eyes[1] - eyes[0]) / d
    c = eyes.mean(axis=0) + 0.58 * d * np.array([-u[1], u[0]])
    r = 1.225 * d
    return Face((c[0] - r, c[1] - r, c[0] + r, c[1] + r), 1.0, np.zeros((6, 2)))


def strategies(p: Pipeline) -> dict:
    det, yn = p.detector, p.yunet

    def unpadded_first(im, eyes=None):  # the code before: BlazeFace, again on a padded copy when the face fills the crop, then YuNet near it
        h, w = im.shape[:2]
        face = pick_main_face(det.detect(im), im.shape)
        if face is None or face.width > CROP_LIKE * w or face.height > CROP_LIKE * h:
            face = pick_main_face(det.detect_in_crop(im), im.shape) or face
        return face, yn.landmarks_near(im, face) if face else None

    def padded_first(context: float, side: int):  # a crop: BlazeFace on the padded copy first (one pass instead of two)
        def run(im, eyes=None):
            face = pick_main_face(det.detect_in_crop(im), im.shape)
            return face, yn.landmarks_near(im, face, context=context, side=side) if face else None

        return run

    def yunet_direct(context: float):  # no BlazeFace: YuNet around the whole crop (measured, not used: see README)
        def run(im, eyes=None):
            h, w = im.shape[:2]
            whole = Face(box=(0.0, 0.0, float(w), float(h)), score=1.0, keypoints=np.zeros((6, 2)))
            near = yn.landmarks_near(im, whole, context=context)
            return near, near

        return run

    def eyes_window(im, eyes):  # no BlazeFace: YuNet around the box the client's eye points imply
        near = yn.landmarks_near(im, eyes_box(eyes))
        return (near, near) if near is not None else padded_first(0.6, 192)(im)

    return {
        "eyes_window(0.6,192)": eyes_window,
        "unpadded_first(0.6,192)": unpadded_first,
        "yunet_direct(0.3)": yunet_direct(0.3),
        "yunet_direct(0.4)": yunet_direct(0.4),
        "padded_first(0.6,192)": padded_first(0.6, 192),
        "padded_first(0.4,160)": padded_first(0.4, 160),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/faces/lfw-dev"))
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.25])
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    p = Pipeline.from_settings(Settings(data_dir=tmp.name), batching=False)
    strats = strategies(p)
    photos = sorted(Path(args.dir).glob("*/*.jpg"))[: args.limit]
    cos: dict[float, list[dict[str, float]]] = {m: [] for m in args.margins}  # per crop: strategy -> cosine
    secs = {m: {k: [] for k in strats} for m in args.margins}
    missed = {m: {k: 0 for k in strats} for m in args.margins}
    for path in photos:
        img, face = central_face(p.detector, path)
        if face is None:
            continue
        ref = p.embed([p.locate(img).aligned])[0]
        for m in args.margins:
            crop, eyes = crop_face(img, face, m)
            crop = decode_image(encode_jpeg(crop, 90))
            cos[m].append({})
            for name, fn in strats.items():
                t0 = time.perf_counter()
                f, near = fn(crop, eyes)
                if near is None:
                    missed[m][name] += 1
                    continue
                lf = p._aligned(crop, f, near.keypoints.copy(), "detector")
                secs[m][name].append(time.perf_counter() - t0)
                cos[m][-1][name] = float(p.embed([lf.aligned])[0] @ ref)
    out = {}
    for m in args.margins:
        common = [c for c in cos[m] if len(c) == len(strats)]  # crops every strategy located: one set for all
        out[str(m)] = {
            k: {"mean_cosine": float(np.mean([c[k] for c in common])), "n": len(common),
                "ms_median": 1000 * float(np.median(secs[m][k])), "no_points": missed[m][k]}
            for k in strats
        }
    print(f"{len(photos)} photos from {args.dir}")
    print("| margin | strategy | mean cosine to whole-photo alignment | crops compared | locate ms (median) | crops it located no face in |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m, rows in out.items():
        for k, r in rows.items():
            print(f"| {m} | {k} | {r['mean_cosine']:.4f} | {r['n']} | {r['ms_median']:.2f} | {r['no_points']} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    p.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
