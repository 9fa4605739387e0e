"""facegate.vision.detect: BlazeFace on real faces, keypoint geometry, crops, downscaling, and the main-face rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facegate.vision.detect import KEYPOINT_NAMES, BlazeFaceDetector, Face, pick_main_face, shrink

KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


@pytest.fixture(scope="module")
def full_detector():
    det = BlazeFaceDetector("full", pool_size=1)
    yield det
    det.close()


@pytest.fixture(params=["short", "full"])
def any_detector(request, detector, full_detector):
    return detector if request.param == "short" else full_detector


def _inside(pt, box, margin=0.0) -> bool:
    x1, y1, x2, y2 = box
    return x1 - margin <= pt[0] <= x2 + margin and y1 - margin <= pt[1] <= y2 + margin


def _check_face_geometry(face: Face) -> None:
    kp = face.keypoints
    assert kp.shape == (6, 2) and kp.dtype == np.float64
    re, le, nose, mouth = kp[KP["right_eye"]], kp[KP["left_eye"]], kp[KP["nose_tip"]], kp[KP["mouth_center"]]
    # image coordinates: y grows downwards; the subject's right eye is on the image's left
    assert re[0] < le[0]
    assert max(re[1], le[1]) < nose[1] < mouth[1]
    assert re[0] < nose[0] < le[0] and re[0] < mouth[0] < le[0]
    assert kp[KP["right_ear"]][0] < re[0] and kp[KP["left_ear"]][0] > le[0]
    np.testing.assert_array_equal(face.eyes, kp[:2])
    for p in (re, le, nose, mouth):
        assert _inside(p, face.box)


# ----------------------------------------------------------------------------- construction
def test_detector_names_and_bad_variant(detector, full_detector):
    assert detector.variant == "short" and detector.name == "blazeface-short"
    assert full_detector.variant == "full" and full_detector.name == "blazeface-full"
    with pytest.raises(ValueError):
        BlazeFaceDetector("medium")


# ----------------------------------------------------------------------------- astronaut
def test_astronaut_one_face(any_detector, astronaut):
    faces = any_detector.detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.score > 0.8
    x1, y1, x2, y2 = f.box
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    # Eileen Collins' face is in the upper middle of the picture, about 100 px wide
    assert 150 < x1 < 200 and 250 < x2 < 300 and 50 < y1 < 110 and 150 < y2 < 200
    assert 70 < f.width < 130 and 70 < f.height < 130
    assert f.area == pytest.approx(f.width * f.height)
    _check_face_geometry(f)


def test_astronaut_keypoint_positions(detector, astronaut):
    kp = detector.detect(astronaut)[0].keypoints
    expected = {"right_eye": (202, 105), "left_eye": (246, 108), "nose_tip": (221, 128), "mouth_center": (220, 148)}
    for name, (x, y) in expected.items():
        assert np.hypot(*(kp[KP[name]] - (x, y))) < 8, name


def test_short_and_full_agree(detector, full_detector, astronaut):
    a, b = detector.detect(astronaut)[0], full_detector.detect(astronaut)[0]
    assert np.abs(a.keypoints[:4] - b.keypoints[:4]).max() < 10
    assert np.abs(np.subtract(a.box, b.box)).max() < 25


def test_input_not_modified_and_deterministic(detector, astronaut):
    img = np.array(astronaut)
    first = detector.detect(img)
    np.testing.assert_array_equal(img, astronaut)
    again = detector.detect(img)
    assert len(first) == len(again) == 1
    np.testing.assert_allclose(first[0].keypoints, again[0].keypoints, atol=1e-4)


def test_mirrored_image_mirrors_keypoints(detector, astronaut):
    f = detector.detect(astronaut)[0]
    m = detector.detect(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(m) == 1
    _check_face_geometry(m[0])  # still image-left eye first
    # the subject's right eye in the mirror is where their left eye was, reflected
    assert abs((512 - m[0].keypoints[KP["right_eye"]][0]) - f.keypoints[KP["left_eye"]][0]) < 8


# ----------------------------------------------------------------------------- no faces
@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_image_no_faces(any_detector, value):
    assert any_detector.detect(np.full((480, 640, 3), value, np.uint8)) == []


def test_noise_no_faces(detector):
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    assert detector.detect(noise) == []


def test_threshold_filters(astronaut):
    strict = BlazeFaceDetector("short", threshold=0.99, pool_size=1)
    try:
        assert strict.detect(astronaut) == []  # the astronaut scores about 0.92
    finally:
        strict.close()


# ----------------------------------------------------------------------------- crops
def test_detect_in_tight_crop(detector, astronaut):
    f = detector.detect(astronaut)[0]
    x1, y1, x2, y2 = (int(round(v)) for v in f.box)
    crop = np.ascontiguousarray(astronaut[y1:y2, x1:x2])
    found = detector.detect_in_crop(crop)
    assert len(found) == 1
    g = found[0]
    assert g.score > 0.5
    # coordinates are in the crop's own frame: shifting back gives the full-image keypoints
    np.testing.assert_allclose(g.keypoints[:4] + (x1, y1), f.keypoints[:4], atol=8)
    assert _inside(g.keypoints[KP["nose_tip"]], (0, 0, crop.shape[1], crop.shape[0]))
    _check_face_geometry(g)


def test_face_shifted():
    f = Face((10.0, 20.0, 30.0, 50.0), 0.9, np.arange(12, dtype=np.float64).reshape(6, 2))
    g = f.shifted(5, -10, scale=2.0)
    assert g.box == (25.0, 30.0, 65.0, 90.0)
    np.testing.assert_array_equal(g.keypoints, f.keypoints * 2 + (5, -10))
    assert g.score == f.score
    assert (g.width, g.height) == (40.0, 60.0)


# ----------------------------------------------------------------------------- large images
def test_large_image_keypoints_in_original_pixels(detector, astronaut):
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    small_side = BlazeFaceDetector("short", pool_size=1, max_side=512)
    try:
        scaled = small_side.detect(big)
    finally:
        small_side.close()
    ref = detector.detect(astronaut)
    assert len(scaled) == len(ref) == 1
    np.testing.assert_allclose(scaled[0].keypoints, ref[0].keypoints * 2, atol=6)
    np.testing.assert_allclose(scaled[0].box, np.asarray(ref[0].box) * 2, atol=10)


def test_large_non_square_image(full_detector, astronaut):
    # A 1800x1024 canvas with the 2x astronaut at x=700; max_side=900 halves it for detection.
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((1024, 1800, 3), 40, np.uint8)
    canvas[:, 700:1724] = big
    det = BlazeFaceDetector("full", pool_size=1, max_side=900)
    try:
        faces = det.detect(canvas)
    finally:
        det.close()
    ref = full_detector.detect(astronaut)[0]
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].keypoints[:4], ref.keypoints[:4] * 2 + (700, 0), atol=16)
    _check_face_geometry(faces[0])


# ----------------------------------------------------------------------------- pick_main_face
def _face(cx: float, cy: float, size: float, score: float = 0.9) -> Face:
    h = size / 2
    return Face((cx - h, cy - h, cx + h, cy + h), score, np.tile([cx, cy], (6, 1)).astype(np.float64))


def test_pick_main_face_empty():
    assert pick_main_face([], (480, 640, 3)) is None


def test_pick_main_face_single():
    f = _face(10, 10, 20)
    assert pick_main_face([f], (480, 640, 3)) is f


def test_pick_main_face_prefers_central_big_face():
    central = _face(320, 240, 100)
    side = _face(80, 240, 110, score=0.99)  # a bit bigger and more confident, but at the edge
    tiny_centre = _face(330, 250, 30)  # a bystander right in the middle, too small to count
    assert pick_main_face([side, tiny_centre, central], (480, 640, 3)) is central
    assert pick_main_face([tiny_centre, side], (480, 640, 3)) is side  # big beats central when the other is tiny


def test_pick_main_face_area_ratio():
    big_left = _face(100, 240, 200)
    medium_centre = _face(320, 240, 150)  # 56 % of the largest area
    assert pick_main_face([big_left, medium_centre], (480, 640)) is medium_centre
    assert pick_main_face([big_left, medium_centre], (480, 640), min_area_ratio=0.6) is big_left


def test_pick_main_face_on_real_image(full_detector, astronaut):
    # the astronaut at full size on the left, a 3/4-size copy at the top right
    canvas = np.full((512, 1024, 3), 30, np.uint8)
    canvas[:, :512] = astronaut
    canvas[:384, 640:] = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    faces = full_detector.detect(canvas)
    assert len(faces) == 2
    big, small = sorted(faces, key=lambda f: f.area, reverse=True)
    assert big.box[2] < 512 < small.box[0]
    assert pick_main_face(faces, canvas.shape, min_area_ratio=0.9) is big  # the smaller one does not qualify

    def centre_dist(f):
        return np.hypot((f.box[0] + f.box[2]) / 2 - 512, (f.box[1] + f.box[3]) / 2 - 256)

    nearest = min(faces, key=centre_dist)
    assert pick_main_face(faces, canvas.shape, min_area_ratio=0.0) is nearest


@pytest.mark.parametrize("size", [(400, 300), (200, 150), (101, 76), (47, 35)])
def test_shrink_keeps_the_geometry_it_reports(size):
    """Halvings and a bilinear rest: the size asked for, and a spot where the reported source size puts it
    (an odd-sized image, so halvings drop a row or column; ratios from 1.3 to 11)."""
    img = np.zeros((389, 517, 3), np.uint8)
    cv2.circle(img, (331, 97), 9, (255, 255, 255), -1)
    w, h = size
    small, (sw, sh) = shrink(img, w, h)
    assert small.shape == (h, w, 3)
    assert 517 - sw < sw / w and 389 - sh < sh / h  # at most one dropped column/row per halving, in source pixels
    grey = small[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:h, 0:w]
    cx, cy = (xs * grey).sum() / grey.sum(), (ys * grey).sum() / grey.sum()
    back = ((cx + 0.5) * sw / w - 0.5, (cy + 0.5) * sh / h - 0.5)
    assert abs(back[0] - 331) < 1.0 and abs(back[1] - 97) < 1.0, back
