"""Wiring of detect -> align -> embed -> gallery -> rank for enrol, identify and verify.

Knows nothing of HTTP: takes decoded RGB arrays, returns dataclasses, raises domain errors.
Blocking and thread-safe: the API runs it in worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import align as al
from .batching import MicroBatcher
from .config import Settings
from .detect import BlazeFaceDetector, Face, pick_main_face
from .embed import Embedder, FlipTTA, load_embedder
from .errors import NoFaceError, ReembedError
from .gallery import Gallery, NewFace, Person, clean_name
from .imageio import ImageLimits, decode_image, encode_jpeg
from .rank import Decision, rank


#: JPEG quality of stored crops: re-embedding one gives a vector within cosine 0.996 of the original's.
CROP_QUALITY = 95

#: A face wider or taller than this share of the image is treated as a crop (re-detected with padding).
CROP_LIKE = 0.5


def _eyes_agree(detected: np.ndarray, given: np.ndarray, tolerance: float = 0.3) -> bool:
    """Client eye points within ``tolerance`` x the inter-eye distance of the detector's."""
    iod = float(np.linalg.norm(detected[1] - detected[0]))
    return bool(np.all(np.linalg.norm(detected - given, axis=1) <= tolerance * max(iod, 1.0)))


@dataclass(frozen=True)
class LocatedFace:
    """A face found in an input image and how it was aligned."""

    face: Face | None
    aligned: np.ndarray
    #: "detector": BlazeFace on the server; "eyes": only the two eye points the client sent.
    landmarks: str

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        return self.face.box if self.face else None

    @property
    def score(self) -> float | None:
        return self.face.score if self.face else None


@dataclass(frozen=True)
class Identification:
    located: LocatedFace
    decision: Decision
    threshold: float


@dataclass(frozen=True)
class Verification:
    similarity: float
    same_person: bool
    threshold: float


class Pipeline:
    """One per process: holds the detector, the embedder (with flip TTA) and the gallery."""

    def __init__(
        self,
        settings: Settings,
        detector: BlazeFaceDetector,
        embedder: FlipTTA,
        gallery: Gallery,
        batcher: MicroBatcher | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.embedder = embedder
        self.gallery = gallery
        #: When set, every embedding goes through it (one model call for many concurrent requests).
        self.batcher = batcher
        self.threshold = settings.threshold if settings.threshold is not None else embedder.default_threshold
        self.limits = ImageLimits(max_pixels=settings.max_image_pixels, min_side=settings.min_image_side)

    @classmethod
    def from_settings(cls, settings: Settings, *, batching: bool = False) -> Pipeline:
        """Load the models and open the gallery (no network access; the models ship in packages).

        ``batching``: run the model in one inference thread fed by a bounded queue (the server);
        otherwise embed in the calling thread (the CLI, evaluation).
        """
        embedder = FlipTTA(
            load_embedder(settings.model, threads=settings.inference_threads, models_dir=settings.models_dir), settings.tta
        )
        detector = BlazeFaceDetector(
            settings.detector,
            settings.det_threshold,
            pool_size=settings.worker_threads if batching else 1,
            max_side=settings.max_detect_side,
        )
        gallery = Gallery(
            settings.data_dir,
            embedder.model_id,
            embedder.dim,
            exact_search_max=settings.exact_search_max,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construction=settings.hnsw_ef_construction,
            hnsw_ef=settings.hnsw_ef,
            encryption_key=settings.encryption_key,
        )
        batcher = (
            MicroBatcher(
                embedder.embed_with_norm,
                max_batch=settings.max_batch,
                max_queue=settings.embed_queue,
                max_wait_s=settings.batch_wait_ms / 1000.0,
            )
            if batching
            else None
        )
        return cls(settings, detector, embedder, gallery, batcher)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.gallery.close()
        self.detector.close()

    # ------------------------------------------------------------------ faces
    def _align_face(self, image: np.ndarray, face: Face) -> LocatedFace:
        return LocatedFace(face, al.align(image, al.blazeface_points(face.keypoints)), "detector")

    def locate(self, image: np.ndarray, eyes: np.ndarray | None = None, *, field: str = "image") -> LocatedFace:
        """The one face an image (a photo or a client's face crop) is about, aligned.

        BlazeFace's keypoints are poor on a face that fills the frame, so a face covering most of
        the image is detected again on a padded copy. When the client sent eye points that agree
        with the server's (they came from BlazeFace on the whole frame, with more context), they
        replace the server's eyes. With no face found, the client's eyes alone align the crop.
        Measured on lfw-dev crops: see README, "How a face crop is aligned".
        """
        h, w = image.shape[:2]
        face = pick_main_face(self.detector.detect(image), image.shape)
        if face is None or face.width > CROP_LIKE * w or face.height > CROP_LIKE * h:
            padded = pick_main_face(self.detector.detect_in_crop(image), image.shape)
            face = padded or face
        if face is not None:
            points = al.blazeface_points(face.keypoints).copy()
            if eyes is not None and _eyes_agree(points[:2], eyes):
                points[:2] = eyes
            return LocatedFace(face, al.align(image, points), "detector")
        if eyes is not None:
            margin = 0.25 * max(h, w)
            inside = np.all((eyes >= -margin) & (eyes <= np.array([w, h]) + margin))
            if inside and float(np.linalg.norm(eyes[1] - eyes[0])) >= 4.0:
                return LocatedFace(None, al.align(image, eyes), "eyes")
            raise NoFaceError(
                f"{field}: no face detected, and the eye keypoints {eyes.tolist()} do not fit a {w}x{h} image", field=field
            )
        raise NoFaceError(f"{field}: no face detected", field=field)

    def embed(self, aligned: Sequence[np.ndarray]) -> np.ndarray:
        if not len(aligned):
            return np.zeros((0, self.embedder.dim), np.float32)
        batch = np.stack(aligned)
        if self.batcher is not None:
            return self.batcher(batch, self.settings.request_timeout_s)[0]
        return self.embedder.embed(batch)

    # ------------------------------------------------------------------ use cases
    def _new_faces(self, images: Sequence[np.ndarray], fields: Sequence[str]) -> list[NewFace]:
        located = [self.locate(img, field=f) for img, f in zip(images, fields)]  # raises before anything is stored
        vecs = self.embed([lf.aligned for lf in located])
        keep = self.settings.keep_crops
        return [NewFace(v, encode_jpeg(lf.aligned, CROP_QUALITY) if keep else None, f) for v, lf, f in zip(vecs, located, fields)]

    def enroll(self, name: str, images: Sequence[np.ndarray], fields: Sequence[str] | None = None) -> Person:
        """Enrol a new person from 1..N images, atomically: one unusable image and nothing is stored."""
        fields = list(fields or [f"images[{i}]" for i in range(len(images))])
        name = clean_name(name, self.settings.max_name_length)  # cheap checks before any model runs
        self.gallery.ensure_name_free(name)
        return self.gallery.add_person(name, self._new_faces(images, fields), self.embedder.model_id, self.settings.max_name_length)

    def add_faces(self, person_id: int, images: Sequence[np.ndarray], fields: Sequence[str] | None = None) -> Person:
        self.gallery.get_person(person_id)  # 404 before spending model time
        fields = list(fields or [f"images[{i}]" for i in range(len(images))])
        return self.gallery.add_faces(person_id, self._new_faces(images, fields), self.embedder.model_id)

    def decide(self, embedding: np.ndarray) -> Decision:
        return rank(self.gallery.search(embedding, self.settings.top_k), self.threshold, self.settings.top_k)

    def identify_face(self, image: np.ndarray, eyes: np.ndarray | None = None, *, field: str = "image") -> Identification:
        """Who is the one face in this image (the reference ``/predict``)."""
        lf = self.locate(image, eyes, field=field)
        return Identification(lf, self.decide(self.embed([lf.aligned])[0]), self.threshold)

    def identify_all(self, image: np.ndarray) -> list[Identification]:
        """Every face in a photo, each with its identity."""
        faces = self.detector.detect(image)
        located = [self._align_face(image, f) for f in faces]
        vecs = self.embed([lf.aligned for lf in located])
        return [Identification(lf, self.decide(v), self.threshold) for lf, v in zip(located, vecs)]

    def verify(self, a: np.ndarray, b: np.ndarray) -> Verification:
        la, lb = self.locate(a, field="image_a"), self.locate(b, field="image_b")
        va, vb = self.embed([la.aligned, lb.aligned])
        sim = float(va @ vb)
        return Verification(sim, sim >= self.threshold, self.threshold)


def reembed_gallery(
    gallery: Gallery,
    embedder: Embedder,
    *,
    batch: int = 64,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-compute every stored face with ``embedder`` from its kept crop; all or nothing. Returns the face count."""
    rows = gallery.stored_crops()
    missing = [fid for fid, crop in rows if crop is None]
    if missing:
        raise ReembedError(
            f"{len(missing)} of {len(rows)} faces have no stored crop (enrolled with keep_crops off); "
            "they cannot be re-embedded: re-enrol those people or keep the current model"
        )
    limits = ImageLimits(min_side=1)
    vectors: dict[int, np.ndarray] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        crops = [decode_image(crop, limits, field=f"face {fid}") for fid, crop in chunk]
        for (fid, _), v in zip(chunk, embedder.embed(np.stack(crops))):
            vectors[fid] = v
        if progress:
            progress(len(chunk))
    gallery.reembed(embedder.model_id, embedder.dim, vectors)
    return len(rows)
