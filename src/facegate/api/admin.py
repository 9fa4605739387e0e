"""Administration: the audit log, and exporting the gallery (itself an audited action)."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Query, Request

from facegate.security import audit
from .deps import PipelineDep, WorkerDep
from .schemas import AuditEntryOut, AuditLog, ExportFace, ExportPerson, GalleryExport

router = APIRouter(prefix="/v1", tags=["administration"])


@router.get("/audit", response_model=AuditLog)
async def audit_log(
    request: Request,
    pipeline: PipelineDep,
    worker: WorkerDep,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(None, ge=1, le=2**63 - 1, description="Entries older than this id."),
) -> AuditLog:
    """Who enrolled, deleted or exported what, and when; newest first. Holds no names or images.
    Crop reads, listings and failed authentication are counted: one entry per actor and minute, ``count``."""

    def work():
        tally = getattr(request.app.state, "tally", None)
        if tally is not None:  # the counts so far first: the log answered is up to date
            audit.write(pipeline.gallery, tally.drain())
        return pipeline.gallery.audit_log(limit, before)

    entries = await worker.run(work)
    return AuditLog(
        entries=[AuditEntryOut(**e.__dict__) for e in entries],
        next_before=entries[-1].id if len(entries) == limit else None,
    )


@router.get("/export", response_model=GalleryExport)
async def export(
    pipeline: PipelineDep,
    worker: WorkerDep,
    crops: bool = Query(False, description="Add each face's aligned crop (JPEG, base64): an import can then be re-embedded."),
) -> GalleryExport:
    """Every person with their face embeddings (and, with ``crops=true``, their crops), for a backup or a
    move: ``facegate import FILE`` enrols them in another gallery."""

    def work():
        g = pipeline.gallery
        data = g.export()
        kept = dict(g.stored_crops()) if crops else {}
        extra = {"crops": True} if crops else {}
        g.record(audit.EXPORT, None, people=len(data), faces=sum(p.face_count for p, _ in data), **extra)
        return g.model_id, g.dim, data, kept

    model, dim, data, kept = await worker.run(work)
    return GalleryExport(
        model=model,
        dim=dim,
        people=[
            ExportPerson(
                id=p.id,
                name=p.name,
                created_at=p.created_at,
                faces=[
                    ExportFace(
                        id=f,
                        source=s,
                        created_at=c,
                        embedding=base64.b64encode(v).decode(),
                        crop=base64.b64encode(kept[f]).decode() if kept.get(f) else None,
                    )
                    for f, s, c, v in faces
                ],
            )
            for p, faces in data
        ],
    )
