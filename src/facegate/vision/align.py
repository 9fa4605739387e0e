"""Face alignment: a similarity transform from landmarks to the 112x112 ArcFace template.

Pure numpy/OpenCV functions; they know nothing of models. The template is the one every
ArcFace-family network (SFace, AdaFace, InsightFace) was trained on.
"""

from __future__ import annotations

import cv2
import numpy as np

ALIGNED_SIZE = 112

#: ArcFace 5-point template (112x112): image-left eye, image-right eye, nose tip, left and right mouth corners.
ARCFACE_5 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
#: The same template for BlazeFace's points: eyes, nose tip, and the mouth centre (mean of the corners).
ARCFACE_4 = np.vstack([ARCFACE_5[:3], ARCFACE_5[3:].mean(axis=0)])


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama's (1991) solution, as InsightFace uses it, written in its closed 2-D form: a similarity
    ``[[a, -b], [b, a]]`` is linear in (a, b), so the least-squares fit is two sums instead of an SVD
    (the same matrix to 1e-12, never a reflection; 5 instead of 60 µs on a server's /predict path).
    Returns a 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    # A handful of points: plain floats, where NumPy's per-call overhead would be most of the cost.
    n = len(src)
    s, d = src.tolist(), dst.tolist()
    msx, msy = sum(p[0] for p in s) / n, sum(p[1] for p in s) / n
    mdx, mdy = sum(p[0] for p in d) / n, sum(p[1] for p in d) / n
    var_s = dot = cross = 0.0
    for (sx, sy), (dx, dy) in zip(s, d):
        sx, sy, dx, dy = sx - msx, sy - msy, dx - mdx, dy - mdy
        var_s += sx * sx + sy * sy
        dot += sx * dx + sy * dy
        cross += sx * dy - sy * dx
    if not var_s > 1e-12 * n:  # also NaN
        raise ValueError("degenerate landmarks: all points coincide")
    a, b = dot / var_s, cross / var_s
    return np.array([[a, -b, mdx - a * msx + b * msy], [b, a, mdy - b * msx - a * msy]])


def transform_for(points: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The 2x3 matrix aligning ``points`` (2 eyes; or eyes, nose, mouth centre; or the 5 ArcFace points)."""
    pts = np.asarray(points, dtype=np.float64)
    templates = {2: ARCFACE_5[:2], 4: ARCFACE_4, 5: ARCFACE_5}
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in templates:
        raise ValueError(f"expected 2, 4 or 5 landmarks as (N, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks must be finite numbers")
    return umeyama_similarity(pts, templates[pts.shape[0]] * (size / ALIGNED_SIZE))


def warp(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def align(image: np.ndarray, points: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Aligned ``size``x``size`` crop of ``image`` (same channel order) from its landmarks."""
    return warp(image, transform_for(points, size), size)


def blazeface_points(keypoints: np.ndarray) -> np.ndarray:
    """The 4 alignment points of BlazeFace's 6 keypoints: both eyes, nose tip, mouth centre (ears are too unstable)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (6, 2):
        raise ValueError(f"expected BlazeFace's (6, 2) keypoints, got {kp.shape}")
    return kp[:4]


def face_points(keypoints: np.ndarray) -> np.ndarray:
    """Alignment points of a detector's keypoints: BlazeFace's (6, 2) -> 4 points, YuNet's (5, 2) -> all 5."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape == (5, 2):
        return kp
    return blazeface_points(kp)


def eye_points(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    """Two eye centres as sent by the reference clients, ordered image-left first whatever order they came in."""
    pts = np.array([[x1, y1], [x2, y2]], dtype=np.float64)
    if pts[0, 0] > pts[1, 0]:
        pts = pts[::-1]
    return pts
