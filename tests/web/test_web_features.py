"""The web app's everyday features in real headless Chromium (Debian's /usr/bin/chromium, launched as
test_web_e2e launches it) against a real `facegate serve` on loopback:

- the register page enrols uploaded photos (POST /v1/people, multipart), says how many faces were
  enrolled and which photo was left out and why, and offers "Enrol anyway" for a face that looks like
  someone already enrolled;
- the gallery page adds photos to a person, renames them and deletes one face;
- an API key typed in Settings is used by the next request, without reloading the page;
- Photo mode's labels never overlap (common.js layoutLabels, which drawFaces uses).

Each change is checked through the HTTP API afterwards."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_web_e2e import Browser, needs_chromium, write_y4m

NAME = "Eileen Collins"
WAIT_MS = 60_000  # one enrolment with Chromium sharing 2 cores with the server


def jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def upload(name: str, data: bytes, mime: str) -> dict:
    """A file for Playwright's set_input_files."""
    return {"name": name, "mimeType": mime, "buffer": data}


@pytest.fixture(scope="module")
def photos(astronaut, astronaut_face, other_face):
    """Two different photos of the astronaut, one of another person, and a grey picture with no face."""
    x1, y1, x2, y2 = (int(round(v)) for v in astronaut_face.box)
    m = (x2 - x1) // 2
    crop = astronaut[max(0, y1 - m) : y2 + m, max(0, x1 - m) : x2 + m]
    return {
        "astronaut.jpg": upload("astronaut.jpg", jpeg(astronaut), "image/jpeg"),
        "astronaut-close.jpg": upload("astronaut-close.jpg", jpeg(crop), "image/jpeg"),
        "astronaut-mirrored.jpg": upload("astronaut-mirrored.jpg", jpeg(astronaut[:, ::-1]), "image/jpeg"),
        "other.jpg": upload("other.jpg", jpeg(other_face), "image/jpeg"),
        "grey.png": upload("grey.png", png(np.full((320, 320, 3), 128, np.uint8)), "image/png"),
    }


@pytest.fixture
def browser(tmp_path):
    """Chromium whose fake camera shows a grey frame (these pages are used without the camera)."""
    b = Browser(write_y4m(tmp_path / "grey.y4m", [np.full((480, 640, 3), 128, np.uint8)] * 2))
    yield b
    b.close()
    assert not b.errors, b.errors


def people(server, **kw) -> dict[str, dict]:
    with server.client(**kw) as http:
        listed = http.get("/v1/people")
        assert listed.status_code == 200, listed.text
        return {p["name"]: http.get(f"/v1/people/{p['id']}").json() for p in listed.json()["people"]}


def enrol(server, name: str, *files: dict, **kw) -> dict:
    with server.client(**kw) as http:
        r = http.post("/v1/people", data={"name": name}, files=[("images", (f["name"], f["buffer"], f["mimeType"])) for f in files])
    assert r.status_code == 201, r.text
    return r.json()


# ------------------------------------------------------------------------------ register page
@needs_chromium
def test_register_page_enrols_uploaded_photos_and_says_which_were_left_out(start_server, browser, photos):
    server = start_server(None, env={"FACEGATE_LATENCY_BUDGET_S": "10"})
    page = browser.page()
    page.goto(server.url + "/register")
    page.fill("#name", NAME)
    page.set_input_files("#photos", [photos["astronaut.jpg"], photos["grey.png"], photos["astronaut-close.jpg"]])
    page.click("#upload")
    page.wait_for_selector("#upload-message.warn", timeout=WAIT_MS)
    said = page.inner_text("#upload-message")
    assert f"Enrolled {NAME}" in said and "with 2 faces" in said and "1 photo(s) left out" in said, said
    left_out = page.locator("#upload-dropped li").all_inner_texts()
    assert len(left_out) == 1 and left_out[0].startswith("grey.png: left out — "), left_out
    assert "face" in left_out[0].split("—", 1)[1], left_out  # the server's reason (no face found)
    assert page.locator("#enrol-anyway").is_hidden()

    enrolled = people(server)
    assert list(enrolled) == [NAME] and enrolled[NAME]["face_count"] == 2
    assert sorted(f["source"] for f in enrolled[NAME]["faces"]) == ["images[0]", "images[2]"]

    # Her face again under another name: refused with whom it looks like; "Enrol anyway" enrols it.
    page.fill("#name", "Somebody Else")
    page.set_input_files("#photos", [photos["astronaut-mirrored.jpg"]])
    page.click("#upload")
    page.wait_for_selector("#upload-message.error", timeout=WAIT_MS)
    said = page.inner_text("#upload-message")
    assert f"this face looks like {NAME}" in said, said
    assert list(people(server)) == [NAME]
    assert page.locator("#enrol-anyway").is_visible()
    page.click("#enrol-anyway")
    page.wait_for_selector("#upload-message.ok", timeout=WAIT_MS)
    assert "Enrolled Somebody Else" in page.inner_text("#upload-message") and "with 1 face." in page.inner_text("#upload-message")
    assert page.locator("#enrol-anyway").is_hidden()
    after = people(server)
    assert sorted(after) == [NAME, "Somebody Else"] and after["Somebody Else"]["face_count"] == 1
    assert after[NAME]["face_count"] == 2


# ------------------------------------------------------------------------------- gallery page
@needs_chromium
def test_gallery_adds_photos_renames_and_deletes_one_face(start_server, browser, photos):
    server = start_server(None, env={"FACEGATE_LATENCY_BUDGET_S": "10"})
    eileen = enrol(server, NAME, photos["astronaut.jpg"], photos["astronaut-close.jpg"])
    other = enrol(server, "Other Person", photos["other.jpg"])
    page = browser.page()
    page.goto(server.url + "/gallery")
    page.wait_for_function("() => document.querySelectorAll('.person .face img').length === 3")
    card = f".person[data-person-id='{eileen['id']}']"

    # Add photos: one of her, one with no face (left out, said so).
    page.set_input_files(f"{card} .add-photos-input", [photos["astronaut-mirrored.jpg"], photos["grey.png"]])
    page.wait_for_selector("#message.warn", timeout=WAIT_MS)
    said = page.inner_text("#message")
    assert f"{NAME} now has 3 face(s)" in said and "grey.png left out: " in said, said
    page.wait_for_function(f"() => document.querySelectorAll(\"{card} .face img\").length === 3")
    now = people(server)
    assert now[NAME]["face_count"] == 3 and now["Other Person"]["face_count"] == 1
    assert [f["source"] for f in now[NAME]["faces"]][-1] == "images[0]"

    # Rename.
    page.click(f"{card} button.rename")
    page.fill(f"{card} .rename-input", "Eileen M. Collins")
    page.press(f"{card} .rename-input", "Enter")
    page.wait_for_selector("#message.ok", timeout=WAIT_MS)
    assert "Renamed Eileen Collins to Eileen M. Collins" in page.inner_text("#message")
    page.wait_for_function(f"() => document.querySelector(\"{card} .person-name\").textContent === 'Eileen M. Collins'")
    now = people(server)
    assert sorted(now) == ["Eileen M. Collins", "Other Person"]
    assert now["Eileen M. Collins"]["id"] == eileen["id"] and now["Eileen M. Collins"]["face_count"] == 3

    # Delete one face (the first), after a confirmation.
    gone = eileen["faces"][0]["id"]
    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.click(f".face[data-face-id='{gone}'] button.face-delete")
    page.wait_for_function(f"() => document.querySelectorAll(\"{card} .face img\").length === 2")
    assert dialogs and "Eileen M. Collins" in dialogs[0]
    assert page.locator(f".face[data-face-id='{gone}']").count() == 0
    assert "2 left" in page.inner_text("#message")
    now = people(server)
    assert now["Eileen M. Collins"]["face_count"] == 2
    assert gone not in [f["id"] for f in now["Eileen M. Collins"]["faces"]]
    assert now["Other Person"]["face_count"] == 1 and now["Other Person"]["id"] == other["id"]
    with server.client() as http:
        assert http.get(f"/v1/faces/{gone}/crop").status_code == 404


# ----------------------------------------------------------------------------------- settings
@needs_chromium
def test_a_key_typed_in_settings_is_used_without_reloading(start_server, tmp_path, browser, photos, astronaut_frame):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    data = tmp_path / "keyed"
    made = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "keys", "create", "--role", "admin", "--data", str(data)],
        capture_output=True, text=True, env=env, check=True,
    )
    admin = made.stdout.strip()
    server = start_server(data, env={"FACEGATE_LATENCY_BUDGET_S": "10"})
    auth = {"headers": {"Authorization": f"Bearer {admin}"}}
    enrol(server, NAME, photos["astronaut.jpg"], photos["astronaut-close.jpg"], **auth)

    # Gallery: refused without a key; typing it (Enter) loads the list in the same page.
    page = browser.page()
    page.goto(server.url + "/gallery")
    page.wait_for_selector("#message.error")
    assert "API key" in page.inner_text("#message")
    page.evaluate("() => { window.sameDocument = true; }")
    page.fill("#api-key", admin)
    page.press("#api-key", "Enter")
    page.wait_for_function("() => document.querySelectorAll('.person').length === 1", timeout=30_000)
    assert page.inner_text(".person-name") == NAME
    page.wait_for_function("() => document.querySelectorAll('.thumbs img').length === 2")
    assert page.evaluate("() => window.sameDocument") is True  # not reloaded
    assert page.locator("#message").is_hidden()
    assert page.evaluate("() => localStorage.getItem('facegate.apiKey')") == admin
    page.context.close()

    # Live page, Photo mode, in a fresh browser profile: a photo is refused (401); the key typed (not
    # even committed) is sent with the very next request.
    live = browser.page()
    live.goto(server.url + "/?mode=image")
    live.wait_for_function("() => facegate.ready")
    frame = upload("frame.jpg", jpeg(astronaut_frame), "image/jpeg")
    live.set_input_files("#file", [frame])
    live.wait_for_function("() => document.querySelectorAll('#photo-results li').length === 1")
    refused = live.inner_text("#photo-results li")
    assert "rejected" in refused and "401" in refused, refused
    live.fill("#api-key", admin)
    live.set_input_files("#file", [upload("frame-again.jpg", frame["buffer"], "image/jpeg")])
    live.wait_for_function(f"() => document.querySelector('#photo-results li') && document.querySelector('#photo-results li').textContent.includes({NAME!r})")
    assert live.evaluate("() => facegate.stats.lastResult.user_name") == NAME


# ------------------------------------------------------------------------------- label layout
LAYOUT = """async ({boxes, width, height, texts}) => {
  const m = await import('/web/static/common.js');
  const pure = m.layoutLabels(boxes.map((box) => ({box, w: 180, h: 30})), width, height);
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const drawn = m.drawFaces(canvas, boxes.map((box) => ({box, keypoints: []})), (f, i) => ({text: texts[i], color: '#1e9e4a'}));
  return {pure, drawn};
}"""


def intersect(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def inside(r: dict, width: int, height: int) -> bool:
    return r["x"] >= 0 and r["y"] >= 0 and r["x"] + r["w"] <= width + 1e-6 and r["y"] + r["h"] <= height + 1e-6


@needs_chromium
def test_photo_mode_labels_do_not_overlap(start_server, browser):
    server = start_server(None)
    page = browser.page()
    page.goto(server.url + "/")  # any page: the test imports the page's own module
    width, height = 640, 480
    cases = {
        "two nearby faces": [[100, 100, 200, 200], [150, 110, 250, 210]],
        "three in a row, one at the top edge": [[20, 0, 120, 100], [60, 10, 160, 110], [100, 20, 200, 120]],
        "a crowd": [[x, y, x + 60, y + 60] for x in (10, 50, 90) for y in (150, 170)],
        "far apart": [[20, 200, 120, 300], [400, 200, 500, 300]],
    }
    for what, boxes in cases.items():
        texts = ["Eileen Collins (0.71)", "unknown (0.22)", "retry: hold still, face the camera"] * 2
        got = page.evaluate(LAYOUT, {"boxes": boxes, "width": width, "height": height, "texts": texts[: len(boxes)]})
        for kind in ("pure", "drawn"):  # the function, and what drawFaces painted with it
            rects = got[kind]
            assert len(rects) == len(boxes) and all(rects), (what, kind, rects)
            for i, r in enumerate(rects):
                assert inside(r, width, height), (what, kind, r)
                for j in range(i):
                    assert not intersect(r, rects[j]), (what, kind, i, j, rects)
        # Each label stays in its face's column, and the uppermost face keeps the usual place (on its box's top).
        pure = got["pure"]
        for box, r in zip(boxes, pure):
            assert r["x"] == min(box[0], width - r["w"]), (what, box, r)
        top = min(range(len(boxes)), key=lambda i: (boxes[i][1], boxes[i][0]))
        assert pure[top]["y"] == max(0, boxes[top][1] - 30), (what, pure)
        if what == "far apart":  # labels that do not meet are not moved
            assert [r["y"] for r in pure] == [170, 170], pure
        if what == "two nearby faces":  # the second label moves down to the nearest free place: under the first
            assert pure[1]["y"] == 100, pure
