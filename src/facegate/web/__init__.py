"""The web client: static pages that run BlazeFace in the browser and call the FaceGate API.

The pages (``static/``) are plain HTML and ES modules, no build step. MediaPipe's web build of
BlazeFace (npm ``@mediapipe/face_detection``, pinned in ``package.json``/``package-lock.json``) is
installed by ``npm ci`` into ``node_modules/`` beside this file and served from here, never from a
CDN, because deployments are often offline. This module knows nothing of models.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: Where ``npm ci --prefix src/facegate/web`` puts the MediaPipe files (inside the Python package).
MEDIAPIPE_DIR = HERE / "node_modules" / "@mediapipe" / "face_detection"
#: The one file whose absence means ``npm ci`` was not run before ``pip install``.
MEDIAPIPE_ENTRY = "face_detection.js"
STATIC_URL = "/web/static"
MEDIAPIPE_URL = "/web/mediapipe"

PAGES = {"/": "index.html", "/register": "register.html", "/gallery": "gallery.html"}

router = APIRouter(include_in_schema=False)


def mediapipe_installed() -> bool:
    """Whether the MediaPipe web assets are present (``npm ci`` ran before the install)."""
    return (MEDIAPIPE_DIR / MEDIAPIPE_ENTRY).is_file()


def _page(filename: str):
    async def page() -> FileResponse:
        # no-cache: a page and its modules are revalidated, so an upgraded server is never half-old.
        return FileResponse(STATIC_DIR / filename, media_type="text/html", headers={"Cache-Control": "no-cache"})

    page.__name__ = f"page_{filename.split('.')[0]}"
    return page


for _path, _file in PAGES.items():
    router.add_api_route(_path, _page(_file), methods=["GET"])


@router.get(MEDIAPIPE_URL + "/{name:path}")
async def mediapipe_missing(name: str) -> JSONResponse:
    """Answers in place of the assets when they are not installed, saying how to install them."""
    return JSONResponse(
        {
            "detail": "the MediaPipe web assets are not installed: run `npm ci --prefix src/facegate/web` "
            "before `pip install .` (see the README's set-up command)",
            "code": "assets_missing",
        },
        status_code=404,
    )


def mount(app: FastAPI) -> None:
    """Serve the pages, their scripts and the MediaPipe assets from ``app``."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="web-static")
    if mediapipe_installed():
        # The .wasm, .tflite and .binarypb files are fetched by the MediaPipe loader via locateFile.
        app.mount(MEDIAPIPE_URL, StaticFiles(directory=MEDIAPIPE_DIR), name="web-mediapipe")
    app.include_router(router)
