"""Per-face quality signals and the accept / retry decision.

A face recognised from a blurred, dark, tiny or turned crop is a guess; a guess stored at
enrolment spoils every later search. Each signal here is cheap and measurable on what the
pipeline already has (the detection, its keypoints and the aligned 112x112 crop), and each
threshold lives in ``Settings`` and was chosen from ``facegate eval --compare`` figures
(README, "Accuracy"). Knows nothing of HTTP.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .headpose import head_pose

#: The central part of the aligned crop that is face in the ArcFace template (skips hair, background, warp borders).
_CORE = (slice(24, 104), slice(20, 92))


@dataclass(frozen=True)
class Quality:
    """Measured signals of one located face. ``None`` means not measurable on this path."""

    #: Side, in input-image pixels, of the region the 112x112 aligned crop was taken from (below 112: upsampled).
    face_px: float
    #: Detector confidence (None when only the client's eye points aligned the face).
    det_score: float | None
    #: Variance of the Laplacian of the crop's grey core over the core's variance (x100): low for blurred or upsampled faces.
    sharpness: float
    #: Mean grey level (0..255) of the crop's core.
    brightness: float
    #: Share of the core's pixels that are black (<= 8) or white (>= 247).
    clipped: float
    #: Head turn, degrees: > 0 the face turned toward the image's left (the subject's right), < 0 toward its right.
    #: From the detector's 4 or 5 points (``headpose.head_pose``); None with the eye points alone.
    yaw: float | None
    #: Head tilt in the image plane, degrees, > 0 clockwise as seen in the image (the head pose's roll with 4 or
    #: 5 points, else the eye line's angle).
    roll: float
    #: Embedding feature norm before normalisation (low for poor faces); None until the face is embedded.
    feature_norm: float | None = None
    #: Share of the aligned crop that lies inside the input image (a tight client crop leaves its borders black).
    coverage: float = 1.0
    #: Head nod, degrees, > 0 chin up (``headpose.head_pose``; YuNet's points place it to ~10 degrees, see there);
    #: None with fewer than 4 points.
    pitch: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


#: Feature-norm floors (enrol, retry) measured per bundled model with `facegate eval` (README, "Accuracy").
#: SFace's raw 128-d feature norm falls on occluded, blurred, turned or badly lit faces, as AdaFace's does
#: by design: on lfw-dev the 2% of photos with the lowest norm hold half the genuine pairs missed at FAR 1e-3.
#: Imported models have none until measured on your own photos (set enroll/retry_min_feature_norm).
#: 9.0 for both: on lfw-dev it leaves out 0.3 % of enrolment photos and answers 0.3 % of probes "retry" (10.0 did
#: 2.1 % and 2.1 %, refusing clean portraits at 9.98); on the degraded copies it still holds back their worst
#: faces (docs, Accuracy: `facegate eval --edc --degrade all`).
MODEL_NORM_FLOORS: dict[str, tuple[float, float]] = {"sface": (9.0, 9.0)}

#: How far the norm floor drops per unit of the aligned crop left black (outside the input image).
#: Missing pixels lower the norm without the face being poor: a bare-box client crop (about 62% of
#: the aligned region inside it) has a norm 1.1 lower on average than the same face in its whole
#: photo (240 lfw-dev photos), i.e. ~2.9 per unit not covered.
NORM_DROP_PER_UNCOVERED = 2.9


def norm_floor(model_name: str, configured: float | None, which: int) -> float | None:
    """The feature-norm limit in force: the configured one (0 switches it off), else the model's measured default."""
    if configured is not None:
        return configured or None
    floors = MODEL_NORM_FLOORS.get(model_name)
    return floors[which] if floors else None


@dataclass(frozen=True)
class QualityThresholds:
    """Limits below/above which a face is refused (a ``None`` limit is not checked)."""

    min_face_px: float | None = None
    min_det_score: float | None = None
    min_sharpness: float | None = None
    min_brightness: float | None = None
    max_brightness: float | None = None
    max_clipped: float | None = None
    max_yaw: float | None = None
    max_roll: float | None = None
    min_feature_norm: float | None = None


@dataclass(frozen=True)
class Verdict:
    """The decision on one face: ``ok``, or the reasons it is not, for people (e.g. "too dark: brightness 21 < 40")."""

    quality: Quality
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons


def pose_from_points(points: np.ndarray) -> tuple[float | None, float]:
    """(yaw, roll) in degrees from alignment points (eyes first, then the nose tip if present), in
    ``Quality``'s convention: yaw > 0 the face turned toward the image's left, roll > 0 clockwise.

    With 4 or 5 points (BlazeFace's, YuNet's): the head pose fitted to a 3D mean face
    (``headpose.head_pose``). With 2: no yaw, and roll is the eye line's angle. With 3 (eyes and
    nose tip): yaw from how far the nose tip sits from the eyes' midpoint along the eye line, at
    about 0.5 inter-eye distances per radian of turn (saturates beyond ~45 degrees: reads 90 for a
    face turned 30 on real photos, ``bench/headpose.py``).
    """
    if len(points) in (4, 5):
        pose = head_pose(points)
        if pose is not None:
            return pose.yaw, pose.roll
    p = np.asarray(points, dtype=np.float64).tolist()  # a few points: plain floats (NumPy's call overhead)
    dx, dy = p[1][0] - p[0][0], p[1][1] - p[0][1]
    iod = math.hypot(dx, dy)
    roll = math.degrees(math.atan2(dy, dx))
    if len(p) < 3 or iod < 1e-6:
        return None, roll
    offset = ((p[2][0] - (p[0][0] + p[1][0]) / 2) * dx + (p[2][1] - (p[0][1] + p[1][1]) / 2) * dy) / (iod * iod)
    yaw = -math.degrees(math.asin(min(1.0, max(-1.0, offset / 0.5))))  # nose toward the image's right: yaw < 0
    return yaw, roll


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    """Sample points (every 4th pixel centre) of a ``size`` x ``size`` crop, as a (2, n) array."""
    ys, xs = np.mgrid[0:size:4, 0:size:4]
    return np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5])


def coverage(matrix: np.ndarray, image_shape: tuple[int, ...], size: int) -> float:
    """Share of the ``size`` x ``size`` aligned crop whose source pixel lies inside the image."""
    inv = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    sx, sy = inv[:, :2] @ _grid(size) + inv[:, 2:]
    h, w = image_shape[:2]
    return float(np.count_nonzero((sx >= 0) & (sx < w) & (sy >= 0) & (sy < h))) / sx.size


def measure(
    aligned: np.ndarray,
    matrix: np.ndarray,
    points: np.ndarray,
    det_score: float | None,
    image_shape: tuple[int, ...] | None = None,
    pose_points: np.ndarray | None = None,
) -> Quality:
    """Quality signals of one face from its aligned crop, the 2x3 alignment matrix, its alignment points
    and the shape of the image it came from. ``pose_points``: the points the head pose is read from when
    they are not the alignment points (BlazeFace's four read pose better than YuNet's five: ``headpose``)."""
    (a, b, _), (c, d, _) = np.asarray(matrix, dtype=np.float64).tolist()
    face_px = aligned.shape[0] / max(math.sqrt(abs(a * d - b * c)), 1e-9)
    grey = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2GRAY)
    core = grey[_CORE]
    mean, sd = (float(v[0, 0]) for v in cv2.meanStdDev(core))
    lap_sd = float(cv2.meanStdDev(cv2.Laplacian(core, cv2.CV_32F))[1][0, 0])  # exact: sums of a few uint8 values
    # Divided by the core's own contrast so that a dim face is called dark, not blurred.
    sharpness = 100.0 * lap_sd * lap_sd / max(sd * sd, 1.0)
    clipped = 1.0 - cv2.countNonZero(cv2.inRange(core, 9, 246)) / core.size  # <= 8 or >= 247
    src = points if pose_points is None else pose_points
    pose = head_pose(src) if len(src) in (4, 5) else None
    if pose is not None:
        yaw, roll, pitch = pose.yaw, pose.roll, pose.pitch
    else:
        (yaw, roll), pitch = pose_from_points(points), None
    return Quality(
        face_px=float(face_px),
        det_score=None if det_score is None else float(det_score),
        sharpness=sharpness,
        brightness=mean,
        clipped=clipped,
        yaw=yaw,
        roll=roll,
        coverage=1.0 if image_shape is None else coverage(matrix, image_shape, aligned.shape[0]),
        pitch=pitch,
    )


def _likely_cause(q: Quality) -> str:
    """What the measured signals say about an unclear face, for the person to act on; each clause is true of
    the photo (a measured value past a level where faces are visibly poor), none decided the refusal."""
    hints = []
    if q.brightness < 40:
        hints.append(f"too dark: brightness {q.brightness:.0f}, add light")
    elif q.brightness > 220:
        hints.append(f"too bright: brightness {q.brightness:.0f}")
    if q.sharpness < 2.0:
        hints.append(f"blurred: sharpness {q.sharpness:.1f}, hold still")
    if q.yaw is not None and abs(q.yaw) > 30:
        hints.append(f"head turned {abs(q.yaw):.0f} deg, look at the camera")
    if q.face_px < 64:
        hints.append(f"small face: {q.face_px:.0f} px, move closer")
    return "; ".join(hints) if hints else "occluded, or badly lit?"


def judge(q: Quality, t: QualityThresholds) -> Verdict:
    """Every threshold ``q`` fails, as reasons a person can act on."""
    r: list[str] = []
    if t.min_face_px is not None and q.face_px < t.min_face_px:
        r.append(f"face too small: {q.face_px:.0f} px < {t.min_face_px:.0f} (move closer)")
    if t.min_det_score is not None and q.det_score is not None and q.det_score < t.min_det_score:
        r.append(f"face barely detected: score {q.det_score:.2f} < {t.min_det_score:.2f}")
    if t.min_brightness is not None and q.brightness < t.min_brightness:
        r.append(f"too dark: brightness {q.brightness:.0f} < {t.min_brightness:.0f} (add light)")
    if t.max_brightness is not None and q.brightness > t.max_brightness:
        r.append(f"too bright: brightness {q.brightness:.0f} > {t.max_brightness:.0f}")
    if t.max_clipped is not None and q.clipped > t.max_clipped:
        r.append(f"over- or under-exposed: {q.clipped:.0%} of the face clipped > {t.max_clipped:.0%}")
    if t.min_sharpness is not None and q.sharpness < t.min_sharpness:
        r.append(f"blurred: sharpness {q.sharpness:.1f} < {t.min_sharpness:.1f} (hold still, focus)")
    if t.max_yaw is not None and q.yaw is not None and abs(q.yaw) > t.max_yaw:
        r.append(f"head turned: yaw {abs(q.yaw):.0f} deg > {t.max_yaw:.0f} (look at the camera)")
    if t.max_roll is not None and abs(q.roll) > t.max_roll:
        r.append(f"head tilted: roll {abs(q.roll):.0f} deg > {t.max_roll:.0f}")
    if t.min_feature_norm is not None and q.feature_norm is not None:
        floor = t.min_feature_norm - NORM_DROP_PER_UNCOVERED * (1.0 - q.coverage)
        if q.feature_norm < floor:
            r.append(f"unclear face: feature norm {q.feature_norm:.2f} < {floor:.2f} ({_likely_cause(q)})")
    return Verdict(q, tuple(r))
