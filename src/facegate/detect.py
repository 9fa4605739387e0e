"""Face detection with BlazeFace (MediaPipe 0.10.21, which ships the short- and full-range models).

Returns every face with its box, score and six keypoints in pixels of the input image.
MediaPipe graphs are not thread-safe, so the detector keeps a small pool of them.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np

#: Order of BlazeFace keypoints. "right" is the subject's right, i.e. the image's left side.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")
MODEL_SELECTION = {"short": 0, "full": 1}


@dataclass(frozen=True)
class Face:
    """One detected face. ``box`` is (x1, y1, x2, y2); ``keypoints`` is a (6, 2) float array, see KEYPOINT_NAMES."""

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray = field(repr=False)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def eyes(self) -> np.ndarray:
        """Eye centres, image-left eye first."""
        return self.keypoints[:2]

    def shifted(self, dx: float, dy: float, scale: float = 1.0) -> Face:
        """The same face in another frame: ``p' = p * scale + (dx, dy)``."""
        b = np.asarray(self.box) * scale + np.array([dx, dy, dx, dy])
        return Face(tuple(float(v) for v in b), self.score, self.keypoints * scale + np.array([dx, dy]))


class BlazeFaceDetector:
    """BlazeFace via MediaPipe's face-detection solution.

    ``variant`` is "short" (selfie distance, 128x128 input) or "full" (up to ~5 m, 192x192 input).
    """

    def __init__(self, variant: str = "short", threshold: float = 0.5, pool_size: int = 2, max_side: int = 1920):
        if variant not in MODEL_SELECTION:
            raise ValueError(f"detector must be one of {sorted(MODEL_SELECTION)}, not {variant!r}")
        import mediapipe as mp  # heavy import: only when a detector is built

        self.variant = variant
        self.threshold = threshold
        self.max_side = max_side
        self.name = f"blazeface-{variant}"
        self._pool: queue.Queue = queue.Queue()
        for _ in range(max(1, pool_size)):
            self._pool.put(
                mp.solutions.face_detection.FaceDetection(
                    model_selection=MODEL_SELECTION[variant], min_detection_confidence=threshold
                )
            )

    @contextmanager
    def _graph(self) -> Iterator:
        g = self._pool.get()
        try:
            yield g
        finally:
            self._pool.put(g)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces above the threshold, highest score first."""
        h, w = rgb.shape[:2]
        scale = 1.0
        img = rgb
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            img = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        ih, iw = img.shape[:2]
        with self._graph() as g:
            result = g.process(np.ascontiguousarray(img))
        faces: list[Face] = []
        for det in result.detections or []:
            score = float(det.score[0])
            if score < self.threshold:
                continue
            rb = det.location_data.relative_bounding_box
            box = np.array([rb.xmin * iw, rb.ymin * ih, (rb.xmin + rb.width) * iw, (rb.ymin + rb.height) * ih])
            kps = np.array([[k.x * iw, k.y * ih] for k in det.location_data.relative_keypoints], dtype=np.float64)
            if kps.shape != (6, 2):
                continue
            faces.append(Face(tuple(float(v) for v in box / scale), score, kps / scale))
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces

    def detect_in_crop(self, rgb: np.ndarray, pad: float = 0.3) -> list[Face]:
        """Detect in a tight face crop: BlazeFace misses faces that fill the frame, so pad it first."""
        h, w = rgb.shape[:2]
        p = int(round(max(h, w) * pad))
        padded = cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return [f.shifted(-p, -p) for f in self.detect(padded)]

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait().close()


def pick_main_face(faces: list[Face], image_shape: tuple[int, ...], min_area_ratio: float = 0.5) -> Face | None:
    """The face a photo is about: among faces at least ``min_area_ratio`` of the largest, the one nearest the centre.

    A bystander in the background is smaller; two people side by side are told apart by position.
    """
    if not faces:
        return None
    h, w = image_shape[:2]
    largest = max(f.area for f in faces)
    big = [f for f in faces if f.area >= min_area_ratio * largest]

    def dist2(f: Face) -> float:
        fx, fy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        return (fx - w / 2) ** 2 + (fy - h / 2) ** 2

    return min(big, key=dist2)
