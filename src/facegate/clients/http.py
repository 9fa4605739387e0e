"""What an edge client sends: BlazeFace face crops with their eye points, in the reference JSON.

Shared by the Python client, the benchmarks and the tests so they all speak exactly like the
reference Android app.
"""

from __future__ import annotations

import base64

import numpy as np

from facegate.vision.detect import Face
from facegate.vision.imageio import encode_jpeg


def crop_face(image: np.ndarray, face: Face, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The face's box (grown by ``margin`` of its size on each side, clipped to the image) and its
    two eye points in the crop's pixels, image-left eye first."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = face.box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    return crop, face.eyes - np.array([left, top], dtype=np.float64)


def b64_jpeg(image: np.ndarray, quality: int = 90) -> str:
    return base64.b64encode(encode_jpeg(image, quality)).decode("ascii")


def predict_payload(image: np.ndarray, face: Face, file_name: str = "frame.jpg", margin: float = 0.0) -> dict:
    """The reference client's ``POST /predict`` body for one detected face."""
    crop, eyes = crop_face(image, face, margin)
    return {
        "file_name": file_name,
        "image": b64_jpeg(crop),
        "keypoints_x1": float(eyes[0, 0]),
        "keypoints_y1": float(eyes[0, 1]),
        "keypoints_x2": float(eyes[1, 0]),
        "keypoints_y2": float(eyes[1, 1]),
    }


def register_payload(user_name: str, images: list[np.ndarray]) -> dict:
    """The reference client's ``POST /register`` body: exactly three images."""
    if len(images) != 3:
        raise ValueError("the reference /register takes exactly 3 images")
    first, sec, third = (b64_jpeg(i) for i in images)
    return {"user_name": user_name, "first_img": first, "sec_img": sec, "third_img": third}
