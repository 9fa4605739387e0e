"""Illumination normalisation of aligned crops: each method does what it says on a real face."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facegate.vision.illumination import normalise


@pytest.fixture(scope="module")
def crop(astronaut, detector) -> np.ndarray:
    from facegate.vision import align as al

    face = detector.detect(np.ascontiguousarray(astronaut))[0]
    return al.warp(np.ascontiguousarray(astronaut), al.transform_for(al.face_points(face.keypoints)))


def luminance(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float64)


def test_none_is_the_crop_itself(crop):
    assert normalise(crop, "none") is crop


def test_gamma_lifts_a_dark_face_to_mid_grey(crop):
    dark = (crop.astype(np.float32) * 0.25).astype(np.uint8)
    before, after = luminance(dark)[24:104, 20:92].mean(), luminance(normalise(dark, "gamma"))[24:104, 20:92].mean()
    assert before < 60 and 110 < after < 150, (before, after)


def test_clahe_evens_out_a_side_light(crop):
    ramp = np.linspace(0.15, 1.0, crop.shape[1], dtype=np.float32)[None, :, None]
    lit = (crop.astype(np.float32) * ramp).astype(np.uint8)  # dark on the left, full light on the right

    def imbalance(img):
        lum = luminance(img)[24:104, 20:92]
        return lum[:, 36:].mean() - lum[:, :36].mean()

    assert imbalance(normalise(lit, "clahe")) < 0.7 * imbalance(lit)
    # Colour is kept: only luminance changes (hue of the face's core within a few degrees).
    hue = lambda img: cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[40:90, 40:72, 0].astype(np.float64).mean()  # noqa: E731
    assert abs(hue(normalise(crop, "clahe")) - hue(crop)) < 6


def test_unknown_method_is_refused(crop):
    with pytest.raises(ValueError, match="unknown illumination"):
        normalise(crop, "retinex")
