"""The web client in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
against a real `facegate serve` on loopback. The camera is Chromium's fake capture device fed a
.y4m video that the test builds from real photos of two people.

Screenshots go to tests/web/artifacts/ (git-ignored); the live page and the gallery are also saved,
small, as docs/img/live.png and docs/img/gallery.png for the README and the docs. The in-browser
BlazeFace time per frame is printed (run with -s to see it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MetricsPoller

from facegate import web

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
NAME = "Eileen Collins"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install -y chromium chromium-driver; .ci/run does it)"
)


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """A YUV4MPEG2 (4:2:0) file, what Chromium's fake camera plays (in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


class Browser:
    """Chromium with a fake camera showing ``y4m``; every request any page makes is recorded."""

    def __init__(self, y4m: Path) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        # Playwright gives every launch a fresh temporary profile (user data dir).
        self.browser = self._pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*FLAGS, f"--use-file-for-fake-video-capture={y4m}"]
        )
        self.requests: list[str] = []
        self.errors: list[str] = []

    def page(self, **context):
        ctx = self.browser.new_context(**(context or PHONE))
        page = ctx.new_page()
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.set_default_timeout(90_000)
        return page

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


def detection_stats(page) -> dict:
    return page.evaluate(
        "() => ({mean: facegate.stats.meanDetectMs, median: facegate.stats.medianDetectMs, n: facegate.stats.detectMs.length,"
        " predictions: facegate.stats.predictions})"
    )


def fits_width(page) -> bool:
    """A phone-sized page must not scroll sideways."""
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def doc_shot(page, name: str) -> Path:
    """The page down to its last visible element, at CSS pixels (390 px wide), as a small 96-colour PNG
    in docs/img/ (the README's and the docs' screenshots)."""
    from PIL import Image

    DOC_IMAGES.mkdir(parents=True, exist_ok=True)
    path = DOC_IMAGES / name
    raw = ARTIFACTS / f"doc-{name}"
    ARTIFACTS.mkdir(exist_ok=True)
    bottom = page.evaluate(
        "() => Math.ceil(Math.max(0, ...[...document.querySelectorAll('main > *')]"
        ".filter((e) => e.offsetParent !== null).map((e) => e.getBoundingClientRect().bottom)))"
    )
    view = page.viewport_size
    height = min(view["height"], bottom + 16) if bottom > 0 else view["height"]
    page.screenshot(path=str(raw), scale="css", clip={"x": 0, "y": 0, "width": view["width"], "height": height})
    with Image.open(raw) as im:
        im.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"screenshot for the docs: {path}")
    return path


@pytest.fixture(scope="module", autouse=True)
def _assets_installed():
    assert web.mediapipe_installed(), (
        f"MediaPipe web assets missing at {web.MEDIAPIPE_DIR}: run `npm ci --prefix src/facegate/web` (the README's set-up does)"
    )


@needs_chromium
def test_register_in_browser_then_live_page_names_her_and_a_stranger_is_unknown(
    start_server, tmp_path, astronaut_frame, other_frame
):
    # Chromium shares the 2 cores with the server here, so one /register can take over a second; a
    # generous latency budget keeps admission control (tested elsewhere) from refusing this test's calls.
    server = start_server(None, env={"FACEGATE_LATENCY_BUDGET_S": "10"})
    figures = {}

    # ---- the enrolled person's camera: register page, then live page
    b = Browser(write_y4m(tmp_path / "astronaut.y4m", [astronaut_frame] * 10))
    try:
        page = b.page()
        page.goto(server.url + "/register?tick=400")
        page.wait_for_function("() => facegate.ready")
        page.wait_for_function("() => document.querySelector('#guidance').textContent.startsWith('Good')")
        page.fill("#name", NAME)
        # Every number the countdown shows, recorded as it changes: a 400 ms step can fall between two
        # polls while the page is busy (its first seconds time detection on the CPU and on WebGL).
        page.evaluate(
            """() => { const el = document.querySelector('#countdown'); window.countdownSeen = [];
                new MutationObserver(() => window.countdownSeen.push(el.textContent))
                  .observe(el, {childList: true, characterData: true, subtree: true}); }"""
        )
        page.click("#start")
        page.wait_for_selector("#message.ok")
        assert page.evaluate("() => window.countdownSeen")[:3] == ["3", "2", "1"]  # the countdown showed
        message = page.inner_text("#message")
        assert f"Registered {NAME}" in message and "3 faces" in message, message
        assert page.locator("#shots img").count() == 3
        assert fits_width(page)
        shot(page, "register-page.png")
        figures["register"] = detection_stats(page)

        # The server's refusal, in its own words: the name is taken.
        page.click("#start")
        page.wait_for_selector("#message.error")
        refusal = page.inner_text("#message")
        assert "409" in refusal and "Not registered" in refusal, refusal
        assert page.locator("#countdown").is_hidden()

        with server.client() as http:
            people = http.get("/v1/people").json()["people"]
        assert [(p["name"], p["face_count"]) for p in people] == [(NAME, 3)]
        page.context.close()  # its detection loop would share the cores with the live page's

        live = b.page()
        with MetricsPoller(server.url) as poller:
            live.goto(server.url + "/")
            live.wait_for_function(f"() => document.querySelector('#result').textContent.includes({NAME!r})")
            live.wait_for_function("() => facegate.stats.predictions >= 8")
        live.wait_for_timeout(300)  # a frame or two, so the overlay carries the latest answer
        result = live.evaluate("() => facegate.stats.lastResult")
        assert result["user_name"] == NAME and result["status"] == "recognized", result
        assert fits_width(live)
        shot(live, "live-page-recognized.png")
        doc_shot(live, "live.png")
        figures["live, enrolled person"] = detection_stats(live)
        most = poller.most_within(1.0)
        print(f"\nlive page: most /predict the server answered within any second: {most}")
        assert most <= 2
    finally:
        b.close()
    own = [u for u in b.requests if not u.startswith(("data:", "blob:"))]
    assert own and all(u.startswith(server.url) for u in own), [u for u in own if not u.startswith(server.url)]
    assert any(u.endswith(".wasm") for u in own) and any(u.endswith(".tflite") for u in own), "BlazeFace came from elsewhere"
    assert not b.errors, b.errors

    # ---- somebody else's camera: unknown, plainly; then photo mode and the gallery
    b = Browser(write_y4m(tmp_path / "stranger.y4m", [other_frame] * 10))
    try:
        live = b.page()
        live.goto(server.url + "/")
        live.wait_for_function("() => facegate.stats.predictions >= 4")
        text = live.inner_text("#result")
        answers = live.evaluate("() => facegate.stats.lastResult")
        assert text.startswith("unknown") and NAME not in text, text
        assert answers["user_name"] == "unknown", answers
        shot(live, "live-page-unknown.png")
        figures["live, stranger"] = detection_stats(live)

        # Photo mode: both people in one picture; each face is named by the server.
        both = np.hstack([astronaut_frame, other_frame])
        photo = tmp_path / "two-people.jpg"
        cv2.imwrite(str(photo), both[:, :, ::-1])
        live.click("#mode-image")
        live.set_input_files("#file", str(photo))
        live.wait_for_function("() => document.querySelectorAll('#photo-results li').length === 2")
        items = live.locator("#photo-results li").all_inner_texts()
        assert any(NAME in t for t in items) and any("unknown" in t for t in items), items
        assert fits_width(live)
        shot(live, "live-page-photo-mode.png")
        live.context.close()

        gallery = b.page()
        gallery.goto(server.url + "/gallery")
        gallery.wait_for_function("() => facegate.ready")
        assert gallery.inner_text(".person-name") == NAME
        gallery.wait_for_function(
            "() => [...document.querySelectorAll('.thumbs img')].filter(i => i.complete && i.naturalWidth === 112).length === 3"
        )
        shot(gallery, "gallery-page.png")
        doc_shot(gallery, "gallery.png")
        dialogs = []
        gallery.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
        gallery.click(".person button.danger")
        gallery.wait_for_selector("#message.ok")
        assert dialogs and NAME in dialogs[0]
        assert gallery.locator(".person").count() == 0
        with server.client() as http:
            assert http.get("/v1/people").json()["people"] == []
    finally:
        b.close()
    assert not b.errors, b.errors

    print("\nin-browser BlazeFace (MediaPipe Tasks, headless Chromium, 2 cores), ms per frame:")
    for where, s in figures.items():
        print(f"  {where}: mean {s['mean']:.1f}, median {s['median']:.1f} over {s['n']} frames")


def test_wheel_ships_the_web_app_and_mediapipe_assets(tmp_path):
    """A non-editable install (`pip install .`) must carry the pages and the MediaPipe files."""
    pytest.importorskip("setuptools", reason="building a wheel without isolation needs setuptools in the venv")
    src = Path(__file__).resolve().parents[2]
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(src / name, tree / name)
    shutil.copytree(src / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(tree)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = out.glob("facegate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for page in ("index.html", "register.html", "gallery.html", "common.js", "live.js", "register.js", "gallery.js", "app.css"):
        assert f"facegate/web/static/{page}" in names
    mp = "facegate/web/node_modules/@mediapipe/tasks-vision/"
    for asset in ("vision_bundle.mjs", "wasm/vision_wasm_internal.js", "wasm/vision_wasm_internal.wasm",
                  "wasm/vision_wasm_nosimd_internal.js", "wasm/vision_wasm_nosimd_internal.wasm"):
        assert mp + asset in names, f"{asset} is not in the wheel"
    assert not any("vision_wasm_module_internal" in n for n in names)  # the third build (13 MB) is not used


def test_pages_and_a_clear_answer_when_the_assets_are_missing(monkeypatch, tmp_path):
    """The pages are served as HTML; without `npm ci` the asset URLs say how to install them."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    installed = FastAPI()
    web.mount(installed)
    with TestClient(installed) as http:
        for path in ("/", "/register", "/gallery"):
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert '<script type="module"' in r.text
        r = http.get(web.BLAZEFACE_URL)  # from the mediapipe Python package
        assert r.status_code == 200 and len(r.content) > 100_000
        assert http.get(f"{web.MEDIAPIPE_URL}/wasm/vision_wasm_internal.wasm").headers["content-type"] == "application/wasm"
        assert http.get("/web/static/../__init__.py").status_code == 404

    monkeypatch.setattr(web, "MEDIAPIPE_DIR", tmp_path / "not-installed")
    bare = FastAPI()
    web.mount(bare)
    with TestClient(bare) as http:
        r = http.get(f"{web.MEDIAPIPE_URL}/{web.MEDIAPIPE_ENTRY}")
        assert r.status_code == 404 and "npm ci" in r.json()["detail"]
        assert http.get("/").status_code == 200  # the page still loads, and shows the error it gets


@needs_chromium
def test_web_app_asks_for_a_key_once_and_keeps_it(start_server, tmp_path, astronaut_frame, astronaut_payloads):
    """With keys on, the gallery page says a key is needed and opens the key field; once typed, the key
    is kept in this browser and sent with every call (thumbnails included), across reloads."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    data = tmp_path / "keyed"
    made = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "keys", "create", "--role", "admin", "--data", str(data)],
        capture_output=True, text=True, env=env, check=True,
    )
    admin = made.stdout.strip()
    server = start_server(data)
    with server.client(headers={"Authorization": f"Bearer {admin}"}) as http:
        assert http.post("/register", json=astronaut_payloads[0]).status_code == 200
    b = Browser(write_y4m(tmp_path / "cam.y4m", [astronaut_frame] * 2))
    try:
        page = b.page()
        page.goto(server.url + "/gallery")
        page.wait_for_selector("#message.error")
        assert "API key" in page.inner_text("#message")
        assert page.evaluate("() => document.activeElement && document.activeElement.id") == "api-key"
        assert page.locator("details.settings").get_attribute("open") is not None
        page.fill("#api-key", admin)
        page.dispatch_event("#api-key", "change")
        page.reload()
        page.wait_for_function("() => document.querySelectorAll('.person').length === 1")
        assert page.inner_text(".person-name") == NAME
        page.wait_for_function(
            "() => [...document.querySelectorAll('.thumbs img')].filter(i => i.complete && i.naturalWidth === 112).length === 3"
        )
        assert page.evaluate("() => localStorage.getItem('facegate.apiKey')") == admin
    finally:
        b.close()
    assert not b.errors, b.errors
