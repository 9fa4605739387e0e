"""Import a MiniFASNet anti-spoofing checkpoint (minivision's Silent-Face-Anti-Spoofing, a PyTorch
state dict) as an ONNX liveness model FaceGate serves with onnxruntime alone.

``import_liveness`` reads the file with ``torch.load(weights_only=True)`` (no code from the file
runs), strips the ``module.`` prefix of its keys, compares every key and shape with the network the
user named (:mod:`facegate.vision.minifasnet`) and loads it strictly, exports ONNX (dynamic batch,
outputs ``logits`` and ``probs``: the softmax), runs the export in onnxruntime beside PyTorch and
refuses it when their softmaxes differ by more than ``MAX_PROB_DIFF`` anywhere, and only then
writes ``NAME.onnx`` and its card ``NAME.json`` into the models directory (atomically, like an
imported AdaFace model: :mod:`facegate.vision.model_import`). A refused import writes nothing.

The crop comes from the file name, the reference's convention (its ``parse_model_name``):
``2.7_80x80_MiniFASNetV2.pth`` is a crop 2.7x the face box around its centre, resized to 80x80
(height x width); ``4_0_0_80x80_MiniFASNetV1SE.pth`` is 4.0x (the fields between the scale and the
size are ignored, as the reference ignores them); ``org_1_80x80_...`` is the whole image resized.

Torch is imported inside the functions only: serving never needs it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from facegate import __version__
from .embed import BUNDLED
from .model_import import (
    NAME_RE,
    OPSET,
    ModelImportError,
    _list,
    _load_checkpoint,
    _sha256_file,
    _torch,
    _write_atomic,
    checkpoint_file,
    state_mismatch,
)

ARCHS = ("minifasnet-v2", "minifasnet-v1se")
#: What the card's ``task`` says: the embedding-model loader skips these cards, the liveness loader reads only them.
TASK = "liveness"
CARD_FORMAT = 1
#: The network's input side (its 5x5 ``conv_6_dw`` head is made for 80 / 16 = 5).
INPUT_SIZE = 80
#: Raw 0..255 BGR pixels, NCHW: the reference feeds ``torch.from_numpy(img.transpose(2, 0, 1)).float()``.
PREPROCESSING = {"channel_order": "BGR", "mean": 0.0, "std": 1.0, "layout": "NCHW"}
OUTPUTS = ("logits", "probs")
#: The class the reference calls "real" (0 and 2 are attacks).
LIVE_CLASS = 1
#: An export whose softmax differs from PyTorch's by more than this (absolute) is refused.
MAX_PROB_DIFF = 1e-4
PREFIX = "module."
_NAME = re.compile(r"^(?P<scale>org|\d+(?:\.\d+)?)_(?:[^_]+_)*?(?P<h>\d+)x(?P<w>\d+)_(?P<type>[A-Za-z0-9]+)$")


def parse_file_name(path: str | os.PathLike) -> tuple[float | None, int, int]:
    """(crop scale or None for the whole image, input height, input width) from the reference's file
    name convention; ``ModelImportError`` for a name that does not follow it."""
    stem = Path(path).name.removesuffix(".pth")
    m = _NAME.match(stem)
    if not m:
        raise ModelImportError(
            f"{Path(path).name}: the crop is read from the file name, and this one does not follow the reference's "
            "convention SCALE_HxW_TYPE.pth (e.g. 2.7_80x80_MiniFASNetV2.pth, 4_0_0_80x80_MiniFASNetV1SE.pth): "
            "rename the file to say its crop scale and input size"
        )
    scale = None if m["scale"] == "org" else float(m["scale"])
    if scale is not None and not scale > 0:
        raise ModelImportError(f"{Path(path).name}: a crop scale of {m['scale']} is not a size")
    return scale, int(m["h"]), int(m["w"])


def _state(ckpt: Any, path: Path) -> dict[str, Any]:
    """The network's tensors with the ``module.`` prefix (``nn.DataParallel``'s) removed."""
    torch = _torch()
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt:
        raise ModelImportError(f"{path.name} holds no state dict (expected MiniFASNet weights keyed like 'module.conv1.conv.weight')")
    tensors = {k: v for k, v in ckpt.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    others = sorted(str(k) for k in ckpt if k not in tensors)
    if not tensors or others:
        raise ModelImportError(f"{path.name} is not a plain state dict: entries that are not named tensors: {_list(others)}")
    prefixed = [k for k in tensors if k.startswith(PREFIX)]
    if prefixed and len(prefixed) != len(tensors):
        bare = sorted(k for k in tensors if not k.startswith(PREFIX))
        raise ModelImportError(f"{path.name} mixes keys with and without the '{PREFIX}' prefix: {_list(bare)}")
    return {k.removeprefix(PREFIX): v for k, v in tensors.items()}


def _guess(state: dict[str, Any]) -> str | None:
    from .minifasnet import KEEP

    widths = []
    for k in ("conv_23",) + tuple(f"conv_3.model.{i}" for i in range(4)) + ("conv_34",) + tuple(
        f"conv_4.model.{i}" for i in range(6)
    ) + ("conv_45", "conv_5.model.0", "conv_5.model.1"):
        w = state.get(f"{k}.conv.conv.weight")
        widths.append(int(w.shape[0]) if w is not None and w.ndim == 4 else -1)
    return next((a for a, keep in KEEP.items() if tuple(widths) == keep), None)


def load_network(path: str | os.PathLike, arch: str):
    """The MiniFASNet in ``path`` built as ``arch``, loaded strictly, in eval mode.

    Every key and shape is compared with the architecture first; a mismatch is refused naming the
    missing, unexpected and misshapen keys (with both shapes), and the architecture the file looks like.
    """
    if arch not in ARCHS:
        raise ModelImportError(f"unknown liveness architecture {arch!r}; choose one of {', '.join(ARCHS)}", field="arch")
    torch = _torch()
    from .minifasnet import build

    path = Path(path)
    state = _state(_load_checkpoint(checkpoint_file(path)), path)
    model = build(arch)
    expected = model.state_dict()
    parts = state_mismatch(expected, state)
    if parts:
        guess = _guess(state)
        hint = f"; it looks like a {guess} checkpoint" if guess and guess != arch else ""
        raise ModelImportError(f"{path.name} does not match {arch}: " + "; ".join(parts) + hint)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ModelImportError(f"{path.name} holds non-finite values in {_list(bad)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _export_onnx(model, size: tuple[int, int]) -> bytes:
    """ONNX bytes (TorchScript-based exporter, as for AdaFace) of the network and its softmax, dynamic batch."""
    torch = _torch()
    from .minifasnet import WithSoftmax

    buf = io.BytesIO()
    dummy = torch.zeros(2, 3, *size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            WithSoftmax(model).eval(),
            (dummy,),
            buf,
            input_names=["input"],
            output_names=list(OUTPUTS),
            dynamic_axes={n: {0: "N"} for n in ("input", *OUTPUTS)},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def check_inputs(samples: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Inputs the export is checked on, 0..255 like real crops: a third uniform noise, a third smooth
    random images (bilinear up-sampling of 5x5 noise: face-like low frequencies, where the softmax is
    not saturated), a third both mixed."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((samples, 3, h, w), np.float32)
    for i in range(samples):
        noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        smooth = cv2.resize(rng.uniform(0, 255, (5, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        img = (noise, smooth, 0.8 * smooth + 0.2 * noise)[i % 3]
        out[i] = img.transpose(2, 0, 1)
    return out


def parity(model, onnx_bytes: bytes, x: np.ndarray) -> dict[str, float]:
    """Largest absolute differences between onnxruntime (batch 1 and batch 4) and PyTorch on ``x``:
    ``{"probs": ..., "logits": ...}``; inf when either side gives a non-finite number."""
    import onnxruntime as ort

    torch = _torch()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != ["input"] or names != list(OUTPUTS):
        raise ModelImportError(f"exported ONNX has unexpected inputs/outputs: {names}")
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        ref = {"logits": logits.numpy(), "probs": torch.softmax(logits, dim=1).numpy()}
    worst = {"probs": 0.0, "logits": 0.0}
    for batch in (1, 4):
        for i in range(0, len(x), batch):
            got = dict(zip(names, session.run(None, {"input": x[i : i + batch]})))
            for k in worst:
                d = float(np.max(np.abs(got[k] - ref[k][i : i + batch])))
                worst[k] = max(worst[k], d) if np.isfinite(d) else float("inf")
    return worst


def default_name(arch: str, scale: float | None) -> str:
    """``minifasnet-v2-2.7x``, ``minifasnet-v1se-4x``, ``minifasnet-v2-org``."""
    return f"{arch}-{'org' if scale is None else f'{scale:g}x'}"


def import_liveness(
    ckpt_path: str | os.PathLike,
    arch: str,
    models_dir: str | os.PathLike,
    name: str | None = None,
    *,
    check_samples: int = 12,
    max_prob_diff: float = MAX_PROB_DIFF,
    overwrite: bool = False,
) -> dict:
    """Convert a MiniFASNet state dict to ``models_dir/NAME.onnx`` plus its card ``NAME.json``; return the card.

    Refuses (``ModelImportError``, nothing written): a file name without the crop convention, a
    state dict that does not match ``arch`` key for key and shape for shape, an unsafe or taken
    ``name`` (unless ``overwrite``), and an export whose softmax differs from PyTorch's by more than
    ``max_prob_diff`` on ``check_samples`` inputs (``check_inputs``).
    """
    if arch not in ARCHS:
        raise ModelImportError(f"unknown liveness architecture {arch!r}; choose one of {', '.join(ARCHS)}", field="arch")
    src = Path(ckpt_path)
    scale, h, w = parse_file_name(src)
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        raise ModelImportError(f"{src.name}: input {h}x{w}; MiniFASNet's 5x5 head is made for {INPUT_SIZE}x{INPUT_SIZE} only")
    name = default_name(arch, scale) if name is None else name
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ModelImportError(
            f"model name {name!r} is not allowed: 1-64 of a-z 0-9 . _ - , starting with a letter or digit", field="name"
        )
    if name in BUNDLED:
        raise ModelImportError(f"{name!r} is the name of a bundled model; choose another name", field="name")
    if check_samples < 1:
        raise ModelImportError("check_samples must be at least 1")
    models_dir = Path(models_dir)
    onnx_path, card_path = models_dir / f"{name}.onnx", models_dir / f"{name}.json"
    if not overwrite and (onnx_path.exists() or card_path.exists()):
        raise ModelImportError(f"a model named {name!r} already exists in {models_dir}; choose another name (--name) or --force")

    torch = _torch()
    model = load_network(src, arch)
    onnx_bytes = _export_onnx(model, (h, w))
    diff = parity(model, onnx_bytes, check_inputs(check_samples, (h, w)))
    if not diff["probs"] <= max_prob_diff:
        raise ModelImportError(
            f"the ONNX export's softmax differs from PyTorch's by {diff['probs']:.3g} (limit {max_prob_diff:g}); "
            "nothing was written"
        )
    card = {
        "format": CARD_FORMAT,
        "task": TASK,
        "name": name,
        "arch": arch,
        "family": "minifasnet",
        "crop_scale": scale,
        "input_size": [h, w],
        "preprocessing": dict(PREPROCESSING),
        "outputs": list(OUTPUTS),
        "live_class": LIVE_CLASS,
        "source_file": src.name,
        "source_sha256": _sha256_file(src),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "max_abs_diff": diff["probs"],
        "max_abs_diff_logits": diff["logits"],
        "check_samples": check_samples,
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} (TorchScript-based torch.onnx.export)",
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "facegate_version": __version__,
    }
    models_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(onnx_path, onnx_bytes)  # the ONNX file first: a model is listed only once its card exists
    try:
        _write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
    except BaseException:
        onnx_path.unlink(missing_ok=True)
        raise
    return card
