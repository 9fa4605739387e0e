"""A hostile page in real Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a
FaceGate with no keys on loopback (issue 19, finding 4): served from another port, it tries the
requests a page can send without a CORS preflight; and a name that resolves to 127.0.0.1 (DNS
rebinding, by Chromium's --host-resolver-rules) asks for the gallery. None may change or read it."""

from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install -y chromium chromium-driver; .ci/run does it)"
)

ATTACKER_PAGE = b"""<!doctype html><meta charset="utf-8"><title>cute cats</title>
<iframe name="sink"></iframe>
<form id="f" method="POST" target="sink" enctype="text/plain"><input name='{"name": "Form Post", "x": "' value='"}'></form>
<script>
// What any page can send to another origin without a CORS preflight: the answers are unreadable
// ("no-cors"), but before issue 19 the server acted on them.
async function attack(target, jpegB64) {
  const bytes = Uint8Array.from(atob(jpegB64), c => c.charCodeAt(0));
  const sent = [];
  const go = async (what, init) => {
    try { await fetch(target + "/v1/people", {method: "POST", mode: "no-cors", ...init}); sent.push(what); }
    catch (e) { sent.push(what + ": " + e); }
  };
  await go("text/plain", {headers: {"Content-Type": "text/plain"}, body: JSON.stringify({name: "Text Plain", images: [jpegB64]})});
  const fd = new FormData();
  fd.append("name", "Form Data");
  fd.append("images", new Blob([bytes], {type: "image/jpeg"}), "face.jpg");
  await go("multipart", {body: fd});
  const form = document.getElementById("f");
  form.action = target + "/v1/people";
  form.submit();
  return sent;
}
</script>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(ATTACKER_PAGE)))
        self.end_headers()
        self.wfile.write(ATTACKER_PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture
def attacker_site():
    """The attacker's page, on another port of the same machine (another origin)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _jpeg_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_page_on_another_origin_cannot_enrol_or_read(start_server, attacker_site, other_face):
    from playwright.sync_api import sync_playwright

    server = start_server(None)  # no key exists: open, on loopback only
    port = server.url.rsplit(":", 1)[1]
    image = _jpeg_b64(other_face)
    with server.client() as http:
        assert http.post("/v1/identify", json={"image": image}).status_code == 200  # the face is a good one
    answers: dict[str, list[int]] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*FLAGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"]
        )
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(60_000)
            page.on("response", lambda r: answers.setdefault(f"{r.request.method} {r.url}", []).append(r.status))
            page.goto(attacker_site + "/")
            with page.expect_response(lambda r: r.request.method == "POST" and r.request.post_data_buffer is not None
                                      and b"Form Post" in r.request.post_data_buffer):
                sent = page.evaluate("([t, b]) => attack(t, b)", [server.url, image])
            assert sent == ["text/plain", "multipart"], sent
            posts = answers.get(f"POST {server.url}/v1/people", [])
            assert sorted(posts) == [403, 403, 403], answers  # text/plain, multipart, form: each refused for its Origin
            with server.client() as http:
                assert http.get("/v1/people").json()["people"] == []

            # DNS rebinding: a page whose origin is a name the attacker points at 127.0.0.1.
            r = page.goto(f"http://rebind.test:{port}/v1/export")
            assert r.status == 400 and "bad_host" in page.content()
            same = page.evaluate("async () => (await fetch('/v1/people')).status")
            assert same == 400

            # FaceGate's own pages are another matter: same origin, answered.
            page.goto(server.url + "/healthz")
            status = page.evaluate(
                "async (b) => (await fetch('/v1/identify', {method: 'POST', headers: {'Content-Type': 'application/json'},"
                " body: JSON.stringify({image: b})})).status", image)
            assert status == 200
        finally:
            browser.close()
    with server.client() as http:
        assert http.get("/healthz").json()["gallery"]["people"] == 0
        assert http.get("/v1/people").json()["people"] == []
    log = server.read_log()
    assert log.count('"POST /v1/people HTTP/1.1" 403') == 3, log[-2000:]
