"""Issue 20, item 4: the pages' BlazeFace runs on MediaPipe Tasks' FaceDetector (WebAssembly with SIMD
on the CPU, or WebGL where that is faster), with the short-range model the server serves from its
installed mediapipe package, under a CSP without 'unsafe-eval'.

Real headless Chromium (Debian's /usr/bin/chromium via Playwright) with a fake 640x480 camera showing
a real photo, against a real `facegate serve`. The page's own figure ("BlazeFace in this browser: N
ms/frame") is asserted to exist and printed (run with -s), never compared with a time."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from test_web_e2e import CHROMIUM, FLAGS, Browser, needs_chromium, write_y4m

from facegate import web
from facegate.api import headers

NAME = "Eileen Collins"
LAPTOP = {"viewport": {"width": 1000, "height": 900}}
FIGURE = re.compile(r"BlazeFace in this browser: (\d+\.\d) ms/frame \(mean of \d+\), \d+ frames, on (the CPU \(WebAssembly\)|WebGL)")


@pytest.fixture(scope="module", autouse=True)
def _assets_installed():
    assert web.mediapipe_installed(), f"MediaPipe Tasks missing at {web.MEDIAPIPE_DIR}: run `npm ci --prefix src/facegate/web`"


def test_tasks_face_detector_takes_the_wheels_model_as_is(astronaut):
    """The mediapipe wheel's face_detection_short_range.tflite has no TFLite metadata; MediaPipe Tasks'
    FaceDetector (the same C++ graph the web build runs) takes it and finds what the legacy solution finds."""
    import mediapipe as mp
    from mediapipe.python.solutions import face_detection as legacy
    from mediapipe.tasks.python import BaseOptions, vision

    path = web.blazeface_path()
    assert path is not None and path.name == web.BLAZEFACE_FILE
    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(path)), min_detection_confidence=0.5)
    img = np.ascontiguousarray(astronaut)
    with vision.FaceDetector.create_from_options(options) as det:
        (face,) = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=img)).detections
    with legacy.FaceDetection(model_selection=0, min_detection_confidence=0.5) as old:
        (ref,) = old.process(img).detections
    h, w = img.shape[:2]
    b, r = face.bounding_box, ref.location_data.relative_bounding_box
    assert abs(face.categories[0].score - ref.score[0]) < 1e-3, (face.categories[0].score, ref.score)
    assert abs(b.origin_x - r.xmin * w) <= 2 and abs(b.origin_y - r.ymin * h) <= 2 and abs(b.width - r.width * w) <= 2
    assert len(face.keypoints) == 6


def test_the_server_serves_the_model_from_the_mediapipe_package(server):
    with server.client() as http:
        r = http.get(web.BLAZEFACE_URL)
        assert r.status_code == 200
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(web.blazeface_path().read_bytes()).digest()
        assert http.get(f"{web.MEDIAPIPE_URL}/{web.MEDIAPIPE_ENTRY}").headers["content-type"].startswith("text/javascript")
        for page in ("/", "/register", "/gallery"):  # BlazeFace needs WebAssembly, no JavaScript eval
            csp = http.get(page).headers["content-security-policy"]
            legacy = page in headers.MEDIAPIPE_PAGES  # a page that also runs a legacy MediaPipe build
            assert ("'unsafe-eval'" in csp) == legacy and (legacy or "'wasm-unsafe-eval'" in csp), csp
        assert "/register" not in headers.MEDIAPIPE_PAGES
    # Only the pinned version is used, and the legacy build is gone from the dependencies.
    deps = json.loads((web.HERE / "package.json").read_text())["dependencies"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", deps["@mediapipe/tasks-vision"])
    assert json.loads((web.MEDIAPIPE_DIR / "package.json").read_text())["version"] == deps["@mediapipe/tasks-vision"]
    assert "@mediapipe/face_detection" not in deps
    # tasks-vision 1.0 and later post usage metrics to a Google endpoint (odml.pa.googleapis.com) from
    # every page: FaceGate's pages must not, so the pin stays on a build without that code.
    assert "odml.pa.googleapis.com" not in (web.MEDIAPIPE_DIR / web.MEDIAPIPE_ENTRY).read_text()


def test_the_model_route_says_so_when_mediapipe_is_missing(monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    monkeypatch.setattr(web, "blazeface_path", lambda: None)
    app = FastAPI()
    web.mount(app)
    with TestClient(app) as http:
        r = http.get(web.BLAZEFACE_URL)
    assert r.status_code == 404 and r.json()["code"] == "assets_missing" and "mediapipe" in r.json()["detail"]


def _csp_watch(page) -> None:
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )


@needs_chromium
def test_live_and_register_pages_detect_on_tasks_and_show_their_figure(server, tmp_path, astronaut_frame, astronaut_payloads):
    assert astronaut_frame.shape[:2] == (480, 640)
    with server.client() as http:
        assert http.post("/register", json=astronaut_payloads[0]).status_code == 200
    b = Browser(write_y4m(tmp_path / "astronaut.y4m", [astronaut_frame] * 10))
    sent: list[dict] = []
    figures = {}
    try:
        # Live page, delegate chosen by timing both on the first frames.
        live = b.page(**LAPTOP)
        live.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/predict") else None)
        _csp_watch(live)
        live.goto(server.url + "/")
        live.wait_for_function("() => facegate.stats.trial && facegate.stats.trial.chosen")
        live.wait_for_function("() => facegate.stats.predictions >= 3 && facegate.stats.detectMs.length >= 20")
        result = live.evaluate("() => facegate.stats.lastResult")
        assert result["user_name"] == NAME and result["status"] == "recognized", result
        text = live.inner_text("#stats")
        assert FIGURE.fullmatch(text), text
        figures["live (auto)"] = (text, live.evaluate("() => facegate.stats.trial"))
        # The crop and the two eye points went to /predict, image-left eye first.
        body = sent[-1]
        assert body["image"] and body["keypoints_x1"] < body["keypoints_x2"], {k: v for k, v in body.items() if k != "image"}
        assert abs(body["keypoints_y1"] - body["keypoints_y2"]) < 0.2 * (body["keypoints_x2"] - body["keypoints_x1"])
        assert live.evaluate("() => window.__csp") == []
        live.context.close()

        # Register page, on the CPU by the URL setting: guidance from the detector, the figure says where it ran.
        reg = b.page(**LAPTOP)
        _csp_watch(reg)
        reg.goto(server.url + "/register?delegate=cpu")
        reg.wait_for_function("() => document.querySelector('#guidance').textContent.startsWith('Good')")
        reg.wait_for_function("() => facegate.stats.detectMs.length >= 20")
        text = reg.inner_text("#stats")
        assert FIGURE.fullmatch(text) and "on the CPU" in text, text
        assert reg.evaluate("() => facegate.stats.delegate") == "CPU"
        figures["register (cpu)"] = (text, None)
        assert reg.evaluate("() => window.__csp") == []
        reg.context.close()

        # Live page on WebGL by the URL setting (what a browser with a fast GPU keeps): same answer.
        gpu = b.page(**LAPTOP)
        gpu.goto(server.url + "/?delegate=gpu")
        gpu.wait_for_function("() => facegate.stats.predictions >= 1 && facegate.stats.detectMs.length >= 5")
        assert gpu.evaluate("() => facegate.stats.lastResult.user_name") == NAME
        text = gpu.inner_text("#stats")
        assert FIGURE.fullmatch(text) and "on WebGL" in text, text
        figures["live (gpu)"] = (text, None)
        gpu.context.close()
    finally:
        b.close()
    own = [u for u in b.requests if not u.startswith(("data:", "blob:"))]
    assert all(u.startswith(server.url) for u in own), [u for u in own if not u.startswith(server.url)]
    assert any(u.endswith(web.BLAZEFACE_URL) for u in own), "the model did not come from this server's route"
    assert any(u.endswith("/wasm/vision_wasm_internal.wasm") for u in own), "not the SIMD build"
    assert not any("face_detection.js" in u or "solution" in u for u in own), "the legacy build was loaded"
    assert not b.errors, b.errors
    print("\nBlazeFace in headless Chromium (MediaPipe Tasks, fake 640x480 camera):")
    for where, (text, trial) in figures.items():
        print(f"  {where}: {text}" + (f"; start-up trial medians: {trial}" if trial else ""))


@needs_chromium
def test_without_webgl_the_pages_say_so(server, tmp_path, astronaut_frame):
    """MediaPipe Tasks passes each frame to its graph as a WebGL texture, on the CPU delegate too: in a
    browser with WebGL turned off the pages say what is missing instead of failing on every frame."""
    from playwright.sync_api import sync_playwright

    y4m = write_y4m(tmp_path / "cam.y4m", [astronaut_frame] * 2)
    off = ["--disable-webgl", "--disable-webgl2", "--disable-software-rasterizer"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*FLAGS, *off, f"--use-file-for-fake-video-capture={y4m}"]
        )
        try:
            page = browser.new_page(**LAPTOP)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(60_000)
            page.goto(server.url + "/")
            page.wait_for_function("() => document.querySelector('#result').textContent === 'Face detection unavailable'")
            assert "needs WebGL" in page.inner_text("#message")
            page.goto(server.url + "/register")
            page.wait_for_function("() => document.querySelector('#guidance').textContent.startsWith('Camera or face detection unavailable')")
            assert "needs WebGL" in page.inner_text("#message")
        finally:
            browser.close()
    assert not errors, errors
