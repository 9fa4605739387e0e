"""The passive liveness check: is the face in one frame a live person, or a printed photo or a
screen held to the camera? Imported MiniFASNet models (``facegate models import-liveness``, see
:mod:`facegate.vision.liveness_import`) run by onnxruntime; serving never needs torch.

Done as the reference (minivision's Silent-Face-Anti-Spoofing, ``test.py``) does it:

- each model gets its own crop of the frame (``crop``, the reference's ``CropImage``): the face
  box scaled by the model's crop scale (2.7x, 4x) around its centre, the scale lowered until the
  region fits the image, the region shifted back inside the image where it sticks out, and resized
  to the model's input (80x80) with bilinear interpolation; BGR, raw 0..255, NCHW;
- the models' softmaxes are summed; the face is live when class 1 ("real") wins (an argmax over
  the three classes, no threshold); the score is the live class's mean probability.

The face box is the one a WIDER FACE detector gives (the reference's own is an SSD trained on
WIDER FACE): YuNet's, which spans the forehead to the chin, not BlazeFace's tighter square
(``Pipeline.passive_check`` picks it).

What it is good for: live camera frames of a face that fills a good part of the frame. Small,
compressed photos of real people look like prints to it (README, "Liveness").
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from facegate.errors import ModelUnavailableError

from .embed import imported_models

log = logging.getLogger(__name__)

TASK = "liveness"
LIVE_CLASS = 1


class LivenessUnavailableError(ModelUnavailableError):
    """No liveness model is imported (or one could not be loaded): the passive check cannot run."""

    code = "liveness_unavailable"


@dataclass(frozen=True)
class ModelScore:
    name: str
    #: This model's probability of the live class.
    score: float


@dataclass(frozen=True)
class Liveness:
    """The passive check's answer for one face."""

    live: bool
    #: The fused probability of the live class (mean over the models).
    score: float
    models: tuple[ModelScore, ...]
    #: The summed softmax over the models (3 classes; class 1 is live).
    fused: tuple[float, ...]

    @property
    def status(self) -> str:
        return "live" if self.live else "spoof"

    def to_dict(self) -> dict:
        return {
            "live": self.live,
            "score": round(self.score, 6),
            "models": [{"name": m.name, "score": round(m.score, 6)} for m in self.models],
        }


def crop_region(
    image_shape: tuple[int, ...], box: tuple[float, float, float, float], scale: float
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive pixel bounds of the reference's crop of ``box`` (x1, y1, x2, y2).

    The region is ``scale`` x the box's width and height around its centre; the scale is lowered so
    the region fits inside the image; a region sticking out on one side is shifted back in.
    """
    src_h, src_w = image_shape[:2]
    x, y = box[0], box[1]
    bw, bh = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    scale = min((src_h - 1) / bh, (src_w - 1) / bw, scale)
    nw, nh = bw * scale, bh * scale
    cx, cy = x + bw / 2, y + bh / 2
    left, top, right, bottom = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if left < 0:
        right -= left
        left = 0
    if top < 0:
        bottom -= top
        top = 0
    if right > src_w - 1:
        left -= right - src_w + 1
        right = src_w - 1
    if bottom > src_h - 1:
        top -= bottom - src_h + 1
        bottom = src_h - 1
    return int(left), int(top), int(right), int(bottom)


def crop(image: np.ndarray, box: tuple[float, float, float, float] | None, scale: float | None, size: tuple[int, int]) -> np.ndarray:
    """The model's input crop of ``image`` (any channel order; it is kept): ``size`` is (height, width).
    ``scale`` None (an ``org`` model) or no box: the whole image resized."""
    h, w = size
    if scale is None or box is None:
        return cv2.resize(image, (w, h))
    left, top, right, bottom = crop_region(image.shape, box, scale)
    return cv2.resize(image[max(top, 0) : bottom + 1, max(left, 0) : right + 1], (w, h))


class LivenessModel:
    """One imported MiniFASNet: its crop, its onnxruntime session (thread-safe ``run``)."""

    def __init__(self, name: str, card: dict, model_bytes: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        from .embed import fast_onnx

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # an 80x80 input: parallelism comes from concurrent requests
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(fast_onnx(model_bytes), sess_options=opts, providers=["CPUExecutionProvider"])
        outputs = [o.name for o in self._session.get_outputs()]
        if "probs" not in outputs:
            raise LivenessUnavailableError(f"liveness model {name!r} has no 'probs' output: re-import it")
        self._probs = ["probs"]
        self.name = name
        self.card = card
        self.scale = None if card.get("crop_scale") is None else float(card["crop_scale"])
        size = card.get("input_size", [80, 80])
        self.size = (int(size[0]), int(size[1]))
        self.live_class = int(card.get("live_class", LIVE_CLASS))

    def probs(self, image: np.ndarray, boxes: Sequence[tuple[float, float, float, float] | None], *, rgb: bool = False) -> np.ndarray:
        """(N, 3) softmax for the faces at ``boxes`` in a BGR image (``rgb``: an RGB one, each crop turned to BGR)."""
        crops = np.stack([crop(image, b, self.scale, self.size) for b in boxes])
        if rgb:
            crops = crops[..., ::-1]
        x = crops.astype(np.float32).transpose(0, 3, 1, 2)
        return self._session.run(self._probs, {"input": np.ascontiguousarray(x)})[0]


class PassiveLiveness:
    """The imported liveness models together: their softmaxes summed, as the reference fuses them."""

    def __init__(self, models: Sequence[LivenessModel]) -> None:
        if not models:
            raise LivenessUnavailableError("no liveness model")
        self.models = tuple(models)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def check(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> Liveness:
        """The face at ``box`` (x1, y1, x2, y2) in an RGB image."""
        return self.check_many(rgb, [box])[0]

    def check_many(self, rgb: np.ndarray, boxes: Sequence[tuple[float, float, float, float]]) -> list[Liveness]:
        """Every face at ``boxes`` in an RGB image, each model run once on all of them."""
        if not len(boxes):
            return []
        per = [m.probs(rgb, boxes, rgb=True) for m in self.models]  # each (N, 3); the crops are turned to BGR
        fused = np.sum(per, axis=0)
        out = []
        for i in range(len(boxes)):
            live_class = self.models[0].live_class
            out.append(
                Liveness(
                    live=int(np.argmax(fused[i])) == live_class,
                    score=float(fused[i][live_class] / len(self.models)),
                    models=tuple(ModelScore(m.name, float(p[i][m.live_class])) for m, p in zip(self.models, per)),
                    fused=tuple(float(v) for v in fused[i]),
                )
            )
        return out


def liveness_cards(models_dir: Path | None) -> dict[str, dict]:
    """Cards of the liveness models imported into ``models_dir`` (``task`` "liveness"), by name."""
    return {name: card for name, card in imported_models(models_dir).items() if card.get("task") == TASK}


def load_liveness(models_dir: Path | None, *, threads: int = 1, required: bool = True) -> PassiveLiveness | None:
    """Every liveness model imported into ``models_dir``, or None when there is none.

    A model that cannot be used (its file does not match its card's sha256, or onnxruntime refuses
    it) raises ``LivenessUnavailableError`` when ``required``; otherwise it is left out with a warning
    (a server with liveness "off" starts anyway, and /v1/liveness says what is missing).
    """
    cards = liveness_cards(models_dir)
    models = []
    for name, card in cards.items():
        path = Path(models_dir) / f"{name}.onnx"
        try:
            data = path.read_bytes()
            if card.get("onnx_sha256") and hashlib.sha256(data).hexdigest() != card["onnx_sha256"]:
                raise LivenessUnavailableError(f"liveness model file {path} does not match its card (sha256): re-import it")
            models.append(LivenessModel(name, card, data, threads))
        except Exception as exc:  # noqa: BLE001 - one clear refusal, or a warning when not required
            err = exc if isinstance(exc, LivenessUnavailableError) else LivenessUnavailableError(
                f"liveness model {name!r} cannot be loaded ({type(exc).__name__}: {exc}): re-import it"
            )
            if required:
                raise err from None
            log.warning("%s; left out", err.message)
    if not models:
        return None
    log.info("liveness models: %s", ", ".join(m.name for m in models))
    return PassiveLiveness(models)


NO_MODEL = (
    "no liveness model is imported: import the MiniFASNet checkpoints with "
    "`facegate models import-liveness 2.7_80x80_MiniFASNetV2.pth --arch minifasnet-v2` "
    "(and 4_0_0_80x80_MiniFASNetV1SE.pth --arch minifasnet-v1se), then restart the server"
)
