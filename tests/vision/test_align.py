"""facegate.vision.align: Umeyama similarity (checked against scikit-image) and alignment to the ArcFace template."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from facegate.vision import align as al


# ----------------------------------------------------------------------------- helpers
def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def _skimage_params(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        assert tform, "skimage failed to estimate"
    else:  # pragma: no cover - older scikit-image
        tform = SimilarityTransform()
        assert tform.estimate(src, dst)
    return tform.params[:2]


def _is_similarity(m: np.ndarray) -> bool:
    """A 2x2 part of the form [[a, -b], [b, a]]: rotation + uniform scale, no reflection or shear."""
    a, b = m[0, 0], m[1, 0]
    return bool(np.isclose(m[1, 1], a) and np.isclose(m[0, 1], -b) and a * a + b * b > 0)


# ----------------------------------------------------------------------------- umeyama
@pytest.mark.parametrize("seed", range(8))
def test_umeyama_recovers_known_similarity_exactly(seed):
    rng = np.random.default_rng(seed)
    m_true = _similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5.0), *rng.uniform(-300, 300, 2))
    src = rng.uniform(-100, 300, (int(rng.integers(2, 12)), 2))
    m = al.umeyama_similarity(src, _apply(m_true, src))
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, m_true, rtol=1e-9, atol=1e-8)


def test_umeyama_identity():
    pts = al.ARCFACE_5.copy()
    np.testing.assert_allclose(al.umeyama_similarity(pts, pts), np.hstack([np.eye(2), np.zeros((2, 1))]), atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_umeyama_matches_skimage_on_noisy_points(seed):
    rng = np.random.default_rng(100 + seed)
    m_true = _similarity(rng.uniform(-1, 1), rng.uniform(0.5, 3.0), *rng.uniform(-50, 50, 2))
    src = rng.uniform(0, 200, (int(rng.integers(3, 10)), 2))
    dst = _apply(m_true, src) + rng.normal(0, 4.0, src.shape)
    m = al.umeyama_similarity(src, dst)
    np.testing.assert_allclose(m, _skimage_params(src, dst), rtol=1e-7, atol=1e-7)
    assert _is_similarity(m)


def test_umeyama_matches_skimage_on_mirrored_points():
    # dst is a reflection of src: the best *similarity* must not reflect (det < 0 branch).
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 100, (5, 2))
    dst = src * np.array([-1.0, 1.0]) + rng.normal(0, 0.5, src.shape)
    m = al.umeyama_similarity(src, dst)
    np.testing.assert_allclose(m, _skimage_params(src, dst), rtol=1e-7, atol=1e-7)
    assert np.linalg.det(m[:, :2]) > 0
    assert _is_similarity(m)


def test_umeyama_on_face_landmarks_matches_skimage():
    # Landmarks of a tilted face in a large image, mapped to the ArcFace template.
    pts = np.array([[401.2, 310.5], [470.8, 322.0], [436.1, 360.4], [400.3, 398.7], [461.0, 408.2]])
    np.testing.assert_allclose(
        al.umeyama_similarity(pts, al.ARCFACE_5), _skimage_params(pts, al.ARCFACE_5), rtol=1e-7, atol=1e-7
    )


@pytest.mark.parametrize("seed", range(25))
def test_umeyama_two_points_is_a_rotation_not_a_reflection(seed):
    # Two points (or collinear ones) make the covariance rank 1: the sign of its determinant is
    # rounding noise and must not decide between a rotation and a mirror image.
    rng = np.random.default_rng(200 + seed)
    src = rng.uniform(0, 500, (2, 2))
    dst = rng.uniform(0, 112, (2, 2))
    m = al.umeyama_similarity(src, dst)
    assert np.linalg.det(m[:, :2]) > 0
    assert _is_similarity(m)
    np.testing.assert_allclose(_apply(m, src), dst, atol=1e-8)
    np.testing.assert_allclose(m, _skimage_params(src, dst), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_collinear_points_match_skimage(seed):
    rng = np.random.default_rng(300 + seed)
    t = rng.uniform(-50, 50, 4)
    src = np.stack([10 + 3 * t, 20 - 2 * t], axis=1)
    dst = _apply(_similarity(rng.uniform(-3, 3), 1.7, 5, 9), src)
    m = al.umeyama_similarity(src, dst)
    assert np.linalg.det(m[:, :2]) > 0
    np.testing.assert_allclose(_apply(m, src), dst, atol=1e-7)
    np.testing.assert_allclose(m, _skimage_params(src, dst), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
    "src,dst",
    [
        (np.zeros((5, 2)), np.zeros((4, 2))),  # count mismatch
        (np.zeros((5, 3)), np.zeros((5, 3))),  # 3-D points
        (np.zeros((1, 2)), np.zeros((1, 2))),  # one point
        (np.zeros(10), np.zeros(10)),  # flat
    ],
)
def test_umeyama_bad_shapes(src, dst):
    with pytest.raises(ValueError):
        al.umeyama_similarity(src, dst)


def test_umeyama_coincident_points_refused():
    with pytest.raises(ValueError):
        al.umeyama_similarity(np.full((5, 2), 3.0), al.ARCFACE_5)


# ----------------------------------------------------------------------------- templates
def test_templates():
    assert al.ARCFACE_5.shape == (5, 2)
    assert al.ARCFACE_4.shape == (4, 2)
    np.testing.assert_array_equal(al.ARCFACE_4[:3], al.ARCFACE_5[:3])
    np.testing.assert_allclose(al.ARCFACE_4[3], (al.ARCFACE_5[3] + al.ARCFACE_5[4]) / 2)
    # image-left eye first, eyes above nose above mouth
    assert al.ARCFACE_5[0, 0] < al.ARCFACE_5[1, 0]
    assert al.ARCFACE_5[:2, 1].max() < al.ARCFACE_5[2, 1] < al.ARCFACE_5[3:, 1].min()


# ----------------------------------------------------------------------------- transform_for
@pytest.mark.parametrize("n", [2, 4, 5])
@pytest.mark.parametrize("seed", range(4))
def test_transform_for_maps_onto_template(n, seed):
    template = {2: al.ARCFACE_5[:2], 4: al.ARCFACE_4, 5: al.ARCFACE_5}[n]
    rng = np.random.default_rng(seed)
    # Landmarks as they would appear in a photo: the template moved, turned and scaled.
    to_image = _similarity(rng.uniform(-0.6, 0.6), rng.uniform(0.5, 6.0), *rng.uniform(0, 1000, 2))
    pts = _apply(to_image, template)
    m = al.transform_for(pts)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(_apply(m, pts), template, atol=1e-8)
    np.testing.assert_allclose(m, np.linalg.inv(np.vstack([to_image, [0, 0, 1]]))[:2], atol=1e-9)


@pytest.mark.parametrize("n", [2, 4, 5])
def test_transform_for_other_sizes_scale_the_template(n):
    template = {2: al.ARCFACE_5[:2], 4: al.ARCFACE_4, 5: al.ARCFACE_5}[n]
    pts = template * 3.0 + 40.0
    for size in (112, 224, 56):
        np.testing.assert_allclose(_apply(al.transform_for(pts, size), pts), template * size / 112, atol=1e-8)


def test_transform_for_two_eyes_is_exact_even_for_arbitrary_points():
    # Two points fix a similarity completely: any eye pair lands exactly on the template's eyes.
    eyes = np.array([[123.4, 210.0], [180.2, 190.5]])
    np.testing.assert_allclose(_apply(al.transform_for(eyes), eyes), al.ARCFACE_5[:2], atol=1e-9)


def test_transform_for_least_squares_on_noisy_points_matches_skimage():
    rng = np.random.default_rng(11)
    pts = _apply(_similarity(0.3, 2.5, 200, 100), al.ARCFACE_5) + rng.normal(0, 2.0, (5, 2))
    m = al.transform_for(pts)
    np.testing.assert_allclose(m, _skimage_params(pts, al.ARCFACE_5), rtol=1e-7, atol=1e-7)
    assert np.abs(_apply(m, pts) - al.ARCFACE_5).max() < 5.0


@pytest.mark.parametrize(
    "pts",
    [
        np.zeros((3, 2)),
        np.zeros((6, 2)),
        np.zeros((1, 2)),
        np.zeros((5, 3)),
        np.zeros(10),
        np.zeros((2, 5)),
        [[1.0, 2.0]],
    ],
)
def test_transform_for_wrong_shapes(pts):
    with pytest.raises(ValueError):
        al.transform_for(pts)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n", [2, 4, 5])
def test_transform_for_non_finite(bad, n):
    pts = al.ARCFACE_5[:n].copy() if n != 4 else al.ARCFACE_4.copy()
    pts[n - 1, 1] = bad
    with pytest.raises(ValueError):
        al.transform_for(pts)


def test_transform_for_coincident_points():
    with pytest.raises(ValueError):
        al.transform_for(np.full((4, 2), 50.0))


# ----------------------------------------------------------------------------- eye_points / blazeface_points
def test_eye_points_orders_image_left_first():
    a = al.eye_points(200, 100, 140, 105)
    np.testing.assert_array_equal(a, [[140, 105], [200, 100]])
    b = al.eye_points(140, 105, 200, 100)
    np.testing.assert_array_equal(b, [[140, 105], [200, 100]])
    assert a.dtype == np.float64 and a.shape == (2, 2)


def test_eye_points_feed_transform_for_either_order():
    np.testing.assert_allclose(
        al.transform_for(al.eye_points(70, 50, 30, 52)), al.transform_for(al.eye_points(30, 52, 70, 50))
    )


def test_blazeface_points_takes_eyes_nose_mouth():
    kp = np.arange(12, dtype=float).reshape(6, 2)
    np.testing.assert_array_equal(al.blazeface_points(kp), kp[:4])
    with pytest.raises(ValueError):
        al.blazeface_points(np.zeros((5, 2)))


# ----------------------------------------------------------------------------- align / warp
def test_align_output_shape_and_dtype(astronaut):
    pts = np.array([[201.5, 104.9], [245.8, 109.1], [220.4, 127.3], [219.8, 148.6]])
    out = al.align(astronaut, pts)
    assert out.shape == (112, 112, 3)
    assert out.dtype == np.uint8
    assert out.std() > 10  # real picture content, not an empty border
    assert al.align(astronaut, pts, size=224).shape == (224, 224, 3)


def test_align_puts_marked_pixels_on_the_template():
    # Paint dots at landmark positions of a synthetic face; after alignment they sit on the template.
    img = np.zeros((400, 500, 3), np.uint8)
    pts = _apply(_similarity(0.35, 2.2, 150, 60), al.ARCFACE_5)
    for x, y in pts:
        img[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    out = al.align(img, pts)
    assert out.shape == (112, 112, 3)
    for tx, ty in al.ARCFACE_5:
        assert out[int(round(ty)), int(round(tx))].min() > 100
    assert out[5, 5].max() == 0  # far from every dot


def test_align_from_two_eyes_is_upright(astronaut):
    # Aligning on the eyes alone must give nearly the crop made from eyes + nose + mouth, not a
    # mirror image flipped about the eye line (nose and mouth would land above the eyes).
    kp = np.array([[201.5, 104.9], [245.8, 109.1], [220.4, 127.3], [219.8, 148.6]])
    four = al.align(astronaut, kp).astype(np.float64)
    for e1, e2 in ((kp[0], kp[1]), (kp[1], kp[0])):
        m = al.transform_for(al.eye_points(*e1, *e2))
        nose, mouth = _apply(m, kp[2:])
        assert 60 < nose[1] < mouth[1] < 100  # below the eyes (y ~ 51.6), in the template's order
        assert 40 < nose[0] < 72 and 40 < mouth[0] < 72
        two = al.warp(astronaut, m).astype(np.float64)
        assert np.corrcoef(two.ravel(), four.ravel())[0, 1] > 0.6
