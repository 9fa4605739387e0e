"""Requests a hostile web page can make a browser send to a FaceGate without keys (issue 19, finding 4):
a text/plain POST (no CORS preflight), a foreign Origin on a state-changing request, and a foreign Host
(DNS rebinding). Real server on loopback, real HTTP; tests/web/test_web_origin.py does it from Chromium."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import pytest

from conftest import b64


@pytest.fixture(scope="module")
def http(server):
    """The open server (no key exists: every route is served without one, as in the attack)."""
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def image(other_face) -> str:
    return b64(other_face)


def _people(http) -> int:
    return http.get("/healthz").json()["gallery"]["people"]


# ------------------------------------------------------------------ 415: the body's type
@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None])
@pytest.mark.parametrize("path", ["/v1/people", "/register", "/predict", "/v1/identify", "/v1/verify", "/v1/people/1/faces"])
def test_json_routes_refuse_other_body_types_with_415(http, image, path, ctype):
    before = _people(http)
    body = json.dumps({"name": "Plain Text", "user_name": "Plain Text", "images": [image], "image": image,
                       "first_img": image, "sec_img": image, "third_img": image, "image_a": image, "image_b": image})
    headers = {} if ctype is None else {"content-type": ctype}
    r = http.post(path, content=body.encode(), headers=headers)
    assert r.status_code == 415, (path, ctype, r.status_code, r.text[:300])
    assert r.json()["code"] == "unsupported_media_type" and "application/json" in r.json()["detail"]
    assert _people(http) == before


def test_multipart_is_taken_only_where_files_are(http, image):
    r = http.post("/register", files={"first_img": ("a.jpg", b"x", "image/jpeg")}, data={"user_name": "Form"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    r = http.post("/v1/identify", files={"image": ("a.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 422 and r.json()["code"] == "invalid_image"  # read as before


def test_json_with_a_charset_and_the_plus_json_types_are_json(http, image):
    for ctype in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.facegate+json"):
        r = http.post("/v1/identify", content=json.dumps({"image": image}).encode(), headers={"content-type": ctype})
        assert r.status_code == 200, (ctype, r.text[:300])


# ------------------------------------------------------------------ 403: a foreign Origin
FOREIGN = ["http://attacker.example", "https://attacker.example", "null", "http://127.0.0.1:1", "http://localhost", "garbage"]


@pytest.mark.parametrize("origin", FOREIGN)
def test_state_changes_from_a_foreign_origin_are_403(server, http, image, origin):
    before = _people(http)
    r = http.post("/v1/people", json={"name": "Cross Site", "images": [image]}, headers={"origin": origin})
    assert r.status_code == 403, (origin, r.status_code, r.text[:300])
    assert r.json()["code"] == "foreign_origin"
    r = http.post("/v1/people", files={"images": ("a.jpg", b"x", "image/jpeg")}, data={"name": "Cross Form"}, headers={"origin": origin})
    assert r.status_code == 403  # multipart needs no CORS preflight either
    assert _people(http) == before


def test_a_foreign_origin_cannot_delete(server, http, image):
    made = http.post("/v1/people", json={"name": "Kept Person", "images": [image]})
    assert made.status_code == 201, made.text[:300]
    pid = made.json()["id"]
    r = http.delete(f"/v1/people/{pid}", headers={"origin": "http://attacker.example"})
    assert r.status_code == 403
    assert http.get(f"/v1/people/{pid}").status_code == 200
    # Its own origin (the web app's pages) and clients that send no Origin may.
    r = http.delete(f"/v1/people/{pid}", headers={"origin": server.url})
    assert r.status_code == 200, r.text[:300]


def test_same_origin_and_reads_go_on(server, http, image):
    r = http.post("/v1/identify", json={"image": image}, headers={"origin": server.url})
    assert r.status_code == 200
    r = http.post("/v1/identify", json={"image": image}, headers={"origin": server.url.replace("127.0.0.1", "localhost"),
                                                                  "host": urlparse(server.url).netloc.replace("127.0.0.1", "localhost")})
    assert r.status_code == 200
    assert http.get("/v1/people", headers={"origin": "http://attacker.example"}).status_code == 200  # no CORS: unreadable


# ------------------------------------------------------------------ 400: a foreign Host (DNS rebinding)
@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1.nip.io:{port}", "localhost.attacker.example", ""])
def test_a_foreign_host_is_400(server, http, host):
    port = urlparse(server.url).port
    for path in ("/v1/export", "/healthz", "/"):
        r = http.get(path, headers={"host": host.format(port=port)})
        assert r.status_code == 400, (host, path, r.status_code, r.text[:200])
        assert r.json()["code"] == "bad_host" and "allowed_hosts" in r.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "127.0.0.1"])
def test_loopback_hosts_are_answered(server, http, host):
    r = http.get("/v1/export", headers={"host": host.format(port=urlparse(server.url).port)})
    assert r.status_code == 200, (host, r.text[:200])


def test_a_request_without_a_host_is_400(server):
    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/export HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"bad_host" in answer


def test_allowed_hosts_adds_names(start_server):
    s = start_server(None, env={"FACEGATE_ALLOWED_HOSTS": "gate.example.test, Door.Example.Test."})
    port = urlparse(s.url).port
    with s.client() as c:
        for host in (f"gate.example.test:{port}", "door.example.test", f"127.0.0.1:{port}"):
            assert c.get("/v1/export", headers={"host": host}).status_code == 200, host
        r = c.get("/v1/export", headers={"host": "attacker.example"})
        assert r.status_code == 400 and "door.example.test" in r.json()["detail"]
        # Same origin is that name's origin: the request's Host, not the bind address.
        r = c.post("/v1/identify", json={"image": "x"}, headers={"host": "gate.example.test", "origin": "https://gate.example.test"})
        assert r.status_code == 422
        r = c.post("/v1/identify", json={"image": "x"}, headers={"host": "gate.example.test", "origin": "https://door.example.test"})
        assert r.status_code == 403
