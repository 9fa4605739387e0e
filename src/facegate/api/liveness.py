"""``POST /v1/liveness``: the passive liveness check of the main face in one image.

The image comes as the other ``/v1`` image routes take it: a multipart file upload ``image``, or
JSON ``{"image": "<base64>"}``. The answer says whether the face is live, the fused score and each
imported model's; 503 ``liveness_unavailable`` when no liveness model is imported. A client key may
call it (``api.auth``).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from facegate.vision.imageio import decode_image
from facegate.vision.liveness import NO_MODEL, LivenessUnavailableError
from .deps import PipelineDep, WorkerDep
from .schemas import Box, ErrorBody, IdentifyJSON, LivenessOut
from .v1 import _FILE, _body_doc, _read

router = APIRouter(prefix="/v1", tags=["v1"])


class LivenessResponse(LivenessOut):
    status: Literal["live", "spoof"] = Field(..., description='"spoof": judged a print or a screen held to the camera.')
    box: Box | None = Field(None, description="The main face the check was run on.")


@router.post(
    "/liveness",
    response_model=LivenessResponse,
    responses={code: {"model": ErrorBody} for code in (413, 422, 503)},
    openapi_extra=_body_doc(IdentifyJSON, {"image": _FILE}),
)
async def liveness(request: Request, pipeline: PipelineDep, worker: WorkerDep) -> LivenessResponse:
    """Is the main face of this image a live person, or a print or a screen held to the camera?

    The passive check (imported MiniFASNet models, their softmaxes summed; live when the live class
    wins). Good for live camera frames of a face that fills a good part of the frame; small,
    compressed photos of real people often look like prints to it. 503 when no liveness model is imported."""
    if pipeline.liveness is None:  # before the body is read or decoded
        raise LivenessUnavailableError(NO_MODEL)
    _, images = await _read(request, IdentifyJSON, ("image",))
    label, data = images[0]

    def work():
        image = decode_image(data, pipeline.limits, field=label)
        lf = pipeline.locate(image, field=label)
        return lf, pipeline.passive_check(image, [lf])[0]

    lf, result = await worker.run(work)
    box = lf.box
    return LivenessResponse(
        **result.to_dict(),
        status=result.status,
        box=Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3]) if box else None,
    )
