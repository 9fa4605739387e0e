"""Where is the face, and its points: the one decision for photos and for client face crops.

BlazeFace finds faces; YuNet gives five alignment points around BlazeFace's box (or finds the face
itself in a client's crop, or where BlazeFace saw nothing); a client's two eye points are the last
resort. What comes out is a ``LocatedFace``: the aligned 112x112 crop, how it was aligned and its
measured quality. Knows nothing of the gallery or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facegate.errors import NoFaceError

from . import align as al
from .detect import BlazeFaceDetector, Face, YuNetDetector, face_around_eyes, pick_main_face
from .illumination import normalise
from .quality import Quality, measure

#: A face wider or taller than this share of the image is treated as a crop (re-detected with padding).
CROP_LIKE = 0.5
#: A client's face crop is located by YuNet alone, run around the whole crop with this much context on
#: each side: it recognizes as well as BlazeFace and then YuNet near BlazeFace's box, in half the time
#: (``bench/crop_locate.py``, README "How a face crop is aligned").
CROP_CONTEXT = 0.4


def _eyes_agree(detected: np.ndarray, given: np.ndarray, tolerance: float = 0.3) -> bool:
    """Client eye points within ``tolerance`` x the inter-eye distance of the detector's."""
    iod = float(np.linalg.norm(detected[1] - detected[0]))
    return bool(np.all(np.linalg.norm(detected - given, axis=1) <= tolerance * max(iod, 1.0)))


@dataclass(frozen=True)
class LocatedFace:
    """A face found in an input image and how it was aligned."""

    face: Face | None
    aligned: np.ndarray
    #: "detector": a detector on the server (YuNet, BlazeFace); "eyes": only the two eye points the client sent.
    landmarks: str
    #: Measured signals of the aligned face (``facegate.vision.quality``).
    quality: Quality | None = None

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        return self.face.box if self.face else None

    @property
    def score(self) -> float | None:
        return self.face.score if self.face else None


class Locator:
    """Detectors and the rules that pick a face and its alignment points (``landmarks``: "yunet" or
    "blazeface"; ``fallback_detector``: "yunet" or "none"; ``illumination``: see ``illumination``)."""

    def __init__(
        self,
        detector: BlazeFaceDetector,
        yunet: YuNetDetector | None,
        landmarks: str = "yunet",
        fallback_detector: str = "yunet",
        illumination: str = "none",
    ) -> None:
        self.detector, self.yunet = detector, yunet
        self.landmarks, self.fallback_detector, self.illumination = landmarks, fallback_detector, illumination

    def _points(self, image: np.ndarray, face: Face) -> np.ndarray:
        """Alignment points of a detected face: YuNet's five around the box when configured and found, else the detector's."""
        if self.landmarks == "yunet" and self.yunet is not None and face.keypoints.shape[0] == 6:
            refined = self.yunet.landmarks_near(image, face)
            if refined is not None:
                return refined.keypoints.copy()
        return al.face_points(face.keypoints).copy()

    def _aligned(self, image: np.ndarray, face: Face | None, points: np.ndarray, how: str) -> LocatedFace:
        matrix = al.transform_for(points)
        crop = al.warp(image, matrix)
        # Head pose from BlazeFace's four points where the face has them (yaw error 4.3 vs 6.4 deg from
        # YuNet's five, pitch 6.6 vs 10.8, on ../shared/faces/pose: bench/headpose.py).
        pose_points = al.face_points(face.keypoints) if face is not None and face.keypoints.shape[0] == 6 else None
        q = measure(crop, matrix, points, face.score if face else None, image.shape, pose_points)  # of the photo as it is
        return LocatedFace(face, normalise(crop, self.illumination), how, q)

    def align_face(self, image: np.ndarray, face: Face) -> LocatedFace:
        return self._aligned(image, face, self._points(image, face), "detector")

    def _fallback_face(self, image: np.ndarray) -> Face | None:
        """The main face by the fallback detector (YuNet finds the small faces of a wide frame BlazeFace misses), padded if need be."""
        if self.fallback_detector != "yunet" or self.yunet is None:
            return None
        face = pick_main_face(self.yunet.detect(image), image.shape)
        if face is None:
            h, w = image.shape[:2]
            p = int(round(max(h, w) * 0.3))
            padded = np.pad(image, ((p, p), (p, p), (0, 0)))
            face = pick_main_face([f.shifted(-p, -p) for f in self.yunet.detect(padded)], image.shape)
        return face

    def _crop_face(self, image: np.ndarray, eyes: np.ndarray | None) -> Face | None:
        """YuNet's face (with its five points) around a whole face crop, else around the box the client's
        eyes imply (a crop with a wide margin), if it agrees with those eyes; None sends the crop down
        the BlazeFace path."""
        if self.landmarks != "yunet" or self.yunet is None:
            return None
        tries = [lambda: self.yunet.face_filling(image, CROP_CONTEXT)]
        if eyes is not None:  # None unless a face fills much of the window
            tries.append(lambda: self.yunet.landmarks_near(image, face_around_eyes(eyes), context=0.6))
        for find in tries:
            face = find()
            if face is not None and (eyes is None or _eyes_agree(face.eyes, eyes)):
                return face
        return None

    def locate(self, image: np.ndarray, eyes: np.ndarray | None = None, *, field: str = "image", crop: bool = False) -> LocatedFace:
        """The one face an image (a photo or a client's face crop) is about, aligned.

        ``crop``: the image is expected to be a face crop (``/predict``): YuNet around the whole crop
        first (one network pass for the face and its five points), or around the client's eyes; what
        follows runs when neither finds a face, or one that disagrees with the client's eyes.

        BlazeFace's keypoints are poor on a face that fills the frame, so a face covering most of
        the image is detected again on a padded copy; with none found, the fallback detector tries.
        The alignment points are YuNet's five around the face (``landmarks = "yunet"``), else
        BlazeFace's four; BlazeFace's eyes are replaced by the client's when the two agree (they came
        from BlazeFace on the whole frame, with more context). With no face found, the client's eyes
        alone align the crop. For a crop, the padded copy is tried first and the plain detection only
        when that finds no crop-filling face: one BlazeFace pass instead of two for the same face.
        Measured on lfw-dev crops: see README, "How a face crop is aligned".
        """
        if crop:
            face = self._crop_face(image, eyes)
            if face is not None:
                return self._aligned(image, face, face.keypoints.copy(), "detector")
        h, w = image.shape[:2]

        def crop_like(f: Face) -> bool:
            return f.width > CROP_LIKE * w or f.height > CROP_LIKE * h

        def padded() -> Face | None:
            return pick_main_face(self.detector.detect_in_crop(image), image.shape)

        first = padded() if crop else None
        face = first
        if face is None or not crop_like(face):
            face = pick_main_face(self.detector.detect(image), image.shape)
            if face is None or crop_like(face):
                face = (first if crop else padded()) or face  # the padded pass runs once either way
        if face is None:
            face = self._fallback_face(image)
            # Found by the fallback alone where BlazeFace saw nothing: trusted only if it agrees with the client's
            # eyes (a 25-px eye strip once gave YuNet a 0.71 "face" beside the eyes, in some server states only).
            if face is not None and eyes is not None and not _eyes_agree(face.eyes, eyes):
                face = None
        if face is not None:
            points = self._points(image, face)
            # The client's eyes (BlazeFace on its whole frame) beat BlazeFace's on a crop, but not YuNet's
            # five points: mean cosine to the whole-photo embedding, 25% margin crops, 0.965 vs 0.970.
            if eyes is not None and len(points) == 4 and _eyes_agree(points[:2], eyes):
                points[:2] = eyes
            return self._aligned(image, face, points, "detector")
        if eyes is not None:
            margin = 0.25 * max(h, w)
            inside = np.all((eyes >= -margin) & (eyes <= np.array([w, h]) + margin))
            if inside and float(np.linalg.norm(eyes[1] - eyes[0])) >= 4.0:
                return self._aligned(image, None, eyes, "eyes")
            raise NoFaceError(
                f"{field}: no face detected, and the eye keypoints {eyes.tolist()} do not fit a {w}x{h} image", field=field
            )
        raise NoFaceError(f"{field}: no face detected", field=field)

    def faces(self, image: np.ndarray) -> list[LocatedFace]:
        """Every face in a photo, aligned (YuNet finds the small faces of a wide frame where BlazeFace finds none)."""
        faces = self.detector.detect(image)
        if not faces and self.fallback_detector == "yunet" and self.yunet is not None:
            faces = self.yunet.detect(image)
        return [self.align_face(image, f) for f in faces]
