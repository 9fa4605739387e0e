"""Browser security headers on every answer, and the API docs (Swagger UI) served from local files
(issue 19, finding 8).

Every answer (pages, static files, JSON, errors, even an unhandled error's 500) carries:

- ``Content-Security-Policy``: ``default-src 'self'`` plus only what FaceGate's pages need: WebAssembly
  (``'wasm-unsafe-eval'``: compiling the wasm of MediaPipe Tasks' BlazeFace, no JavaScript eval), and
  ``'unsafe-eval'`` only on a page listed in ``MEDIAPIPE_PAGES``; photos shown are ``blob:``
  URLs and canvas snapshots ``data:`` images (as is the pages' empty icon); nothing inline, no plugin,
  no ``<base>``, forms post only here, and ``frame-ancestors 'none'`` (no framing: clickjacking).
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, and ``X-Frame-Options: DENY``
  for browsers that predate ``frame-ancestors``.

``/docs`` is Swagger UI from npm ``swagger-ui-dist`` and ``/redoc`` ReDoc's standalone bundle from npm
``redoc`` (both pinned in ``web/package.json``, installed by ``npm ci --prefix src/facegate/web`` beside
MediaPipe), served from ``/web/swagger`` and ``/web/redoc``: nothing is loaded from a CDN, they work
offline, and no foreign script runs on the origin whose local storage holds the API key. Swagger UI's
one inline script (FastAPI's start-up of it) is allowed by its SHA-256 alone, on that page. ReDoc
styles itself with ``<style>`` elements it writes at run time (styled-components), which no hash can
name: its page alone allows inline styles (``style-src 'unsafe-inline'``: styles, never scripts), and
its search index runs in a worker it starts from a ``blob:`` URL (``worker-src blob:``). Its sidebar
asks for Redocly's logo from ``cdn.redoc.ly``: the CSP refuses it (nothing is fetched; the browser
logs the refusal) and ReDoc then leaves the image out.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facegate import web

#: What FaceGate's pages need, no more (checked by tests/api/test_api_headers.py in a real Chromium).
CSP = (
    "default-src 'self'; "
    "script-src 'self' 'wasm-unsafe-eval'; "
    "img-src 'self' data: blob:; "
    "object-src 'none'; "
    "base-uri 'none'; "
    "form-action 'self'; "
    "frame-ancestors 'none'"
)
#: The pages that need ``'unsafe-eval'``: one that loads a legacy MediaPipe Solutions build (npm
#: ``@mediapipe/face_detection`` and the like), whose Emscripten glue (embind's ``createNamedFunction``)
#: builds functions with ``new Function``. BlazeFace now runs on MediaPipe Tasks (``web/static/detector.js``),
#: whose glue needs only ``'wasm-unsafe-eval'``, so BlazeFace needs it on no page; every script still comes from this server.
MEDIAPIPE_PAGES: frozenset[str] = frozenset()
#: The live page runs the active liveness challenge's face mesh (npm ``@mediapipe/face_mesh``, a legacy
#: Solutions build, ``web/static/challenge.js``): with 'wasm-unsafe-eval' alone it throws EvalError.
MEDIAPIPE_PAGES = MEDIAPIPE_PAGES | {"/"}
CSP_MEDIAPIPE = CSP.replace("'wasm-unsafe-eval'", "'unsafe-eval'")
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

SWAGGER_DIR = web.HERE / "node_modules" / "swagger-ui-dist"
SWAGGER_URL = "/web/swagger"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
REDOC_DIR = web.HERE / "node_modules" / "redoc" / "bundles"
REDOC_URL = "/web/redoc"
REDOC_FILES = ("redoc.standalone.js",)
#: ReDoc's page: its run-time ``<style>`` elements, and its search worker started from a ``blob:`` URL.
CSP_REDOC = CSP.replace("img-src", "style-src 'self' 'unsafe-inline'; worker-src blob:; img-src")


class SecurityHeadersMiddleware:
    """Adds the headers to every HTTP answer; a ``Content-Security-Policy`` a route set itself is kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                csp = CSP_MEDIAPIPE if scope["path"] in MEDIAPIPE_PAGES else CSP
                extra = [(b"content-security-policy", csp.encode())] + HEADERS
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def swagger_installed() -> bool:
    return all((SWAGGER_DIR / f).is_file() for f in SWAGGER_FILES)


def redoc_installed() -> bool:
    return all((REDOC_DIR / f).is_file() for f in REDOC_FILES)


def _redoc_page(app: FastAPI) -> str:
    """ReDoc's page: no Google Fonts, and Swagger UI's icon (FastAPI's default is an image from its website)."""
    return get_redoc_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API reference",
        redoc_js_url=f"{REDOC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{SWAGGER_URL}/favicon-32x32.png",
        with_google_fonts=False,
    ).body.decode()


def _docs_page(app: FastAPI) -> tuple[str, str]:
    """Swagger UI's page, and its CSP: ours, with its inline start-up script allowed by hash."""
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API docs",
        swagger_js_url=f"{SWAGGER_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_URL}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_URL}/favicon-32x32.png",
        # No validator badge: it is an image from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = page.body.decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    )
    csp = CSP.replace("script-src 'self'", f"script-src 'self' {hashes}")
    return html, csp


def _page_route(app: FastAPI, path: str, installed: bool, page, what: str) -> None:
    """``GET path``: the page (``page()`` gives its HTML and CSP, built once), or a 404 saying how to install it."""
    if installed:
        html, csp = page()

        @app.get(path, include_in_schema=False)
        async def served() -> HTMLResponse:
            return HTMLResponse(html, headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"})

        return
    detail = f"{what} is not installed: run `npm ci --prefix src/facegate/web` before `pip install .`; the schema itself is at /openapi.json"

    @app.get(path, include_in_schema=False)
    async def missing() -> JSONResponse:
        return JSONResponse({"detail": detail, "code": "assets_missing"}, status_code=404)


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from local files, and wrap the whole app (its error pages too) in the headers."""
    swagger, redoc = swagger_installed(), redoc_installed()
    if swagger:
        app.mount(SWAGGER_URL, StaticFiles(directory=SWAGGER_DIR), name="web-swagger")
    if redoc:
        app.mount(REDOC_URL, StaticFiles(directory=REDOC_DIR), name="web-redoc")
    _page_route(app, "/docs", swagger, lambda: _docs_page(app), "the API docs' Swagger UI")
    _page_route(app, "/redoc", redoc, lambda: (_redoc_page(app), CSP_REDOC), "the API reference's ReDoc")

    # Outside every middleware, ServerErrorMiddleware's 500s included: wrap the stack Starlette builds.
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeadersMiddleware(build())  # type: ignore[method-assign]
