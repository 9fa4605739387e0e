"""Small uploads that cost a lot (issue 19, finding 5), over real HTTP: a 6000x6000 PNG is 105 kB sent
and 108 MB decoded; one /v1/verify with two took 5.3 s, and 8 at once took the server from 0.79 to
3.93 GB and past request_timeout_s. Now a large JPEG is decoded reduced, a large PNG is refused from
its header, and each request and the whole server have a budget of decoded pixels."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import b64

GB = 1024**3


def _png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("L", (w, h), 0).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _smooth_jpeg(w: int, h: int) -> str:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    rgb = np.stack([x, x[:, ::-1], np.full_like(x, 90)], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def _peak_rss(server) -> int:
    """The server process's peak resident memory (VmHWM), bytes."""
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_eight_verifies_of_6000px_images_at_once(start_server):
    s = start_server(None)
    png, jpeg = _png(6000, 6000), _smooth_jpeg(6000, 6000)
    assert len(png) < 200_000
    bodies = [{"image_a": png, "image_b": png}] * 8 + [{"image_a": jpeg, "image_b": jpeg}] * 8
    with s.client() as c:
        before = _peak_rss(s)

        def verify(body):
            return c.post("/v1/verify", json=body)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(verify, bodies))
    for r in answers[:8]:  # refused from the header: nothing decoded
        assert r.status_code == 413, r.text[:300]
        assert r.json()["code"] == "image_too_large" and r.json()["field"] == "image_a" and "JPEG" in r.json()["detail"]
    for r in answers[8:]:  # decoded at 1/4 (1500x1500): no face in a gradient, answered, not timed out
        assert r.status_code == 422 and r.json()["code"] == "no_face", r.text[:300]
    peak = _peak_rss(s)
    assert peak < 1.5 * GB, f"peak resident memory {peak / GB:.2f} GB (before: {before / GB:.2f} GB)"


def test_a_request_over_its_pixel_budget_is_413_and_changes_nothing(start_server, astronaut):
    s = start_server(None, env={"FACEGATE_MAX_REQUEST_PIXELS": "600000"})  # two 512x512 photos, not three
    photo = b64(np.ascontiguousarray(astronaut))
    with s.client() as c:
        r = c.post("/v1/people", json={"name": "Budget Buster", "images": [photo] * 3})
        assert r.status_code == 413, r.text[:300]
        assert r.json()["code"] == "image_too_large" and r.json()["field"] == "images[2]"
        assert "limit per request" in r.json()["detail"]
        assert c.get("/healthz").json()["gallery"]["people"] == 0
        assert c.post("/v1/identify", json={"image": photo}).status_code == 200  # within it: served


def test_the_server_pixel_budget_answers_503_when_spent(start_server, astronaut):
    s = start_server(None, env={"FACEGATE_MAX_SERVER_PIXELS": "200000"})  # less than one 512x512 photo
    with s.client() as c:
        r = c.post("/v1/identify", json={"image": b64(np.ascontiguousarray(astronaut))})
        assert r.status_code == 503 and r.json()["code"] == "busy", r.text[:300]
        assert r.headers["retry-after"]
        r = c.post("/v1/identify", json={"image": b64(np.ascontiguousarray(astronaut)[:300, :300])})
        assert r.status_code == 200, r.text[:300]  # 0.09 MP fits; the refused request's pixels were given back
