"""Illumination normalisation of an aligned face crop, before it is embedded.

A face under hard side light or in a dim room is the same face with another luminance field; the
recogniser was trained mostly on even light. Two classic corrections, applied to the luminance
only (colour kept): ``clahe`` (contrast-limited adaptive histogram equalisation on L of Lab,
local: evens out a side light) and ``gamma`` (one power curve bringing the face's mean grey to
mid-grey: global, lifts a dark face). ``none`` leaves the crop as it is. The quality signals are
measured before this, so "too dark" stays true of the photo. Whether either helps is measured by
``facegate eval --compare illumination=... --degrade dark,sidelight,grayscale`` (docs, Accuracy).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

METHODS = ("none", "clahe", "gamma")

#: The face's core in the 112x112 ArcFace template (as in ``quality``): its mean decides the gamma.
_CORE = (slice(24, 104), slice(20, 92))


def normalise(crop: np.ndarray, method: str) -> np.ndarray:
    """The crop (RGB uint8) with its luminance normalised by ``method``; the same array for ``none``."""
    if method == "none":
        return crop
    lab = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2LAB)
    lum = lab[..., 0]
    if method == "clahe":
        # A new object per call: OpenCV's CLAHE keeps state between apply() calls and the server runs many threads.
        lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(lum)
    elif method == "gamma":
        mean = float(lum[_CORE].mean()) / 255.0
        if 0.02 < mean < 0.98:
            g = math.log(0.5) / math.log(mean)
            table = (255.0 * (np.arange(256) / 255.0) ** g).clip(0, 255).astype(np.uint8)
            lab[..., 0] = cv2.LUT(lum, table)
    else:
        raise ValueError(f"unknown illumination method {method!r}; known: {', '.join(METHODS)}")
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
