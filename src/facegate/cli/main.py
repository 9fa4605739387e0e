"""The ``facegate`` command: serve, enroll a folder, identify images, manage people."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from facegate.security import audit
from .security import audit_command, check_exposure, gallery_encrypt, gallery_new_key, keys_app
from facegate.clients.camera import client_app
from facegate.gallery.backends import describe
from .common import ConfigOpt, DataOpt, console, fail
from .common import settings as _settings
from facegate.config import Settings, settings_for_workers
from facegate.errors import FaceGateError
from facegate.vision.native_log import quiet_python_loggers

app = typer.Typer(help="FaceGate: self-hosted face recognition.", no_args_is_help=True, add_completion=False)


def _print_version(value: bool) -> None:
    if value:
        from facegate import __version__

        print(f"facegate {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass


people_app = typer.Typer(help="List or delete enrolled people.", no_args_is_help=True)
app.add_typer(people_app, name="people")
models_app = typer.Typer(help="Import and list embedding models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
gallery_app = typer.Typer(help="Maintain the gallery.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")
app.add_typer(client_app, name="client")
app.add_typer(keys_app, name="keys")
app.command("audit")(audit_command)
gallery_app.command("encrypt")(gallery_encrypt)
gallery_app.command("new-key")(gallery_new_key)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

def _pipeline(settings: Settings, batching: bool = False):
    from facegate.pipeline import Pipeline

    try:
        return Pipeline.from_settings(settings, batching=batching)
    except (FaceGateError, ConnectionError) as exc:
        fail(getattr(exc, "message", str(exc)))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8000).")] = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    detector: Annotated[Optional[str], typer.Option(help="BlazeFace model: short or full.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Embedding model: sface, or an imported one (see `facegate models list`).")] = None,
    tta: Annotated[Optional[str], typer.Option(help="Flip TTA: none, concat, sum or normsum.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="The model's arithmetic: float or int8 (built on first use).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Cosine similarity threshold.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Server processes sharing the gallery (default 1).")] = None,
    tunnel: Annotated[Optional[str], typer.Option(help="Expose through a tunnel: ngrok (needs pyngrok and API keys).")] = None,
    gallery: Annotated[
        Optional[str], typer.Option(help="postgresql://... to keep the gallery in PostgreSQL + pgvector (shared by many servers).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    liveness: Annotated[
        Optional[str], typer.Option(help="off; passive: check every identified face with the imported liveness models; challenge: name faces only through an active challenge (blink, head turns); both.")
    ] = None,
    camera: Annotated[
        Optional[list[str]],
        typer.Option(help="Watch a camera: NAME=URL (rtsp://, http(s):// MJPEG, /dev/videoN or a video file); repeatable. Replaces the settings file's [[cameras]]."),
    ] = None,
) -> None:
    """Run the HTTP server (the reference /register and /predict, and /v1)."""
    import uvicorn

    from facegate.api import create_app

    s = _settings(
        config,
        host=host,
        port=port,
        data_dir=data,
        detector=detector,
        model=model,
        tta=tta,
        precision=precision,
        threshold=threshold,
        workers=workers,
        gallery=gallery,
        liveness=liveness,
        cameras=_cameras(camera),
    )
    if tunnel not in (None, "ngrok"):
        console.print(f"[red]error:[/red] unknown tunnel {escape(tunnel)!r}; the one supported is ngrok")
        raise typer.Exit(2)
    check_exposure(s, tunnel)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_python_loggers(debug=log_level.lower() == "debug")  # faiss's loader and the like: only when debugging
    pipe = _pipeline(s, batching=s.workers == 1)  # load first: a refusal is a message, not a traceback
    console.print(
        f"FaceGate serving on http://{s.host}:{s.port} with {s.workers} worker process(es)"
        f"  (gallery: {escape(describe(s))}, docs: /docs)"
    )
    from facegate.api.connections import GuardedHttpProtocol, configure, raise_open_files_limit

    configure(s.header_timeout_s, s.max_connections_per_ip, s.max_connections, s.forwarded_allow_ips)
    raise_open_files_limit(s.max_connections + 256)
    server_opts = dict(
        host=s.host,
        port=s.port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        http=GuardedHttpProtocol,  # header timeout, connections per address, room kept (api/connections.py)
        proxy_headers=bool(s.forwarded_allow_ips),
        forwarded_allow_ips=s.forwarded_allow_ips or None,
    )
    if tunnel:
        _open_tunnel(s.port)
    if s.workers == 1:
        try:
            uvicorn.run(create_app(s, pipe), **server_opts)
        finally:
            pipe.close()
        return
    pipe.close()  # each worker process loads its own models and opens the shared gallery
    os.environ.update(settings_for_workers(s))
    uvicorn.run(
        "facegate.api.app:create_app_from_environment",
        factory=True,
        workers=s.workers,
        **server_opts,
    )


def _cameras(given: list[str] | None) -> list[dict] | None:
    """``--camera NAME=URL`` flags as ``[[cameras]]`` entries (None: keep the settings file's)."""
    if not given:
        return None
    out = []
    for item in given:
        name, eq, url = item.partition("=")
        if not eq or not name.strip() or not url.strip():
            console.print(f"[red]error:[/red] --camera wants NAME=URL, not {escape(item)!r}")
            raise typer.Exit(2)
        if any(c["name"] == name.strip() for c in out):  # said here: pydantic's message would show the URLs, passwords and all
            console.print(f"[red]error:[/red] --camera {escape(name.strip())} is given twice; camera names must be unique")
            raise typer.Exit(2)
        out.append({"name": name.strip(), "url": url.strip()})
    return out


def _open_tunnel(port: int) -> None:
    """A public URL through ngrok (pyngrok): only ever with API keys (checked before)."""
    try:
        from pyngrok import ngrok
    except ImportError:
        console.print("[red]error:[/red] --tunnel ngrok needs pyngrok: pip install pyngrok (and an ngrok account token)")
        raise typer.Exit(2) from None
    url = ngrok.connect(port, "http").public_url
    console.print(f"public URL (keys required): {escape(url)}")


@app.command()
def enroll(
    folder: Annotated[Path, typer.Argument(help="A folder with one sub-folder of photos per person, named after them.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many photos per person (0: all).")] = 0,
    existing: Annotated[str, typer.Option(help="A name already enrolled: skip, or add the photos to them.")] = "skip",
    allow_duplicates: Annotated[
        bool, typer.Option("--allow-duplicates", help="Enrol faces that match another enrolled person (else that person is skipped).")
    ] = False,
) -> None:
    """Enrol everyone in FOLDER. Photos without a usable face are reported and left out; the person is
    enrolled with the others (at least enroll_min_faces of them)."""
    if not folder.is_dir():
        console.print(f"[red]error:[/red] {escape(str(folder))} is not a folder")
        raise typer.Exit(2)
    if existing not in ("skip", "add"):
        console.print("[red]error:[/red] --existing must be skip or add")
        raise typer.Exit(2)
    s = _settings(config, data_dir=data)
    pipe = _pipeline(s)
    from facegate.vision.imageio import read_image_file

    people = [d for d in sorted(folder.iterdir()) if d.is_dir()]
    enrolled = skipped = 0
    problems: list[str] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("enrolling", total=len(people))
        for d in people:
            bar.update(task, description=f"enrolling {escape(d.name[:24]):<24}")
            paths = _images_in(d)[: limit or None]
            images, labels = [], []
            for pth in paths:
                try:
                    images.append(read_image_file(str(pth), pipe.limits))
                    labels.append(pth.name)
                except FaceGateError as exc:
                    problems.append(f"{d.name}/{pth.name}: {exc.message}")
            if not images:
                problems.append(f"{d.name}: no readable photo, not enrolled")
                bar.advance(task)
                continue
            try:
                person = pipe.gallery.find_person(d.name)
                if person is not None and existing != "add":
                    skipped += 1
                    bar.advance(task)
                    continue
                if person is None:
                    result = pipe.enroll_photos(d.name, images, labels, allow_duplicate=allow_duplicates or None)
                else:
                    result = pipe.add_photos(person.id, images, labels, allow_duplicate=allow_duplicates or None)
                enrolled += 1
                # Photos left out (no face, too poor): the person is enrolled with the others.
                problems += [f"{d.name}/{x.field}: left out: {'; '.join(x.reasons)}" for x in result.dropped]
            except FaceGateError as exc:
                problems.append(f"{d.name}: not enrolled: {exc.message}")
            bar.advance(task)
    pipe.close()
    for p in problems:
        console.print(f"[yellow]skipped[/yellow] {escape(p)}")
    console.print(f"enrolled {enrolled} people, {skipped} already enrolled, {len(problems)} problems")


@app.command()
def identify(
    paths: Annotated[list[Path], typer.Argument(help="Image files, or folders of them.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also the images in sub-folders of a folder.")] = False,
    csv_file: Annotated[
        Optional[Path], typer.Option("--csv", help="Also write one row per face (and per image without one) to this CSV file.")
    ] = None,
    threshold: Annotated[
        Optional[float], typer.Option(help="Similarity needed to name a face (default: the model's calibrated one).", min=-1.0, max=1.0)
    ] = None,
) -> None:
    """Name every face in each image (or every image in a folder)."""
    images: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            images += sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            images.append(path)  # a missing file is reported below, with the others still answered
    s = _settings(config, data_dir=data, threshold=threshold)
    pipe = _pipeline(s)
    from facegate.vision.imageio import read_image_file

    status = 0
    out = open(csv_file, "w", newline="", encoding="utf-8") if csv_file else None
    writer = None
    if out is not None:
        import csv

        writer = csv.DictWriter(out, ["image", "face", "status", "name", "person_id", "similarity", "x1", "y1", "x2", "y2", "reasons"])
        writer.writeheader()
    try:
        for path in images:
            try:
                results = pipe.identify_all(read_image_file(str(path), pipe.limits))
            except (FaceGateError, OSError) as exc:
                console.print(f"[red]{escape(str(path))}:[/red] {escape(str(getattr(exc, 'message', exc)))}")
                if writer:
                    writer.writerow({"image": str(path), "status": "error", "reasons": str(getattr(exc, "message", exc))})
                status = 1
                continue
            rows = [
                {
                    "image": str(path),
                    "box": [round(v, 1) for v in r.located.box] if r.located.box else None,
                    "status": r.status,
                    "name": r.decision.name if r.decision.known else "unknown",
                    "person_id": r.decision.person_id,
                    "similarity": round(r.decision.similarity, 4),
                    **({"reasons": list(r.verdict.reasons)} if r.retry else {}),
                }
                for r in results
            ]
            if as_json:
                for row in rows or [{"image": str(path), "box": None, "status": None, "name": None, "person_id": None, "similarity": None}]:
                    print(json.dumps(row))
            else:
                print(f"{path}: " + (", ".join(_said(r) for r in rows) or "no face"))
            if writer:
                for i, row in enumerate(rows):
                    box = row["box"] or [None] * 4
                    writer.writerow(
                        {**{k: row[k] for k in ("image", "status", "person_id", "similarity")}, "face": i,
                         "name": row["name"] if row["status"] == "recognized" else "",
                         "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3], "reasons": "; ".join(row.get("reasons", []))}
                    )
                if not rows:
                    writer.writerow({"image": str(path), "status": "no_face"})
    finally:
        if out is not None:
            out.close()
        pipe.close()
    raise typer.Exit(status)


def _said(row: dict) -> str:
    """One face in words: "Ada (0.612)", "unknown (0.231)", or "retry: <why>" for a face too poor to name."""
    if row["status"] == "retry":
        return f"retry ({'; '.join(row.get('reasons', [])) or 'too poor a face to name'})"
    return f"{row['name']} ({row['similarity']:.3f})"


def _gallery(settings: Settings):
    """The gallery as it is stored (data_dir or PostgreSQL), opened without loading any model."""
    from facegate.gallery.backends import open_existing_gallery

    try:
        return open_existing_gallery(settings)
    except (FaceGateError, ConnectionError) as exc:
        fail(getattr(exc, "message", str(exc)))


@people_app.command("list")
def people_list(data: DataOpt = None, config: ConfigOpt = None) -> None:
    """Everyone enrolled, with their face counts."""
    s = _settings(config, data_dir=data)
    gallery = _gallery(s)
    table = Table("id", "name", "faces", "enrolled")
    for p in gallery.list_people() if gallery else []:
        table.add_row(str(p.id), escape(p.name), str(p.face_count), p.created_at)
    Console().print(table)
    if gallery:
        gallery.close()


@people_app.command("delete")
def people_delete(
    who: Annotated[str, typer.Argument(help="A person's name, or their id.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Forget a person: their faces, crops and index entries are removed."""
    s = _settings(config, data_dir=data)
    gallery = _gallery(s)
    if gallery is None:
        console.print(f"[red]error:[/red] no gallery in {escape(describe(s))}")
        raise typer.Exit(1)
    try:
        person = gallery.find_person(who)
        if person is None and who.isdigit():
            person = gallery.get_person(int(who))
        if person is None:
            console.print(f"[red]error:[/red] nobody named {escape(repr(who))}")
            raise typer.Exit(1)
        gallery.delete_person(person.id)
        console.print(f"deleted {escape(person.name)} (id {person.id}, {person.face_count} faces)")
        if getattr(gallery, "purge_pending", False):
            console.print("[yellow]warning:[/yellow] a reader (a backup? a server's query?) holds the database: the deleted "
                          "data stays in its -wal file until it goes and a later checkpoint runs (a running server retries)")
    except FaceGateError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None
    finally:
        gallery.close()


@models_app.command("import")
def models_import(
    checkpoint: Annotated[Path, typer.Argument(help="An official AdaFace checkpoint (.ckpt).")],
    arch: Annotated[str, typer.Option(help="Backbone of the checkpoint: ir18, ir50 or ir101.")],
    name: Annotated[Optional[str], typer.Option(help="Model name (default adaface-ARCH).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an imported model of the same name.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also build its 8-bit copy (precision = \"int8\").")] = False,
    calibration: Annotated[
        Optional[Path], typer.Option(help="With --int8: a folder of face photos to calibrate on (default: photos shipped with FaceGate's packages).")
    ] = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Convert an AdaFace checkpoint to ONNX in the data directory (needs `pip install .[import]`)."""
    s = _settings(config, data_dir=data)
    try:
        from facegate.vision.model_import import import_checkpoint
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        console.print(f"[red]error:[/red] importing needs PyTorch: pip install 'facegate[import]' ({escape(str(exc))})")
        raise typer.Exit(1) from None
    if not checkpoint.is_file():
        console.print(f"[red]error:[/red] {escape(str(checkpoint))} is not a file")
        raise typer.Exit(2)
    if calibration is not None and not int8:
        fail("--calibration goes with --int8", 2)
    photos = _calibration_photos(calibration)
    try:
        card = import_checkpoint(checkpoint, arch, s.models_dir, name, overwrite=force)
    except FaceGateError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None
    console.print(
        f"imported {escape(card['name'])} ({card['arch']}, {card['embedding_size']}-d) into {escape(str(s.models_dir))}; "
        f"ONNX vs PyTorch max abs difference {card['max_abs_diff']:.2e}"
    )
    console.print(f"serve it with: facegate serve --model {escape(card['name'])} --tta normsum")
    if int8:
        _quantize(s, card["name"], photos, calibration)


def _calibration_photos(folder: Optional[Path]) -> Optional[list[Path]]:
    """The photos in ``--calibration DIR`` (None: the bundled ones); exits 2 on a folder without any."""
    if folder is None:
        return None
    from facegate.vision.quantize import photos_in

    if not folder.is_dir():
        fail(f"{folder} is not a folder", 2)
    photos = photos_in(folder)
    if not photos:
        fail(f"no photos (.jpg, .png, ...) in {folder}", 2)
    return photos


def _quantize(s, name: str, photos: Optional[list[Path]], folder: Optional[Path]) -> None:
    from facegate.vision.embed import build_int8_model

    console.print(f"building the int8 copy of {escape(name)} (a few minutes on 2 cores)")
    try:
        card = build_int8_model(name, s.models_dir, photos=photos, calibration=str(folder) if folder else None, threads=s.inference_threads)
    except FaceGateError as exc:
        fail(exc.message)
    cos = card["cosine_to_float"]
    console.print(
        f"int8 {escape(name)}: calibrated on {card['calibration_faces']} faces ({card['calibration_misses']} photos without one); "
        f"cosine to the float model median {cos['median']:.4f}, least {cos['min']:.4f}"
    )
    console.print("use it with precision = \"int8\" (FACEGATE_PRECISION=int8); a gallery moves with `facegate gallery reembed --precision int8`")


@models_app.command("quantize")
def models_quantize(
    name: Annotated[str, typer.Argument(help="A bundled model (sface) or an imported one.")] = "sface",
    calibration: Annotated[
        Optional[Path], typer.Option(help="A folder of face photos to calibrate on (default: photos shipped with FaceGate's packages).")
    ] = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """(Re)build a model's 8-bit copy for precision = "int8" (otherwise built on first use)."""
    s = _settings(config, data_dir=data)
    _quantize(s, name, _calibration_photos(calibration), calibration)


@models_app.command("import-liveness")
def models_import_liveness(
    checkpoint: Annotated[Path, typer.Argument(help="A MiniFASNet state dict named as the reference names them: SCALE_HxW_TYPE.pth (e.g. 2.7_80x80_MiniFASNetV2.pth).")],
    arch: Annotated[str, typer.Option(help="Network of the checkpoint: minifasnet-v2 or minifasnet-v1se.")],
    name: Annotated[Optional[str], typer.Option(help="Model name (default ARCH-SCALEx, e.g. minifasnet-v2-2.7x).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an imported model of the same name.")] = False,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Convert a MiniFASNet anti-spoofing checkpoint to ONNX in the data directory: a liveness model (needs `pip install .[import]`)."""
    s = _settings(config, data_dir=data)
    try:
        from facegate.vision.liveness_import import import_liveness
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        fail(f"importing needs PyTorch: pip install 'facegate[import]' ({exc})")
    if not checkpoint.is_file():
        fail(f"{checkpoint} is not a file", 2)
    try:
        card = import_liveness(checkpoint, arch, s.models_dir, name, overwrite=force)
    except FaceGateError as exc:
        fail(exc.message)
    crop = "the whole image" if card["crop_scale"] is None else f"{card['crop_scale']:g}x the face box"
    console.print(
        f"imported {escape(card['name'])} ({card['arch']}, crop {crop}, {card['input_size'][0]}x{card['input_size'][1]}) "
        f"into {escape(str(s.models_dir))}; ONNX vs PyTorch softmax max abs difference {card['max_abs_diff']:.2e}"
    )
    console.print("every imported liveness model is used together: POST /v1/liveness, or serve with --liveness passive")


@models_app.command("list")
def models_list(data: DataOpt = None, config: ConfigOpt = None) -> None:
    """Bundled and imported models."""
    from facegate.vision.embed import BUNDLED, imported_models

    s = _settings(config, data_dir=data)
    table = Table("name", "kind", "details")
    for n, spec in BUNDLED.items():
        table.add_row(n, "bundled", f"{spec.package}: {spec.resource}")
    for n, card in imported_models(s.models_dir).items():
        kind = "imported" if card.get("task", "embedding") == "embedding" else f"imported ({card['task']})"
        table.add_row(escape(n), kind, escape(f"{card.get('family', '?')} {card.get('arch', '?')}, from {card.get('source_file', '?')}"))
    Console().print(table)


@gallery_app.command("reembed")
def gallery_reembed(
    model: Annotated[str, typer.Option(help="The model to re-compute every face with.")],
    tta: Annotated[Optional[str], typer.Option(help="Flip TTA for the new vectors: none, concat, sum or normsum.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="The model's arithmetic for the new vectors: float or int8.")] = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Re-compute every enrolled face with another model (or precision), from the stored crops, in one transaction."""
    from facegate.vision.embed import FlipTTA, load_embedder
    from facegate.pipeline import reembed_gallery

    s = _settings(config, data_dir=data, model=model, tta=tta, precision=precision)
    gallery = _gallery(s)
    if gallery is None:
        console.print(f"[red]error:[/red] no gallery in {escape(describe(s))}")
        raise typer.Exit(1)
    try:
        embedder = FlipTTA(load_embedder(s.model, threads=s.inference_threads, models_dir=s.models_dir, precision=s.precision), s.tta)
        if embedder.model_id == gallery.model_id:
            console.print(f"the gallery is already made with {escape(embedder.model_id)}; nothing to do")
            return
        old, n = gallery.model_id, gallery.face_count
        with Progress(TextColumn("re-embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("", total=n)
            reembed_gallery(gallery, embedder, progress=lambda k: bar.advance(task, k))
    except FaceGateError as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None
    finally:
        gallery.close()
    console.print(f"re-embedded {n} faces: {escape(old)} -> {escape(embedder.model_id)}")
    console.print(f"serve with: facegate serve --model {escape(s.model)} --tta {s.tta}" + (f" (precision = {s.precision!r})" if s.precision != "float" else ""))


from .eval import calibrate_command, eval_command  # noqa: E402  (accuracy commands live in cli.eval)

app.command("eval")(eval_command)
app.command("calibrate")(calibrate_command)
from .gallery import migrate_command  # noqa: E402  (PostgreSQL gallery)

gallery_app.command("migrate")(migrate_command)
from .doctor import doctor_command  # noqa: E402  (is the install ready?)

app.command("doctor")(doctor_command)
from .transfer import import_command  # noqa: E402  (what GET /v1/export gave, enrolled here)

app.command("import")(import_command)


def main() -> None:
    audit.current_actor.set(audit.cli_actor())
    app()


if __name__ == "__main__":
    main()
