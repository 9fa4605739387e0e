"""Import an official AdaFace checkpoint (PyTorch Lightning ``.ckpt``) as an ONNX model FaceGate serves.

``import_checkpoint`` loads the backbone (IR-18, IR-50 or IR-101, see :mod:`facegate.vision.iresnet`),
checks every key and shape against the architecture the user named, exports ONNX (dynamic batch),
checks the ONNX file against PyTorch with onnxruntime, and only then writes ``NAME.onnx`` and its
card ``NAME.json`` into the models directory, atomically. A refused import writes nothing.

The ONNX model takes ``input`` (N, 3, 112, 112) float32: a BGR crop, ``(x - 127.5) / 127.5`` on
0..255 pixels (AdaFace's ``((x / 255) - 0.5) / 0.5``), and gives ``embedding`` (N, 512), a unit
vector, and ``norm`` (N, 1), the feature norm AdaFace reads as image quality.

Torch is imported inside the functions only: serving never needs it (``pip install 'facegate[import]'``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from facegate import __version__
from .embed import BUNDLED
from facegate.errors import FaceGateError

ARCHS = frozenset({"ir18", "ir50", "ir101"})
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # used with fullmatch: no trailing newline
CARD_FORMAT = 1
EMBEDDING_SIZE = 512
INPUT_SIZE = 112
#: x' = (x - mean) / std on 0..255 BGR pixels: AdaFace's ((x / 255) - 0.5) / 0.5.
PREPROCESSING = {"channel_order": "BGR", "mean": 127.5, "std": 127.5}
OUTPUTS = ("embedding", "norm")
OPSET = 17
#: An ONNX export whose outputs differ from PyTorch's by more than this is refused.
MAX_ABS_DIFF = 1e-3
#: Blocks in ``body`` per architecture, to tell the user what a checkpoint really holds.
_BODY_BLOCKS = {8: "ir18", 24: "ir50", 49: "ir101"}


class ModelImportError(FaceGateError):
    """A checkpoint that cannot be imported: unreadable, another architecture, or an export that disagrees."""

    code = "model_import"


# --------------------------------------------------------------------------------------------------
# Loading


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ModelImportError(
            f"importing a checkpoint needs PyTorch: pip install 'facegate[import]' ({exc})"
        ) from None
    return torch


def _inert_global(full_path: str, kind: str) -> Any:
    """A stand-in for a class or function a checkpoint names but FaceGate does not need.

    Lightning checkpoints pickle objects of their own (callback classes used as dict keys,
    hyper-parameter containers) beside the weights. Rather than importing Lightning, or unpickling
    with ``weights_only=False`` (which runs whatever code the file names), each such global is
    replaced by an object that does nothing: the unpickler stays torch's restricted one.
    ``kind`` says what it must build for the restricted unpickler to fill it: a plain dict (a dict
    subclass such as ``AttributeDict``), a plain list, or an inert object that keeps its state.
    """
    module, _, qual = full_path.rpartition(".")

    if kind == "dict":

        class Stub:
            def __new__(cls, *args: Any, **kwargs: Any) -> dict:
                return {}

    elif kind == "list":

        class Stub:  # type: ignore[no-redef]
            def __new__(cls, *args: Any, **kwargs: Any) -> list:
                return []

    else:

        class Stub:  # type: ignore[no-redef]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.args = args

            def __setstate__(self, state: Any) -> None:
                self.state = state

    Stub.__module__ = module or "builtins"
    Stub.__qualname__ = Stub.__name__ = qual or full_path
    return Stub


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
_WRONG_CONTAINER = re.compile(r"Can only (SETITEMS?|append to lists|extend lists)\b.*but got <class '([^']+)'>")


def _load_checkpoint(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, never running code from the file.

    Plain state dicts load at the first try. Official AdaFace checkpoints are Lightning checkpoints
    that may name Lightning's own classes, which the restricted unpickler refuses; then each
    refused global gets an inert stand-in (see ``_inert_global``) and the load is retried, still
    with ``weights_only=True``. Lightning need not be installed, and nothing in the file is run.
    """
    torch = _torch()
    with open(path, "rb") as f:
        # A zip checkpoint (torch >= 1.6) is memory-mapped: a retry then costs no re-reading of the weights.
        mmap = f.read(4) == b"PK\x03\x04"
    kinds: dict[str, str] = {}
    last = ""
    for _ in range(64):
        stubs = {p: _inert_global(p, k) for p, k in kinds.items()}
        try:
            with torch.serialization.safe_globals([(s, p) for p, s in stubs.items()]):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear refusal below
            msg = str(exc)
            m = _UNSUPPORTED_GLOBAL.search(msg)
            if m and m.group(1) not in kinds:
                kinds[m.group(1)] = "object"
                continue
            m = _WRONG_CONTAINER.search(msg)
            if m:
                hit = [p for p, s in stubs.items() if f"{s.__module__}.{s.__qualname__}" == m.group(2)]
                want = "dict" if m.group(1).startswith("SETITEM") else "list"
                if hit and kinds[hit[0]] != want:
                    kinds[hit[0]] = want
                    continue
            last = _reason(exc)
            break
    raise ModelImportError(f"{path.name} is not a PyTorch checkpoint FaceGate can read safely ({last})")


def _reason(exc: Exception) -> str:
    """The line of a torch.load error that says what is wrong (not its advice to load unsafely)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [ln for ln in lines if not ln.startswith("Check the documentation")]
        tail = lines[-1].removeprefix("WeightsUnpickler error:").strip() if lines else ""
        return tail or "refused by the restricted unpickler"
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _backbone_state(ckpt: Any, path: Path) -> dict[str, Any]:
    """The backbone's tensors: ``state_dict`` entries under ``model.``, the prefix stripped.

    A bare state dict (no ``model.`` keys) is taken as the backbone itself. The AdaFace head
    (``head.kernel``, ``head.t``, ``head.batch_mean``, ``head.batch_std``) is dropped.
    """
    torch = _torch()
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise ModelImportError(
            f"{path.name} holds no state dict (expected an AdaFace Lightning checkpoint with 'state_dict')"
        )
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelImportError(f"{path.name} holds no state dict (no named tensors in it)")
    if any(k.startswith("model.") for k in tensors):
        return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return {k: v for k, v in tensors.items() if not k.startswith("head.")}


def _guess_arch(keys: set[str]) -> str | None:
    blocks = {k.split(".")[1] for k in keys if k.startswith("body.") and k.count(".") >= 2}
    return _BODY_BLOCKS.get(len(blocks))


def checkpoint_file(path: Path) -> Path:
    """``path``, refused with a clear error when it is no file or an empty one."""
    if not path.is_file():
        raise ModelImportError(f"no checkpoint file at {path}")
    if path.stat().st_size == 0:
        raise ModelImportError(f"{path.name} is empty: not a PyTorch checkpoint")
    return path


def state_mismatch(expected: dict, state: dict, may_lack=lambda key: False) -> list[str]:
    """How a checkpoint's state dict differs from a network's (missing, unexpected, misshapen keys), in
    words for the error; empty when it loads strictly. ``may_lack``: keys the checkpoint may leave out."""
    missing = sorted(k for k in expected.keys() - state.keys() if not may_lack(k))
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = sorted(
        f"{k} (expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)})"
        for k in expected.keys() & state.keys()
        if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    parts = []
    if missing:
        parts.append(f"missing key(s): {_list(missing)}")
    if unexpected:
        parts.append(f"unexpected key(s): {_list(unexpected)}")
    if misshapen:
        parts.append(f"misshapen key(s): {_list(misshapen, 4)}")
    return parts


def _list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ModelImportError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHS))}")


def load_backbone(ckpt_path: str | os.PathLike, arch: str):
    """The AdaFace backbone in ``ckpt_path``, built as ``arch``, in eval mode.

    Every key and shape is compared with the architecture before anything is loaded, and a
    mismatch is refused naming the missing, unexpected and misshapen keys (with both shapes).
    """
    _check_arch(arch)
    torch = _torch()
    from .iresnet import build_backbone

    path = Path(ckpt_path)
    state = _backbone_state(_load_checkpoint(checkpoint_file(path)), path)

    model = build_backbone(arch)
    expected = model.state_dict()
    # Checkpoints from before BatchNorm counted its batches lack these buffers; PyTorch fills them.
    parts = state_mismatch(expected, state, may_lack=lambda k: k.endswith(".num_batches_tracked"))
    if parts:
        guess = _guess_arch(set(state))
        hint = f"; it looks like an {guess} checkpoint" if guess and guess != arch else ""
        raise ModelImportError(f"{path.name} does not match {arch}: " + "; ".join(parts) + hint)

    for k, v in expected.items():
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelImportError(f"{path.name} holds non-finite values in {_list(sorted(bad))}")
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Export, verification, files


def _export_onnx(model) -> bytes:
    """ONNX bytes with a symbolic batch axis, through torch's TorchScript-based exporter.

    That exporter is deprecated but present and exact in torch 2.13; the torch.export-based one
    would need onnxscript as well, for nothing this plain convolutional network needs.
    """
    torch = _torch()
    buf = io.BytesIO()
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    axes = {n: {0: "N"} for n in ("input", *OUTPUTS)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            input_names=["input"],
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def _verify(model, onnx_bytes: bytes, samples: int) -> float:
    """Largest absolute difference between onnxruntime and PyTorch over both outputs, on ``samples``
    random inputs run at batch 1 and at batch 4 (inputs in [-1, 1], the range of real crops)."""
    import onnxruntime as ort

    torch = _torch()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != ["input"] or names != list(OUTPUTS):
        raise ModelImportError(f"exported ONNX has unexpected inputs/outputs: {names}")
    x = np.random.default_rng(0).uniform(-1, 1, (samples, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(x))]
    if not all(np.isfinite(r).all() for r in ref):
        raise ModelImportError("the network gives non-finite outputs in PyTorch")
    worst = 0.0
    for batch in (1, 4):
        for i in range(0, samples, batch):
            got = session.run(None, {"input": x[i : i + batch]})
            for g, r in zip(got, ref):
                d = float(np.max(np.abs(g - r[i : i + batch])))
                if not np.isfinite(d):  # NaN must not pass as "small"
                    return float("inf")
                worst = max(worst, d)
    return worst


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    # Not mkstemp: its files are 0600; this one gets the umask's usual permissions, like any other file.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_checkpoint(
    ckpt_path: str | os.PathLike,
    arch: str,
    models_dir: str | os.PathLike,
    name: str | None = None,
    *,
    check_samples: int = 8,
    overwrite: bool = False,
) -> dict:
    """Convert an AdaFace checkpoint to ``models_dir/NAME.onnx`` plus its card ``NAME.json``; return the card.

    Refuses (``ModelImportError``, nothing written) a checkpoint that does not match ``arch``, an
    unsafe ``name``, an existing model of that name unless ``overwrite``, and an export whose
    outputs differ from PyTorch's by more than ``MAX_ABS_DIFF`` on ``check_samples`` random inputs.
    """
    _check_arch(arch)
    name = f"adaface-{arch}" if name is None else name
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ModelImportError(
            f"model name {name!r} is not allowed: 1-64 of a-z 0-9 . _ - , starting with a letter or digit",
            field="name",
        )
    if name in BUNDLED:
        raise ModelImportError(f"{name!r} is the name of a bundled model; choose another name", field="name")
    if check_samples < 1:
        raise ModelImportError("check_samples must be at least 1")
    models_dir = Path(models_dir)
    onnx_path, card_path = models_dir / f"{name}.onnx", models_dir / f"{name}.json"
    if not overwrite and (onnx_path.exists() or card_path.exists()):
        raise ModelImportError(f"a model named {name!r} already exists in {models_dir}; choose another name")

    torch = _torch()
    src = Path(ckpt_path)
    model = load_backbone(src, arch)
    onnx_bytes = _export_onnx(model)
    diff = _verify(model, onnx_bytes, check_samples)
    if not diff <= MAX_ABS_DIFF:
        raise ModelImportError(
            f"the ONNX export differs from PyTorch by {diff:.3g} (limit {MAX_ABS_DIFF:g}); nothing was written"
        )

    card = {
        "format": CARD_FORMAT,
        "name": name,
        "arch": arch,
        "family": "adaface",
        "embedding_size": EMBEDDING_SIZE,
        "input_size": INPUT_SIZE,
        "preprocessing": dict(PREPROCESSING),
        "outputs": list(OUTPUTS),
        "source_file": src.name,
        "source_sha256": _sha256_file(src),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "max_abs_diff": diff,
        "check_samples": check_samples,
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} (TorchScript-based torch.onnx.export)",
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "facegate_version": __version__,
    }
    models_dir.mkdir(parents=True, exist_ok=True)
    # The ONNX file first, then the card: a model is listed only once its card exists.
    _write_atomic(onnx_path, onnx_bytes)
    try:
        _write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
    except BaseException:
        onnx_path.unlink(missing_ok=True)
        raise
    return card
