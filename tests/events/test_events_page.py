"""The web app's Events page in real headless Chromium (Debian's, driven by Playwright) against a real
`facegate serve` with keys on: the list loads with a viewer key, a new event arrives live with its best
shot, the status filter applies, and a client key is told it may not read events."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ServerProcess, b64, facegate

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (.ci/run installs it)")


def test_events_page_lists_streams_and_filters(tmp_path, other_face):
    from playwright.sync_api import expect, sync_playwright

    data = tmp_path / "data"
    keys = {}
    for role in ("admin", "viewer", "client"):
        made = facegate("keys", "create", "--role", role, "--data", data, timeout=120)
        assert made.returncode == 0, made.stderr
        keys[role] = made.stdout.strip().splitlines()[-1]
    s = ServerProcess(data).start()
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"])
    try:
        with s.client() as c:
            pid = c.post("/v1/people", json={"name": "Pia Page", "images": [b64(other_face)]}, headers=admin).json()["id"]
            first = c.post("/v1/events/test", json={"camera": "door"}, headers=admin).json()
            page = browser.new_page()
            page.goto(s.url + "/events")
            page.fill("#api-key", keys["viewer"])
            page.press("#api-key", "Enter")
            expect(page.locator(f'li[data-event-id="{first["id"]}"]')).to_be_visible(timeout=20_000)
            expect(page.locator("#live")).to_have_text("live", timeout=20_000)
            ev = c.post("/v1/events/test", json={"camera": "door", "status": "recognized", "person_id": pid}, headers=admin).json()
            row = page.locator(f'li[data-event-id="{ev["id"]}"]')
            expect(row).to_be_visible(timeout=20_000)
            expect(row).to_contain_text("Pia Page")
            expect(row).to_have_class("event recognized fresh")
            page.wait_for_function(
                f'() => {{ const i = document.querySelector(\'li[data-event-id="{ev["id"]}"] img\'); return i && i.naturalWidth === 112; }}',
                timeout=20_000,
            )
            assert page.locator("li.event").first.get_attribute("data-event-id") == ev["id"]  # newest on top
            page.select_option("#f-status", "unknown")
            page.click("#filters button[type=submit]")
            expect(page.locator(f'li[data-event-id="{first["id"]}"]')).to_be_visible(timeout=20_000)
            expect(page.locator(f'li[data-event-id="{ev["id"]}"]')).to_have_count(0)
            page.fill("#api-key", keys["client"])
            page.press("#api-key", "Enter")
            expect(page.locator("#message")).to_contain_text("may not read events", timeout=20_000)
    finally:
        browser.close()
        pw.stop()
        s.stop()
