"""YuNet's five landmarks and the fallback detector, on a real face with the real models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facegate.config import Settings
from facegate.vision.detect import YuNetDetector, yunet_model_path
from facegate.errors import NoFaceError
from facegate.pipeline import Pipeline


@pytest.fixture(scope="module")
def yunet():
    return YuNetDetector()


def test_yunet_points_follow_the_arcface_template_order(yunet, astronaut):
    faces = yunet.detect(np.ascontiguousarray(astronaut))
    assert len(faces) == 1 and faces[0].score > 0.8
    kp = faces[0].keypoints
    assert kp.shape == (5, 2)
    left_eye, right_eye, nose, mouth_l, mouth_r = kp
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def _opencv_yunet(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's own YuNet wrapper on the same model file: (N, 15) rows, best first."""
    g = cv2.FaceDetectorYN.create(yunet_model_path(), "", (rgb.shape[1], rgb.shape[0]), 0.6, 0.3, 50)
    _, dets = g.detect(np.ascontiguousarray(rgb[..., ::-1]))
    dets = np.zeros((0, 15), np.float32) if dets is None else dets
    return dets[np.argsort(-dets[:, 14])]


def test_yunet_on_onnxruntime_finds_what_opencvs_wrapper_finds(yunet, astronaut):
    """Our decoding of the network's outputs against cv2.FaceDetectorYN, on sizes that are and are not multiples of 32."""
    img = np.ascontiguousarray(astronaut)
    cases = {
        "astronaut 512x512": img,
        "odd size 301x257": cv2.resize(img, (301, 257), interpolation=cv2.INTER_AREA),
        "small face in a wide frame": cv2.resize(_wide_frame(astronaut), (640, 360), interpolation=cv2.INTER_AREA),
        "dark": (img * 0.25).astype(np.uint8),
        "no face": np.full((200, 240, 3), 128, np.uint8),
    }
    found = 0
    for name, rgb in cases.items():
        ours, theirs = yunet.detect(rgb), _opencv_yunet(rgb)
        assert len(ours) == len(theirs), name
        for f, d in zip(ours, theirs):
            x, y, w, h = d[:4]
            assert np.abs(np.array(f.box) - [x, y, x + w, y + h]).max() < 0.5, name
            assert np.abs(f.keypoints - d[4:14].reshape(5, 2)).max() < 0.5, name
            assert abs(f.score - d[14]) < 0.01, name
            found += 1
    assert found >= 4  # a face in each image that has one


def test_landmarks_near_a_blazeface_box(yunet, detector, astronaut):
    img = np.ascontiguousarray(astronaut)
    blaze = detector.detect(img)[0]
    near = yunet.landmarks_near(img, blaze)
    assert near is not None
    # The same eyes as YuNet on the whole photo, within a few pixels.
    whole = yunet.detect(img)[0]
    assert np.abs(near.keypoints[:2] - whole.keypoints[:2]).max() < 4.0


def test_landmarks_near_in_a_large_photo_and_at_its_edge(yunet, detector, astronaut):
    """The window around a face in a 3x photo (halved twice, then scaled) and around a face cut by the
    photo's edge (the window padded with black beyond it) gives the points of the plain case, mapped
    back to the photo's pixels."""
    img = np.ascontiguousarray(astronaut)
    blaze = detector.detect(img)[0]
    ref = yunet.landmarks_near(img, blaze).keypoints
    iod = float(np.linalg.norm(ref[1] - ref[0]))
    big = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    near = yunet.landmarks_near(big, blaze.scaled(3, 3, 0, 0))
    assert near is not None and np.abs(near.keypoints - 3 * ref).max() < 0.05 * 3 * iod
    x1, y1, x2, y2 = blaze.box
    cut = np.ascontiguousarray(img[int(y1) - 20 :, int(x1) - 10 :])  # the window leaves it at the top and left
    near = yunet.landmarks_near(cut, blaze.shifted(-(int(x1) - 10), -(int(y1) - 20)))
    assert near is not None and np.abs(near.keypoints - (ref - [int(x1) - 10, int(y1) - 20])).max() < 0.05 * iod


def test_face_filling_a_crop_maps_its_points_back_to_the_crop(yunet, detector, astronaut):
    """YuNet on a scaled, padded face crop: its points in the crop's pixels, for square and oblong crops,
    a crop smaller than the window (scaled up) and a large one (halved, then scaled), as YuNet puts them
    on the whole photo."""
    img = np.ascontiguousarray(astronaut)
    blaze = detector.detect(img)[0]
    whole = yunet.landmarks_near(img, blaze)
    x1, y1, x2, y2 = (int(v) for v in blaze.box)
    iod = float(np.linalg.norm(whole.keypoints[1] - whole.keypoints[0]))
    crops = {
        "bare box": (y1, y2, x1, x2),
        "25% margin": (y1 - 25, y2 + 25, x1 - 25, x2 + 25),
        "oblong, more room below": (y1 - 10, y2 + 60, x1 - 5, x2 + 5),
    }
    for name, (top, bottom, left, right) in crops.items():
        crop = np.ascontiguousarray(img[max(0, top) : bottom, max(0, left) : right])
        for scale in (1.0, 0.5, 3.0):  # 0.5: a 60-px crop, scaled up to the window; 3: a 400-px crop, halved first
            small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC) if scale != 1 else crop
            face = yunet.face_filling(small)
            assert face is not None, name
            expected = (whole.keypoints - [max(0, left), max(0, top)]) * scale
            assert np.abs(face.keypoints - expected).max() < 0.12 * iod * scale + 1, (name, scale)
    assert yunet.face_filling(np.full((120, 100, 3), 128, np.uint8)) is None


def _wide_frame(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut at 0.6x in a grey 1280x720 frame: a ~55 px face, as a camera sees someone a few metres away."""
    small = cv2.resize(np.ascontiguousarray(astronaut), None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 96, np.uint8)
    h, w = small.shape[:2]
    frame[200 : 200 + h, 500 : 500 + w] = small
    return frame


def test_fallback_detector_finds_a_small_face_in_a_wide_frame(tmp_path, astronaut):
    frame = _wide_frame(astronaut)
    with_fb = Pipeline.from_settings(Settings(data_dir=tmp_path / "a"))
    without = Pipeline.from_settings(Settings(data_dir=tmp_path / "b", fallback_detector="none"))
    try:
        with pytest.raises(NoFaceError):
            without.locate(frame)
        lf = with_fb.locate(frame)
        x1, y1, x2, y2 = lf.box
        assert 500 + 0.6 * 150 < (x1 + x2) / 2 < 500 + 0.6 * 300 and 200 < (y1 + y2) / 2 < 200 + 0.6 * 250
        # Aligned from the small face, it is still the astronaut.
        big = with_fb.locate(np.ascontiguousarray(astronaut))
        a, b = with_fb.embed([lf.aligned, big.aligned])
        assert float(a @ b) > 0.6
        assert len(with_fb.identify_all(frame)) == 1 and without.identify_all(frame) == []
    finally:
        with_fb.close()
        without.close()


def test_yunet_alignment_is_the_default(tmp_path, astronaut):
    """The setting chosen by `facegate eval --compare` (README, "Accuracy")."""
    assert Settings(data_dir=tmp_path).landmarks == "yunet"


def test_a_crop_is_located_by_yunet_alone_unless_it_disagrees_with_the_clients_eyes(tmp_path, astronaut, astronaut_face):
    """/predict sends crops: YuNet around the whole crop (or, with a wide margin, around the client's eyes)
    gives the face and its five points in one pass (the same person as the whole-photo alignment); eye
    points it disagrees with send the crop down the BlazeFace path; a whole frame sent as a "crop"
    still finds its small face."""
    from facegate.clients.http import crop_face

    img, face = np.ascontiguousarray(astronaut), astronaut_face
    p = Pipeline.from_settings(Settings(data_dir=tmp_path))
    try:
        whole = p.embed([p.locate(img).aligned])[0]
        for margin in (0.0, 0.25, 0.5):
            crop, eyes = crop_face(img, face, margin)
            lf = p.locate(crop, eyes, crop=True)
            assert lf.face.keypoints.shape == (5, 2) and lf.landmarks == "detector"  # YuNet's face, not BlazeFace's (6 points)
            assert float(p.embed([lf.aligned])[0] @ whole) > 0.8  # 0.90 bare, 0.98 at 25% margin; other people < 0.5
            wrong = eyes + np.array([0.0, 0.5 * crop.shape[0]])  # eye points on the chin
            assert p.locate(crop, wrong, crop=True).face.keypoints.shape == (6, 2)
        frame = _wide_frame(astronaut)
        lf = p.locate(frame, crop=True)
        x1, y1, x2, y2 = lf.box
        assert 500 < (x1 + x2) / 2 < 500 + 0.6 * 512 and lf.box[2] - lf.box[0] < 200
    finally:
        p.close()
