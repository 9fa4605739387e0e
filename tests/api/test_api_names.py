"""Names over real HTTP (issue 19, finding 9): look-alike names are one person (409 naming who holds
it), and names that show no letter or digit are refused (422); nothing changes either way."""

from __future__ import annotations

import pytest

from conftest import b64


@pytest.fixture(scope="module")
def http(server, other_face):
    with server.client() as c:
        r = c.post("/v1/people", json={"name": "Ana", "images": [b64(other_face)]})
        assert r.status_code == 201, r.text
        c.ana_id = r.json()["id"]
        yield c


def _gallery(http) -> dict:
    return http.get("/healthz").json()["gallery"]


@pytest.mark.parametrize("name", ["Ａｎａ", "\u0410na", "Ana\ufe0f", "ANA", "An\u0430"])
def test_look_alike_names_are_409_naming_the_person(http, astronaut_payloads, other_face, name):
    before = _gallery(http)
    r = http.post("/v1/people", json={"name": name, "images": [b64(other_face)]})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "person_exists" and body["field"] == "name"
    assert "'Ana'" in body["detail"] and f"id {http.ana_id}" in body["detail"]
    register, _ = astronaut_payloads
    r = http.post("/register", json={**register, "user_name": name})
    assert r.status_code == 409 and "'Ana'" in r.json()["detail"] and r.json()["field"] == "user_name"
    assert _gallery(http) == before


@pytest.mark.parametrize("name", ["\u3164", "\u2800", "\u3164 \u2800", "---", "\u115f"])
def test_names_that_show_nothing_are_422(http, astronaut_payloads, other_face, name):
    before = _gallery(http)
    r = http.post("/v1/people", json={"name": name, "images": [b64(other_face)]})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_name" and "letter or digit" in r.json()["detail"]
    register, _ = astronaut_payloads
    r = http.post("/register", json={**register, "user_name": name})
    assert r.status_code == 422 and r.json()["code"] == "invalid_name"
    assert _gallery(http) == before
    assert [p["name"] for p in http.get("/v1/people").json()["people"]] == ["Ana"]
