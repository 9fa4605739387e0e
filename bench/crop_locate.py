"""How the server finds the alignment points in a client's face crop: cost per crop and faithfulness.

For photos of a labelled folder (default ../shared/faces/lfw-dev), the reference is the central face
aligned on the whole photo; a client's crop (BlazeFace box grown by --margins, JPEG q90 as the
clients send it) is located by several strategies, embedded, and compared with the reference
(mean cosine similarity; higher is closer to the whole-photo alignment; biased towards the strategies
that locate as the whole-photo path does: BlazeFace, then YuNet near its box). So each strategy's
embeddings of all the crops are also scored as a recognizer, on their own: every pair of crops of the
labelled people, genuine (same person) or not: equal error rate, true accept rate at 0.1% false
accepts, and rank-1 (each crop against all the others). Times are the locate step alone, one thread.

    python bench/crop_locate.py [DIR] [--limit 300] [--margins 0 0.25] [--strategies served padded_first] [--upscale 2.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from facegate.clients.http import crop_face, encode_jpeg
from facegate.config import Settings
from facegate.vision.detect import Face, face_around_eyes, pick_main_face
from facegate.errors import NoFaceError
from facegate.vision.imageio import decode_image
from facegate.eval.metrics import eer, pair_scores, tar_at_far
from facegate.pipeline import Pipeline
from facegate.vision.locate import CROP_LIKE, LocatedFace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_http import central_face  # noqa: E402


def strategies(p: Pipeline) -> dict:
    det, yn = p.detector, p.yunet

    def unpadded_first(im, eyes=None):  # the code before the padded copy came first: BlazeFace, again on a padded copy when the face fills the crop, then YuNet near it
        h, w = im.shape[:2]
        face = pick_main_face(det.detect(im), im.shape)
        if face is None or face.width > CROP_LIKE * w or face.height > CROP_LIKE * h:
            face = pick_main_face(det.detect_in_crop(im), im.shape) or face
        return face, yn.landmarks_near(im, face) if face else None

    def padded_first(context: float, side: int):  # BlazeFace on the padded copy first, YuNet near its box (served until 2026-11-30)
        def run(im, eyes=None):
            face = pick_main_face(det.detect_in_crop(im), im.shape)
            return face, yn.landmarks_near(im, face, context=context, side=side) if face else None

        return run

    def yunet_direct(context: float):  # no BlazeFace: YuNet around the whole crop (served at CROP_CONTEXT, with fallbacks)
        def run(im, eyes=None):
            h, w = im.shape[:2]
            whole = Face(box=(0.0, 0.0, float(w), float(h)), score=1.0, keypoints=np.zeros((6, 2)))
            near = yn.landmarks_near(im, whole, context=context)
            return near, near

        return run

    def eyes_window(im, eyes):  # no BlazeFace: YuNet around the box the client's eye points imply
        near = yn.landmarks_near(im, face_around_eyes(eyes))
        return (near, near) if near is not None else padded_first(0.6, 192)(im)

    def served(im, eyes):  # what /predict does: Pipeline.locate(crop=True)
        try:
            return p.locate(im, eyes, crop=True), None
        except NoFaceError:
            return None, None

    mesh = None

    def facemesh(context: float):  # MediaPipe FaceMesh (478 points, irises refined) on the crop padded by context: its five template points
        def run(im, eyes=None):
            nonlocal mesh
            if mesh is None:
                import mediapipe as mp

                mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1)
            h, w = im.shape[:2]
            pad = round(context * max(h, w))
            found = mesh.process(np.ascontiguousarray(np.pad(im, ((pad, pad), (pad, pad), (0, 0)))))
            if not found.multi_face_landmarks:
                return None, None
            lm = found.multi_face_landmarks[0].landmark
            pts = np.array([(lm[i].x * (w + 2 * pad) - pad, lm[i].y * (h + 2 * pad) - pad) for i in (468, 473, 1, 61, 291)])
            eye_pts, mouth = pts[np.argsort(pts[:2, 0])], pts[3:][np.argsort(pts[3:, 0])]  # in the image's left-to-right order
            five = np.vstack([eye_pts, pts[2:3], mouth])
            face = Face(box=(*five.min(axis=0), *five.max(axis=0)), score=1.0, keypoints=five)
            return face, face

        return run

    return {
        "served: Pipeline.locate(crop=True)": served,
        "facemesh(0.4)": facemesh(0.4),
        "eyes_window(0.6,192)": eyes_window,
        "unpadded_first(0.6,192)": unpadded_first,
        "yunet_direct(0.3)": yunet_direct(0.3),
        "yunet_direct(0.4)": yunet_direct(0.4),
        "padded_first(0.6,192)": padded_first(0.6, 192),
        "padded_first(0.4,160)": padded_first(0.4, 160),
        "yunet_direct(0.6)": yunet_direct(0.6),
    }


def recognition(vecs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Verification over all pairs (``facegate.eval.metrics``, as ``facegate eval``) and leave-one-out rank-1 of one set of unit vectors."""
    gen, imp = pair_scores(vecs, list(labels))
    sim = vecs @ vecs.T
    np.fill_diagonal(sim, -np.inf)
    return {"eer": eer(gen, imp)[0], "tar_at_far_1e-3": tar_at_far(gen, imp, 1e-3)[0], "rank1": float(np.mean(labels[np.argmax(sim, axis=1)] == labels))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/faces/lfw-dev"))
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.25])
    ap.add_argument("--strategies", nargs="+", help="only these (names as in the table, up to the parenthesis)")
    ap.add_argument("--upscale", type=float, default=1.0, help="scale each photo by this (bicubic) first: the bigger crops of a closer or sharper camera")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    p = Pipeline.from_settings(Settings(data_dir=tmp.name), batching=False)
    strats = {k: v for k, v in strategies(p).items() if not args.strategies or k.split("(")[0].split(":")[0] in args.strategies}
    photos = sorted(Path(args.dir).glob("*/*.jpg"))[: args.limit]
    cos: dict[float, list[dict[str, float]]] = {m: [] for m in args.margins}  # per crop: strategy -> cosine
    vec: dict[float, list[dict[str, np.ndarray]]] = {m: [] for m in args.margins}  # per crop: strategy -> embedding
    who: list[str] = []
    secs = {m: {k: [] for k in strats} for m in args.margins}
    missed = {m: {k: 0 for k in strats} for m in args.margins}
    for path in photos:
        img, face = central_face(p.detector, path)
        if face is None:
            continue
        if args.upscale != 1.0:
            img = cv2.resize(img, None, fx=args.upscale, fy=args.upscale, interpolation=cv2.INTER_CUBIC)
            face = face.scaled(args.upscale, args.upscale, 0.0, 0.0)
        ref = p.embed([p.locate(img).aligned])[0]
        who.append(path.parent.name)
        for m in args.margins:
            crop, eyes = crop_face(img, face, m)
            crop = decode_image(encode_jpeg(crop, 90))
            cos[m].append({})
            vec[m].append({})
            for name, fn in strats.items():
                t0 = time.perf_counter()
                f, near = fn(crop, eyes)
                if isinstance(f, LocatedFace):
                    lf = f
                elif near is None:
                    missed[m][name] += 1
                    continue
                else:
                    lf = p.locator._aligned(crop, f, near.keypoints.copy(), "detector")
                secs[m][name].append(time.perf_counter() - t0)
                vec[m][-1][name] = p.embed([lf.aligned])[0]
                cos[m][-1][name] = float(vec[m][-1][name] @ ref)
    out = {}
    for m in args.margins:
        both = [i for i, c in enumerate(cos[m]) if len(c) == len(strats)]  # crops every strategy located: one set for all
        labels = np.array([who[i] for i in both])
        out[str(m)] = {
            k: {"mean_cosine": float(np.mean([cos[m][i][k] for i in both])), "n": len(both),
                "ms_median": 1000 * float(np.median(secs[m][k])), "no_points": missed[m][k]}
            | recognition(np.stack([vec[m][i][k] for i in both]), labels)
            for k in strats
        }
    print(f"{len(photos)} photos from {args.dir}")
    print("| margin | strategy | mean cosine to whole-photo alignment | EER | TAR @ FAR 0.1% | rank-1 | crops compared | locate ms (median) | crops it located no face in |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, rows in out.items():
        for k, r in rows.items():
            print(
                f"| {m} | {k} | {r['mean_cosine']:.4f} | {r['eer']:.4f} | {r['tar_at_far_1e-3']:.4f} | {r['rank1']:.4f} "
                f"| {r['n']} | {r['ms_median']:.2f} | {r['no_points']} |"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    p.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
