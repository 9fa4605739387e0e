"""The face mesh (468 points) of the face in a frame, with the landmark model the ``mediapipe`` wheel ships.

Used by the active liveness challenge (``vision.challenge``): eyelid points for a blink, the mesh's
eye centres, nose tip and mouth corners for the head's yaw. MediaPipe's legacy Face Mesh solution
(``mediapipe.solutions.face_mesh``) runs its own short-range face detector, then the landmark network
(``mediapipe/modules/face_landmark/face_landmark.tflite``), on the CPU, from files inside the wheel: no
network, nothing to import. Its points are the same vertices as the canonical face model that
``vision.headpose`` takes its 3D points from, so the pose fit needs no mapping.

One graph per ``FaceMesh``; a MediaPipe graph is not safe to run from several threads at once, so calls
are serialised by a lock (about 3 ms a frame on one core: ``bench/challenge.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

#: Faces the mesh looks for in a frame; the one the caller means is picked among them (``FaceMesh.find``).
MAX_FACES = 4


@dataclass(frozen=True)
class Mesh:
    """468 points in image pixels (x right, y down; z in the same scale, toward the camera negative)."""

    points: np.ndarray  # (468, 3) float32

    @property
    def box(self) -> tuple[float, float, float, float]:
        x, y = self.points[:, 0], self.points[:, 1]
        return float(x.min()), float(y.min()), float(x.max()), float(y.max())


class FaceMesh:
    """The landmark model of the ``mediapipe`` wheel on still frames (each frame on its own: no tracking
    between calls, so a request's frames never lean on another request's)."""

    def __init__(self, min_confidence: float = 0.5) -> None:
        from mediapipe.python.solutions import face_mesh

        from .native_log import native_quiet

        with native_quiet():  # the graph's start-up chatter: built and run once here
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=False, min_detection_confidence=min_confidence
            )
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))
        self._lock = threading.Lock()

    def all(self, rgb: np.ndarray) -> list[Mesh]:
        """Every face mesh found in an RGB frame (HxWx3 uint8)."""
        h, w = rgb.shape[:2]
        with self._lock:
            result = self._mesh.process(np.ascontiguousarray(rgb))
        meshes = []
        for lm in result.multi_face_landmarks or ():
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lm.landmark], dtype=np.float32)
            meshes.append(Mesh(pts))
        return meshes

    def find(self, rgb: np.ndarray, near: tuple[float, float, float, float] | None = None) -> Mesh | None:
        """The mesh of the face the frame is about: the one whose box overlaps ``near`` (a detector's box)
        most, or without it the largest; None when no face is found."""
        meshes = self.all(rgb)
        if not meshes:
            return None
        if near is None:
            return max(meshes, key=lambda m: _area(m.box))
        return max(meshes, key=lambda m: _overlap(m.box, near))

    def close(self) -> None:
        with self._lock:
            self._mesh.close()


def _area(b: tuple[float, float, float, float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0
