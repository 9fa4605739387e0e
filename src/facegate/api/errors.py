"""The one place where domain errors become HTTP answers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from facegate import errors as e

log = logging.getLogger(__name__)

STATUS: dict[type[e.FaceGateError], int] = {
    e.InvalidImageError: 422,
    e.ImageTooLargeError: 413,
    e.NoFaceError: 422,
    e.PoorQualityError: 422,
    e.InvalidNameError: 422,
    e.PersonExistsError: 409,
    e.LooksLikeError: 409,
    e.PersonNotFoundError: 404,
    e.FaceNotFoundError: 404,
    e.ModelMismatchError: 409,
    e.ModelUnavailableError: 503,
    e.ReembedError: 409,
    e.BusyError: 503,
    e.DeadlineError: 503,
    e.EventNotFoundError: 404,
    e.WebhookNotFoundError: 404,
    e.InvalidWebhookError: 422,
    e.ChallengeNotFoundError: 404,
    e.ChallengeUsedError: 409,
    e.ChallengeExpiredError: 410,
    e.ChallengeRequiredError: 403,
    e.CameraNotFoundError: 404,
    e.NoFrameError: 503,
}


#: Seconds a client should wait before retrying a 503.
RETRY_AFTER_S = 1


def error_response(status: int, code: str, detail: str, field: str | None = None, **extra) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"detail": detail, "code": code, "field": field, **extra}, status_code=status, headers=headers)


def _status_for(exc: e.FaceGateError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(e.FaceGateError)
    async def _domain(_: Request, exc: e.FaceGateError) -> JSONResponse:
        return error_response(_status_for(exc), exc.code, exc.message, exc.field, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back: it may be megabytes of base64, or a face.
        errs = [{"field": _field_of(tuple(er.get("loc", ()))), "message": er.get("msg", ""), "type": er.get("type", "")} for er in exc.errors()]
        summary = "; ".join(f"{x['field']}: {x['message']}" for x in errs[:5]) or "invalid request"
        first = errs[0]["field"] if errs else None
        return error_response(422, "invalid_request", summary, first, errors=errs)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
