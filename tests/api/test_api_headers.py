"""Issue 19, finding 8: browser security headers on every answer, and /docs from local files.

A real `facegate serve` on loopback; the pages and Swagger UI are loaded in a real headless Chromium
(Debian's /usr/bin/chromium, driven by Playwright, as tests/web/test_web_e2e.py does) under the
server's Content-Security-Policy, and the console must show no CSP violation."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from facegate import web
from facegate.api import headers

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
#: The one foreign file a FaceGate page asks for: ReDoc 2.5's sidebar hard-codes Redocly's logo.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
EXPECTED = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def assert_secured(r, mediapipe_page: bool = False) -> None:
    """The headers; 'unsafe-eval' only on a page that runs a legacy MediaPipe build (its glue calls new Function)."""
    for name, value in EXPECTED.items():
        assert r.headers.get(name) == value, (r.request.url, r.status_code, name, r.headers.get(name))
    csp = r.headers.get("content-security-policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives.get("default-src") == ["'self'"], (r.request.url, csp)
    assert directives.get("frame-ancestors") == ["'none'"], (r.request.url, csp)
    assert "'unsafe-inline'" not in directives["script-src"] and "*" not in csp and "http" not in csp, csp
    # Inline styles on ReDoc's page alone (styled-components writes its <style> elements at run time)
    assert ("'unsafe-inline'" in csp) == (r.request.url.path == "/redoc"), (r.request.url, csp)
    assert ("'unsafe-eval'" in directives["script-src"]) == mediapipe_page, (r.request.url, csp)


@pytest.fixture(scope="module")
def enrolled(server, astronaut_payloads):
    """The module's server (open: no key, loopback) with one person enrolled, so the gallery has crops."""
    with server.client() as c:
        r = c.post("/register", json=astronaut_payloads[0])
        assert r.status_code == 200, r.text
    return server


def test_every_kind_of_answer_carries_the_headers(enrolled):
    with enrolled.client() as c:
        answers = {
            "page": c.get("/"),
            "register page": c.get("/register"),
            "gallery page": c.get("/gallery"),
            "static file": c.get("/web/static/app.css"),
            "MediaPipe asset": c.get(f"{web.MEDIAPIPE_URL}/{web.MEDIAPIPE_ENTRY}"),
            "JSON": c.get("/healthz"),
            "listing": c.get("/v1/people"),
            "schema": c.get("/openapi.json"),
            "docs": c.get("/docs"),
            "docs asset": c.get(f"{headers.SWAGGER_URL}/swagger-ui.css"),
            "redoc": c.get("/redoc"),
            "redoc asset": c.get(f"{headers.REDOC_URL}/redoc.standalone.js"),
            "404": c.get("/no/such/thing"),
            "422": c.post("/v1/identify", content=b"{", headers={"Content-Type": "application/json"}),
            "415": c.post("/v1/identify", content=b"x", headers={"Content-Type": "text/plain"}),
            "403 foreign origin": c.post("/v1/people", json={}, headers={"Origin": "http://attacker.example"}),
            "400 foreign host": c.get("/healthz", headers={"Host": "attacker.example"}),
        }
    statuses = {k: r.status_code for k, r in answers.items()}
    assert statuses == {
        "page": 200, "register page": 200, "gallery page": 200, "static file": 200, "MediaPipe asset": 200, "JSON": 200, "listing": 200,
        "schema": 200, "docs": 200, "docs asset": 200, "redoc": 200, "redoc asset": 200, "404": 404, "422": 422, "415": 415,
        "403 foreign origin": 403, "400 foreign host": 400,
    }
    for kind, r in answers.items():
        assert_secured(r, mediapipe_page=r.request.url.path in headers.MEDIAPIPE_PAGES)


def test_an_unhandled_error_500_carries_them_too():
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    headers.install(app)
    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500
    assert_secured(r)


@pytest.mark.parametrize("path, marker", [("/docs", "SwaggerUIBundle"), ("/redoc", "<redoc spec-url=")])
def test_docs_and_redoc_load_only_this_servers_files(enrolled, path, marker):
    with enrolled.client() as c:
        r = c.get(path)
        assert r.status_code == 200 and marker in r.text
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", r.text)
        local = (headers.SWAGGER_URL + "/", headers.REDOC_URL + "/")
        assert refs and all(u.startswith(local) for u in refs), refs
        assert not re.search(r"https?://|//[a-z]", r.text, re.I), f"an external host in {path}"
        for u in refs:
            assert c.get(u).status_code == 200, u


@pytest.mark.parametrize("package, folder", [("swagger-ui-dist", headers.SWAGGER_DIR), ("redoc", headers.REDOC_DIR.parent)])
def test_only_the_pinned_docs_packages_are_served(package, folder):
    """The version package.json names, exactly (npm ci installs what the lock file says)."""
    import json

    pinned = json.loads((web.HERE / "package.json").read_text())["dependencies"][package]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), pinned
    assert json.loads((folder / "package.json").read_text())["version"] == pinned


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_chromium_runs_the_pages_and_docs_under_the_csp_without_a_violation(enrolled, tmp_path, astronaut_frame):
    from playwright.sync_api import sync_playwright

    assert web.mediapipe_installed() and headers.swagger_installed(), "run `npm ci --prefix src/facegate/web`"
    y4m = write_y4m(tmp_path / "face.y4m", [astronaut_frame] * 10)
    console: list[str] = []
    errors: list[str] = []
    requests: list[str] = []
    refused: list[str] = []  # requests the CSP stopped before they left the browser
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*FLAGS, f"--use-file-for-fake-video-capture={y4m}"]
        )
        try:
            ctx = browser.new_context(viewport={"width": 1000, "height": 900})
            ctx.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            ctx.on("request", lambda r: requests.append(r.url))
            ctx.on("requestfailed", lambda r: refused.append(r.url) if "csp" in (r.failure or "").lower() else None)
            ctx.on("weberror", lambda e: errors.append(str(e.error)))
            # Violations a script catches (MediaPipe turns a refused eval into "Face detection unavailable")
            # never reach the console: the document's securitypolicyviolation events are kept as well.
            ctx.add_init_script(
                "window.__csp = []; document.addEventListener('securitypolicyviolation',"
                " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            page = ctx.new_page()
            page.set_default_timeout(90_000)
            seen: list[str] = []
            keep = lambda: seen.extend(page.evaluate("() => window.__csp"))  # noqa: E731

            # The live page: MediaPipe (wasm, WebGL) finds the face, the server names her.
            page.goto(enrolled.url + "/")
            page.wait_for_function("() => facegate.ready")
            page.wait_for_function("() => facegate.stats.predictions >= 2")
            assert page.evaluate("() => facegate.stats.lastResult.user_name") == "Eileen Collins"
            keep()
            page.goto(enrolled.url + "/register")
            page.wait_for_function("() => facegate.ready")
            keep()
            page.goto(enrolled.url + "/gallery")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.thumbs img')].filter(i => i.complete && i.naturalWidth === 112).length === 3"
            )
            keep()
            # Swagger UI, from this server only, renders the API.
            page.goto(enrolled.url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)
            assert page.locator(".opblock").count() > 10
            page.wait_for_timeout(500)
            keep()
            # ReDoc, from this server only, renders the API, and its search (a blob: worker) finds a route.
            page.goto(enrolled.url + "/redoc")
            page.wait_for_selector("[data-section-id^='operation/']", timeout=60_000)
            assert page.locator("[data-section-id^='operation/']").count() > 10
            page.fill("input[placeholder='Search...']", "predict")
            page.wait_for_function(
                "() => /predict/i.test(document.querySelector(\"[data-role='search:results']\")?.innerText || '')", timeout=30_000
            )
            # Its sidebar's one foreign file, Redocly's logo, is refused by the CSP (never fetched; ReDoc then hides it).
            assert page.evaluate("() => window.__csp") == [f"img-src {REDOCLY_LOGO}"]
            # A check that the check works: an inline script is refused and says so in the console.
            page.goto(enrolled.url + "/web/static/app.css")
            page.evaluate("() => { const s = document.createElement('script'); s.textContent = '1'; document.head.appendChild(s); }")
            page.wait_for_timeout(300)
            assert page.evaluate("() => window.__csp") == ["script-src-elem inline"]
        finally:
            browser.close()
    violations = [m for m in console if "Content Security Policy" in m and REDOCLY_LOGO not in m]
    assert len(violations) == 1 and "inline" in violations[0], violations  # the deliberate one only
    assert seen == [], seen
    own = [u for u in requests if not u.startswith(("data:", "blob:"))]
    foreign = [u for u in own if not u.startswith(enrolled.url)]
    assert own and foreign == [REDOCLY_LOGO] and refused == [REDOCLY_LOGO], (foreign, refused)  # asked, never fetched
    assert not errors, errors


def test_the_package_carries_swagger_ui_and_redoc():
    """`pip install .` ships the files /docs and /redoc serve (pyproject's package-data for facegate.web)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["facegate.web"]
    shipped = [f"node_modules/swagger-ui-dist/{n}" for n in headers.SWAGGER_FILES]
    shipped += [f"node_modules/redoc/bundles/{n}" for n in headers.REDOC_FILES]
    for rel in shipped:
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
