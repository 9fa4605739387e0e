"""`facegate import EXPORT.json`: enrol what ``GET /v1/export`` gave, in this gallery, with the same vectors.

The file is read and checked whole before anything is written: its model must be the one this gallery
holds (and the one the settings serve with: a gallery of vectors its server cannot compare is refused),
every vector must be a finite unit vector of the model's dimension, every crop (``?crops=true``) a
JPEG, every name one enrolment takes, and no name may look like another's, in the file or in the
gallery (``--existing skip`` passes over those already enrolled instead). Then each person is enrolled
as an enrolment would store them (their faces' vectors, crops and source labels; new ids), and the
import is audited. People with no face (possible since single faces can be deleted) are not enrolled,
and said.

An export carries identity, not history: no event log, webhooks or delivery log (new ids here would
point old events at the wrong people; webhook secrets would travel in a file). ``facegate gallery
migrate`` moves those (docs/deployment.md, "What the export leaves out").
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from pydantic import ValidationError
from rich.markup import escape

from facegate.config import Settings
from facegate.errors import FaceGateError

from .common import ConfigOpt, DataOpt, console, fail
from .common import settings as _settings

#: A stored vector is a unit vector; one further off than this was not made by a FaceGate model.
NORM_TOLERANCE = 1e-3


class ExportFileError(FaceGateError):
    """The export file cannot be imported as it is (exit 2: bad input)."""

    code = "invalid_export"


@dataclass(frozen=True)
class Incoming:
    """A person of the file, checked: their name and faces ready for ``add_person``."""

    name: str
    faces: list  # list[NewFace]
    crops: int


def read_export(path: Path):
    """The file as a ``GalleryExport`` (the schema ``GET /v1/export`` answers with), or ``ExportFileError``."""
    from facegate.api.schemas import GalleryExport

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExportFileError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return GalleryExport.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "the file"
        raise ExportFileError(f"{path} is not a FaceGate export (GET /v1/export): {where}: {first.get('msg', '')}") from None


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ExportFileError(f"{what} is not base64") from None


def check_people(export, max_name_length: int) -> tuple[list[Incoming], list[str]]:
    """Every person of ``export`` checked (``ExportFileError`` on the first problem), and the names of
    those with no face (not enrolled)."""
    from facegate.gallery.names import name_key
    from facegate.gallery.sqlite import NewFace, clean_name

    if export.dim < 1:
        raise ExportFileError(f"the export's dimension is {export.dim}")
    out: list[Incoming] = []
    empty: list[str] = []
    seen: dict[str, str] = {}
    for i, p in enumerate(export.people):
        try:
            name = clean_name(p.name, max_name_length)
        except FaceGateError as exc:
            raise ExportFileError(f"person {i} (id {p.id}): {exc.message}") from None
        key = name_key(name)
        if key in seen:
            raise ExportFileError(f"person {i} (id {p.id}): {name!r} looks like {seen[key]!r}, also in the file")
        seen[key] = name
        if not p.faces:
            empty.append(name)
            continue
        faces, crops = [], 0
        for j, f in enumerate(p.faces):
            what = f"person {i} (id {p.id}), face {j} (id {f.id})"
            raw = _b64(f.embedding, f"{what}: embedding")
            if len(raw) != 4 * export.dim:
                raise ExportFileError(f"{what}: embedding has {len(raw)} bytes; {export.dim} float32 values are {4 * export.dim}")
            v = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(v)) or abs(float(np.linalg.norm(v)) - 1.0) > NORM_TOLERANCE:
                raise ExportFileError(f"{what}: embedding is not a finite unit vector")
            crop = None
            if f.crop is not None:
                crop = _b64(f.crop, f"{what}: crop")
                if not crop.startswith(b"\xff\xd8"):
                    raise ExportFileError(f"{what}: crop is not a JPEG")
                crops += 1
            faces.append(NewFace(v, crop, f.source))
        out.append(Incoming(name, faces, crops))
    return out, empty


def _taken(g, name: str) -> bool:
    """The gallery's own check, as an enrolment makes it: a name that looks like one enrolled is taken."""
    from facegate.errors import PersonExistsError

    try:
        g.ensure_name_free(name)
    except PersonExistsError:
        return True
    return False


def _active_model(settings: Settings) -> tuple[str, int]:
    """The model id and dimension a server with these settings serves with (its model loaded once)."""
    from facegate.vision.embed import FlipTTA, load_embedder

    emb = FlipTTA(load_embedder(settings.model, threads=1, models_dir=settings.models_dir, precision=settings.precision), settings.tta)
    return emb.model_id, emb.dim


def import_command(
    export_file: Annotated[Path, typer.Argument(metavar="EXPORT.json", help="What GET /v1/export answered (with ?crops=true to keep the crops).")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    model: Annotated[Optional[str], typer.Option(help="Embedding model the gallery is served with (default: the settings').")] = None,
    tta: Annotated[Optional[str], typer.Option(help="Flip TTA it is served with: none, concat, sum or normsum.")] = None,
    gallery: Annotated[Optional[str], typer.Option(help="postgresql://... to import into a PostgreSQL gallery.")] = None,
    existing: Annotated[str, typer.Option(help="A name already enrolled here: fail (nothing is imported), or skip that person.")] = "fail",
) -> None:
    """Enrol the people of an export (GET /v1/export) with the same vectors, crops and source labels."""
    from facegate.gallery.backends import describe, open_existing_gallery, open_gallery
    from facegate.security import audit

    if existing not in ("fail", "skip"):
        fail("--existing must be fail or skip", 2)
    s = _settings(config, data_dir=data, model=model, tta=tta, gallery=gallery)
    try:
        export = read_export(export_file)
        people, empty = check_people(export, s.max_name_length)
    except FaceGateError as exc:
        fail(exc.message, 2)
    try:
        serving, dim = _active_model(s)
    except FaceGateError as exc:
        fail(exc.message)
    if export.model != serving or export.dim != dim:
        fail(
            f"the export holds vectors of {export.model} ({export.dim}-d), but this gallery is served with {serving} ({dim}-d): "
            f"vectors of different models cannot be compared; import with --model/--tta naming the export's model, "
            f"or enrol the photos again"
        )
    where = describe(s)
    try:
        current = open_existing_gallery(s)
    except (FaceGateError, ConnectionError) as exc:
        fail(getattr(exc, "message", str(exc)))
    if current is not None:
        held = current.model_id
        current.close()
        if held != export.model:
            fail(f"the gallery in {where} holds vectors of {held}, the export {export.model}: they cannot be mixed")
    try:
        g = open_gallery(s, export.model, export.dim)
    except (FaceGateError, ConnectionError) as exc:
        fail(getattr(exc, "message", str(exc)))
    try:
        taken = [p for p in people if _taken(g, p.name)]
        if taken and existing == "fail":
            names = ", ".join(repr(p.name) for p in taken[:5]) + (" ..." if len(taken) > 5 else "")
            fail(f"{len(taken)} of the export's people are already enrolled in {where} ({names}); nothing imported "
                 "(--existing skip passes over them)")
        todo = [p for p in people if p not in taken]
        done = faces = crops = 0
        for p in todo:
            try:
                g.add_person(p.name, p.faces, export.model, s.max_name_length)
            except FaceGateError as exc:  # enrolled meanwhile by another process
                console.print(f"[yellow]skipped[/yellow] {escape(p.name)}: {escape(exc.message)}")
                continue
            done, faces, crops = done + 1, faces + len(p.faces), crops + p.crops
        g.record(audit.IMPORT, None, people=done, faces=faces, crops=crops)
    finally:
        g.close()
    for name in empty:
        console.print(f"[yellow]not enrolled[/yellow] {escape(name)}: no face in the export")
    print(
        f"imported {done} people, {faces} faces ({crops} with crops) from {export_file} into {where}"
        + (f"; {len(taken)} already enrolled, skipped" if taken else "")
        + (f"; {len(empty)} without a face, not enrolled" if empty else "")
    )
    if crops < faces:
        print("faces without a crop cannot be re-embedded with another model later (export with ?crops=true to keep them)")
