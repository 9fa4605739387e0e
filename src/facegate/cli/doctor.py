"""`facegate doctor`: is this install ready to serve? One line per check, and what to do about a failure.

Required: the three models load (BlazeFace, YuNet where the settings use it, the embedding model), the
web app's MediaPipe assets are installed, the data directory can be written, and the gallery opens with
the model it was made with. Said but not required: the API key state, and the optional extras
(hnswlib, PyTorch for imports, imported liveness models). Exit 0 when every required check passes, 1
otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import typer

from facegate.config import Settings

from .common import ConfigOpt, DataOpt
from .common import settings as _settings

#: The MediaPipe Tasks web files the pages fetch (the bundle; the SIMD build and the plain one, which
#: the loader picks between by the browser's support). The model comes from the mediapipe Python package.
WEB_ASSETS = (
    "vision_bundle.mjs",
    "wasm/vision_wasm_internal.js",
    "wasm/vision_wasm_internal.wasm",
    "wasm/vision_wasm_nosimd_internal.js",
    "wasm/vision_wasm_nosimd_internal.wasm",
)

Status = Literal["ok", "FAIL", "warn", "info"]


@dataclass(frozen=True)
class Check:
    """One line of the report: ``FAIL`` fails the command; ``warn`` and ``info`` do not."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.status:<5} {self.name}: {self.detail}{fix}"


class _Context:
    """What checks share: the settings and, once loaded, the embedding model's id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_id: str | None = None
        self.data_dir_ok = False


def _blazeface(ctx: _Context) -> Check:
    import numpy as np

    from facegate.vision.detect import BlazeFaceDetector

    det = BlazeFaceDetector(ctx.settings.detector, pool_size=1)
    try:
        det.detect(np.zeros((128, 128, 3), np.uint8))
    finally:
        det.close()
    return Check("model BlazeFace", "ok", f"{det.name} loads and runs")


def _yunet(ctx: _Context) -> Check:
    import numpy as np

    from facegate.vision.detect import YuNetDetector

    s = ctx.settings
    if s.landmarks != "yunet" and s.fallback_detector != "yunet":
        return Check("model YuNet", "info", "not used (landmarks = blazeface, fallback_detector = none)")
    YuNetDetector().detect(np.zeros((128, 128, 3), np.uint8))
    return Check("model YuNet", "ok", "loads and runs (landmarks and fallback detection)")


def _embedder(ctx: _Context) -> Check:
    from facegate.vision.embed import FlipTTA, load_embedder

    s = ctx.settings
    emb = FlipTTA(load_embedder(s.model, threads=1, models_dir=s.models_dir, precision=s.precision), s.tta)
    ctx.model_id = emb.model_id
    return Check(f"model {s.model}", "ok", f"loads ({emb.model_id}, {emb.dim}-d)")


def _web_assets(ctx: _Context) -> Check:
    from facegate import web

    missing = [f for f in WEB_ASSETS if not (web.MEDIAPIPE_DIR / f).is_file()]
    if missing:
        return Check(
            "web assets",
            "FAIL",
            f"{len(missing)} MediaPipe file(s) missing from {web.MEDIAPIPE_DIR} (e.g. {missing[0]}): the web pages cannot detect faces",
            "run `npm ci --prefix src/facegate/web`, then `pip install .` again",
        )
    if web.blazeface_path() is None:
        return Check("web assets", "FAIL", f"{web.BLAZEFACE_FILE} is missing from the mediapipe package", "pip install . again")
    return Check("web assets", "ok", f"the MediaPipe files are in {web.MEDIAPIPE_DIR}")


def _data_dir(ctx: _Context) -> Check:
    d = ctx.settings.data_dir
    existed = d.is_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Check(
            "data directory",
            "FAIL",
            f"{d} cannot be written ({exc.strerror or exc})",
            "point --data (or FACEGATE_DATA_DIR) at a folder this user can write, or fix its permissions",
        )
    ctx.data_dir_ok = True
    return Check("data directory", "ok", f"{d} is writable" + ("" if existed else " (created)"))


def _gallery(ctx: _Context) -> Check:
    from facegate.errors import FaceGateError
    from facegate.gallery.backends import describe, open_existing_gallery

    s = ctx.settings
    where = describe(s)
    if not s.gallery and not ctx.data_dir_ok:
        return Check("gallery", "FAIL", f"not checked: the data directory {where} is unusable", "see the data directory line")
    try:
        g = open_existing_gallery(s)
    except (FaceGateError, ConnectionError, OSError) as exc:
        return Check("gallery", "FAIL", f"{where} does not open: {getattr(exc, 'message', exc)}", "see the message")
    if g is None:
        return Check("gallery", "ok", f"none yet in {where} (made at the first enrolment)")
    try:
        people, faces, mode = g.stats()
        made_with = g.model_id
    finally:
        g.close()
    if ctx.model_id is not None and made_with != ctx.model_id:
        return Check(
            "gallery",
            "FAIL",
            f"{where} holds {faces} faces made by {made_with}, but the settings give {ctx.model_id}",
            "serve with the gallery's model (--model/--tta), or re-embed it: "
            f"`facegate gallery reembed --model {s.model} --tta {s.tta}`",
        )
    return Check("gallery", "ok", f"{where}: {people} people, {faces} faces, made by {made_with}, search {mode}")


def _keys(ctx: _Context) -> Check:
    from facegate.gallery.backends import open_keys
    from facegate.gallery.sqlite import DB_NAME

    s = ctx.settings
    if not s.gallery and not (s.data_dir / DB_NAME).is_file():
        active = []
    else:
        store = open_keys(s)
        try:
            active = [k for k in store.list() if not k.revoked_at]
        finally:
            store.close()
    admins = sum(k.role == "admin" for k in active)
    if not active:
        return Check(
            "API keys",
            "warn",
            "none: the server answers this machine only (loopback), every route open",
            "`facegate keys create --role admin` before serving on a network",
        )
    if not admins:
        return Check(
            "API keys",
            "warn",
            f"{len(active)} client key(s), no admin key: nobody can enrol or delete over HTTP",
            "`facegate keys create --role admin`",
        )
    return Check("API keys", "ok", f"{len(active)} active ({admins} admin)")


def _hnswlib(ctx: _Context) -> Check:
    if importlib.util.find_spec("hnswlib") is not None:
        return Check("hnswlib", "info", 'importable (ann_index = "hnsw" available)')
    if ctx.settings.ann_index == "hnsw":
        return Check("hnswlib", "FAIL", 'not installed, and ann_index = "hnsw" needs it', "`pip install hnswlib` (needs a C++ compiler)")
    return Check("hnswlib", "info", 'not installed (optional: only ann_index = "hnsw" uses it)')


def _torch(ctx: _Context) -> Check:
    if importlib.util.find_spec("torch") is not None:
        return Check("PyTorch", "info", "importable (`facegate models import` and `import-liveness` available)")
    return Check("PyTorch", "info", "not installed (optional: only importing models needs it: pip install 'facegate[import]')")


def _liveness(ctx: _Context) -> Check:
    from facegate.vision.embed import imported_models

    s = ctx.settings
    found = sorted(n for n, c in imported_models(s.models_dir).items() if c.get("task") == "liveness")
    wanted = getattr(s, "liveness", "off")
    if wanted != "off" and not found:
        return Check(
            "liveness models",
            "FAIL",
            f"liveness = {wanted!r} but none is imported in {s.models_dir}",
            "`facegate models import-liveness CHECKPOINT --arch minifasnet-v2`, or liveness = off",
        )
    if not found:
        return Check("liveness models", "info", "none imported (optional: POST /v1/liveness and --liveness passive need them)")
    return Check("liveness models", "info", f"{len(found)} imported: {', '.join(found)}")


#: In order: the data directory before the gallery, the embedding model before the gallery's model check.
CHECKS: tuple[tuple[str, Callable[[_Context], Check]], ...] = (
    ("model BlazeFace", _blazeface),
    ("model YuNet", _yunet),
    ("embedding model", _embedder),
    ("web assets", _web_assets),
    ("data directory", _data_dir),
    ("gallery", _gallery),
    ("API keys", _keys),
    ("hnswlib", _hnswlib),
    ("PyTorch", _torch),
    ("liveness models", _liveness),
)


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; one that raises is a failure naming what it raised."""
    ctx = _Context(settings)
    out = []
    for name, check in CHECKS:
        try:
            out.append(check(ctx))
        except Exception as exc:  # noqa: BLE001 - a doctor reports, it does not crash
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            out.append(Check(name, "FAIL", f"does not load: {msg}", "reinstall FaceGate's dependencies (`pip install .`)"))
    return out


def doctor_command(data: DataOpt = None, config: ConfigOpt = None) -> None:
    """Check the install (models, web assets, data directory, gallery, keys, extras) and say what to fix."""
    s = _settings(config, data_dir=data)
    checks = run_checks(s)
    for c in checks:
        print(c.line(), flush=True)
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"{len(failed)} required check(s) failed" if failed else "every required check passed")
    raise typer.Exit(1 if failed else 0)
