"""The web app's Cameras page in real headless Chromium (Debian's): a snapshot per camera and its state."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ServerProcess
from camkit import door_video, enrol, ffmpeg, wait_for  # noqa: F401  (fixtures)

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install -y chromium; .ci/run does it)")
def test_cameras_page_shows_each_camera_with_its_snapshot_and_state(tmp_path, door_video):
    from playwright.sync_api import expect, sync_playwright

    server = ServerProcess(tmp_path / "data", "--camera", f"door={door_video}", "--camera", "gate=rtsp://user:pw@127.0.0.1:9/none").start()
    try:
        with server.client() as c:
            wait_for(c, "door", lambda s: s["state"] == "ended" and s["tracks_now"] == 0, 60, "the video played to its end")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.click("nav a[href='/cameras']")
            door = page.locator("li[data-camera='door']")
            expect(door).to_have_attribute("data-state", "ended", timeout=15000)
            expect(door.locator(".camera-figures")).to_contain_text("2 events")
            expect(door.locator(".camera-last")).to_contain_text("last seen: unknown")
            page.wait_for_function(
                "() => { const i = document.querySelector(\"li[data-camera='door'] img.snapshot\"); return i && i.naturalWidth === 640; }",
                timeout=15000,
            )
            gate = page.locator("li[data-camera='gate']")
            expect(gate).to_have_attribute("data-state", "disconnected", timeout=15000)
            expect(gate.locator(".camera-error")).to_contain_text("last error:")
            expect(gate.locator(".camera-title")).to_contain_text("rtsp://***@127.0.0.1:9/none")
            assert "pw@" not in page.content()
            expect(page.locator("#summary")).to_contain_text("2 camera(s)")
            assert not errors, errors
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
            phone.goto(server.url + "/cameras")
            expect(phone.locator("li[data-camera='door']")).to_have_attribute("data-state", "ended", timeout=15000)
            assert phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), "the page scrolls sideways on a phone"
            browser.close()
    finally:
        server.stop()
