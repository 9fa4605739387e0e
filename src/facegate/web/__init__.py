"""The web client: static pages that run BlazeFace in the browser and call the FaceGate API.

The pages (``static/``) are plain HTML and ES modules, no build step. MediaPipe Tasks for the web
(npm ``@mediapipe/tasks-vision``, pinned in ``package.json``/``package-lock.json``: its FaceDetector
on WebAssembly, or WebGL where that is faster) is installed by ``npm ci`` into ``node_modules/``
beside this file and served from here, never from a CDN, because deployments are often offline.
The BlazeFace short-range model it runs is the one the ``mediapipe`` Python package ships (a
dependency already), served as a file: this module knows nothing else of models.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: Where ``npm ci --prefix src/facegate/web`` puts MediaPipe Tasks (inside the Python package).
MEDIAPIPE_DIR = HERE / "node_modules" / "@mediapipe" / "tasks-vision"
#: The one file whose absence means ``npm ci`` was not run before ``pip install``.
MEDIAPIPE_ENTRY = "vision_bundle.mjs"
#: BlazeFace short range as the ``mediapipe`` wheel ships it; MediaPipe Tasks' FaceDetector takes it
#: as is (no TFLite metadata needed: the detector graph sets BlazeFace's anchors and [-1, 1] input).
BLAZEFACE_FILE = "face_detection_short_range.tflite"
BLAZEFACE_URL = "/web/models/" + BLAZEFACE_FILE
STATIC_URL = "/web/static"
#: MediaPipe's face mesh (npm ``@mediapipe/face_mesh``): the live page's active liveness challenge (challenge.js).
FACE_MESH_DIR = HERE / "node_modules" / "@mediapipe" / "face_mesh"
FACE_MESH_URL = "/web/facemesh"
MEDIAPIPE_URL = "/web/mediapipe"

PAGES = {"/": "index.html", "/register": "register.html", "/gallery": "gallery.html", "/cameras": "cameras.html"}
PAGES["/events"] = "events.html"  # the event log, live (events.js; issue 21)

router = APIRouter(include_in_schema=False)


def mediapipe_installed() -> bool:
    """Whether the MediaPipe web assets are present (``npm ci`` ran before the install)."""
    return (MEDIAPIPE_DIR / MEDIAPIPE_ENTRY).is_file()


def blazeface_path() -> Path | None:
    """The installed ``mediapipe`` package's BlazeFace short-range model (found without importing it)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "modules" / "face_detection" / BLAZEFACE_FILE
    return path if path.is_file() else None


def _page(filename: str):
    async def page() -> FileResponse:
        # no-cache: a page and its modules are revalidated, so an upgraded server is never half-old.
        return FileResponse(STATIC_DIR / filename, media_type="text/html", headers={"Cache-Control": "no-cache"})

    page.__name__ = f"page_{filename.split('.')[0]}"
    return page


for _path, _file in PAGES.items():
    router.add_api_route(_path, _page(_file), methods=["GET"])


@router.get(BLAZEFACE_URL)
async def blazeface_model():
    """The model the pages' detector runs, from the installed ``mediapipe`` package."""
    path = blazeface_path()
    if path is None:
        return JSONResponse(
            {"detail": "the mediapipe package (a FaceGate dependency) is not installed: BlazeFace's model is missing",
             "code": "assets_missing"},
            status_code=404,
        )
    # It changes only with the mediapipe package: revalidated (ETag) rather than downloaded again.
    return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": "no-cache"})


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
        # vision_bundle.mjs, and the wasm/ files its FilesetResolver loads (see detector.js).
        app.mount(MEDIAPIPE_URL, StaticFiles(directory=MEDIAPIPE_DIR), name="web-mediapipe")
    if (FACE_MESH_DIR / "face_mesh.js").is_file():  # its .wasm, .data and .binarypb are fetched via locateFile
        app.mount(FACE_MESH_URL, StaticFiles(directory=FACE_MESH_DIR), name="web-facemesh")
    app.include_router(router)
