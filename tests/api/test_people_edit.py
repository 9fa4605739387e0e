"""PATCH /v1/people/{id} (rename) and DELETE /v1/faces/{id} (one face) over real HTTP, on the embedded
gallery and on PostgreSQL: the rules and the 409 of enrolment, 4xx for bad input with nothing changed,
audited, admin only, and a deleted face gone from every answer, after a restart too, and (embedded)
from every file."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from conftest import b64, make_store
from test_api_auth import bearer, new_key

NAME = "Eileen Collins"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    return make_store(request, tmp_path, request.param)


@pytest.fixture(scope="module")
def astro_variants(astronaut) -> list[np.ndarray]:
    a = np.ascontiguousarray(astronaut)
    return [a, np.ascontiguousarray(a[0:320, 40:420]), np.ascontiguousarray(a[:, ::-1])]


def _enrol(c, astro_variants, other_face) -> tuple[dict, dict]:
    eileen = c.post("/v1/people", json={"name": NAME, "images": [b64(v) for v in astro_variants]})
    assert eileen.status_code == 201, eileen.text
    other = c.post("/v1/people", json={"name": "Other Person", "images": [b64(other_face)]})
    assert other.status_code == 201, other.text
    return eileen.json(), other.json()


def _named(c, image: np.ndarray) -> list:
    r = c.post("/v1/identify", json={"image": b64(image)})
    assert r.status_code == 200, r.text
    return [(f["status"], f["name"], f["person_id"]) for f in r.json()["faces"]]


def _state(c) -> tuple:
    """Everything a refused request must leave as it was."""
    people = c.get("/v1/people").json()["people"]
    return people, [c.get(f"/v1/people/{p['id']}").json() for p in people], c.get("/healthz").json()["gallery"]


def _audit(c, action: str) -> list[dict]:
    return [e for e in c.get("/v1/audit", params={"limit": 1000}).json()["entries"] if e["action"] == action]


# ------------------------------------------------------------------ rename
def test_rename_follows_the_rules_of_enrolment(start_server, store, astro_variants, astronaut, other_face):
    srv = start_server(store.data_dir, *store.serve_args)
    with srv.client() as c:
        eileen, other = _enrol(c, astro_variants, other_face)
        pid = eileen["id"]

        r = c.patch(f"/v1/people/{pid}", json={"name": "  Eileen M. Collins "})
        assert r.status_code == 200, r.text
        assert (r.json()["id"], r.json()["name"], r.json()["face_count"]) == (pid, "Eileen M. Collins", 3)
        assert [f["id"] for f in r.json()["faces"]] == [f["id"] for f in eileen["faces"]]
        assert c.get(f"/v1/people/{pid}").json()["name"] == "Eileen M. Collins"
        assert [p["name"] for p in c.get("/v1/people").json()["people"]] == ["Eileen M. Collins", "Other Person"]
        assert _named(c, astronaut) == [("recognized", "Eileen M. Collins", pid)]
        assert c.patch(f"/v1/people/{pid}", json={"name": "EILEEN M. COLLINS"}).status_code == 200  # her own name
        assert c.patch(f"/v1/people/{pid}", json={"name": "Eileen M. Collins"}).json()["name"] == "Eileen M. Collins"
        # The old name is free again (for a new person's enrolment the name check comes first: 409 before faces).
        assert c.post("/v1/people", json={"name": "eileen m. collins", "images": [b64(other_face)]}).status_code == 409

        before = _state(c)
        renames = len(_audit(c, "rename"))
        refused = [
            (other["id"], {"name": "eileen m. collins"}, 409, "person_exists"),  # another's name, in another case
            (other["id"], {"name": "\u0415ileen M. Collins"}, 409, "person_exists"),  # Cyrillic E: looks the same
            (other["id"], {"name": ""}, 422, "invalid_name"),
            (other["id"], {"name": "   "}, 422, "invalid_name"),
            (other["id"], {"name": "x" * 129}, 422, "invalid_name"),
            (other["id"], {"name": "a\u0000b"}, 422, "invalid_name"),
            (other["id"], {"name": "---"}, 422, "invalid_name"),
            (other["id"], {"name": 7}, 422, "invalid_request"),
            (other["id"], {"name": None}, 422, "invalid_request"),
            (other["id"], {}, 422, "invalid_request"),
            (other["id"], {"name": "Fine", "face_count": 9}, 422, "invalid_request"),  # no other field is taken
            (other["id"], ["Fine"], 422, "invalid_request"),
            (987654, {"name": "Nobody Here"}, 404, "person_not_found"),
            ("nine", {"name": "Nobody Here"}, 422, "invalid_request"),
            (0, {"name": "Nobody Here"}, 422, "invalid_request"),
            (2**63, {"name": "Nobody Here"}, 422, "invalid_request"),
        ]
        for who, body, status, code in refused:
            r = c.patch(f"/v1/people/{who}", json=body)
            assert (r.status_code, r.json()["code"]) == (status, code), (who, body, r.text)
            if code in ("person_exists", "invalid_name"):
                assert r.json()["field"] == "name"
            if code == "person_exists":
                assert "Eileen M. Collins" in r.json()["detail"] and f"id {pid}" in r.json()["detail"]
        for content, ctype in [(b"name=Fine", "application/x-www-form-urlencoded"), (b'{"name": "Fine"}', "text/plain")]:
            r = c.patch(f"/v1/people/{other['id']}", content=content, headers={"Content-Type": ctype})
            assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type"), r.text
        for content in (b'{"name": "Fine"', b"\xff\xfe", b"", b"[" * 40 + b"]" * 40):
            r = c.patch(f"/v1/people/{other['id']}", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and r.json()["code"] in ("invalid_request",), r.text
        assert _state(c) == before
        assert len(_audit(c, "rename")) == renames

        # Audited: who, which person; never a name.
        entries = _audit(c, "rename")
        assert len(entries) == 3 and {e["person_id"] for e in entries} == {pid}
        assert "Eileen" not in str(entries) and "Collins" not in str(entries)
    srv.stop()
    again = start_server(store.data_dir, *store.serve_args)
    with again.client() as c:
        assert c.get(f"/v1/people/{pid}").json()["name"] == "Eileen M. Collins"
        assert _named(c, astronaut) == [("recognized", "Eileen M. Collins", pid)]


# ------------------------------------------------------------------ delete one face
def test_delete_face_removes_every_trace(start_server, store, astro_variants, astronaut, other_face):
    srv = start_server(store.data_dir, *store.serve_args)
    with srv.client() as c:
        eileen, other = _enrol(c, astro_variants, other_face)
        pid, faces = eileen["id"], eileen["faces"]
        crops = {f["id"]: c.get(f["crop_url"]).content for f in faces}
        assert all(len(b) > 500 for b in crops.values())
        exported = {f["id"]: base64.b64decode(f["embedding"]) for p in c.get("/v1/export").json()["people"] for f in p["faces"]}
        assert c.get("/healthz").json()["gallery"]["faces"] == 4
        gone_id = faces[0]["id"]

        r = c.delete(f"/v1/faces/{gone_id}")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == gone_id and r.json()["purge"] == "done"
        assert (r.json()["person"]["id"], r.json()["person"]["name"], r.json()["person"]["face_count"]) == (pid, NAME, 2)

        def gone(client) -> None:
            person = client.get(f"/v1/people/{pid}").json()
            assert [f["id"] for f in person["faces"]] == [f["id"] for f in faces[1:]]
            assert person["face_count"] == 2
            r = client.get(faces[0]["crop_url"])
            assert r.status_code == 404 and r.json()["code"] == "face_not_found"
            assert all(client.get(f["crop_url"]).status_code == 200 for f in faces[1:])
            assert client.get(other["faces"][0]["crop_url"]).status_code == 200  # the other person is untouched
            assert client.get("/healthz").json()["gallery"] == {"people": 2, "faces": 3, "search": "exact"}
            export = client.get("/v1/export").json()["people"]
            assert gone_id not in [f["id"] for p in export for f in p["faces"]]
            assert _named(client, astronaut) == [("recognized", NAME, pid)]  # her other faces still answer

        gone(c)
        r = c.delete(f"/v1/faces/{gone_id}")  # once
        assert r.status_code == 404 and r.json()["code"] == "face_not_found"
        for bad, status in [("one", 422), (0, 422), (-3, 422), (2**63, 422), (987654, 404)]:
            r = c.delete(f"/v1/faces/{bad}")
            assert r.status_code == status and r.json()["code"] in ("invalid_request", "face_not_found"), r.text
        gone(c)
        entries = _audit(c, "delete_face")
        assert [(e["person_id"], e["detail"]) for e in entries] == [(pid, {"face": gone_id})]
    srv.stop()

    # And after a restart (index and database both forgot it), and in no file of the data directory.
    again = start_server(store.data_dir, *store.serve_args)
    with again.client() as c:
        gone(c)
        if store.kind == "sqlite":
            needles = [crops[gone_id], exported[gone_id]]
            held = [f.name for f in store.data_dir.rglob("*") if f.is_file() for n in needles if n in f.read_bytes()]
            assert held == []
            kept = exported[faces[1]["id"]]
            assert any(kept in f.read_bytes() for f in store.data_dir.rglob("*") if f.is_file())  # the check can see

        # Her last faces: she is kept, with none, and is never an answer; her name stays hers.
        for f in faces[1:]:
            assert c.delete(f"/v1/faces/{f['id']}").status_code == 200
        person = c.get(f"/v1/people/{pid}").json()
        assert (person["name"], person["face_count"], person["faces"]) == (NAME, 0, [])
        assert [(p["name"], p["face_count"]) for p in c.get("/v1/people").json()["people"]] == [(NAME, 0), ("Other Person", 1)]
        assert c.get("/healthz").json()["gallery"] == {"people": 2, "faces": 1, "search": "exact"}
        assert [s for s, _, _ in _named(c, astronaut)] == ["unknown"]
        assert c.post("/v1/people", json={"name": NAME.upper(), "images": [b64(other_face)]}).status_code == 409
        r = c.post(f"/v1/people/{pid}/faces", json={"images": [b64(astro_variants[0])]})  # and can be given faces again
        assert r.status_code == 200, r.text
        assert _named(c, astronaut) == [("recognized", NAME, pid)]


# ------------------------------------------------------------------ who may
def test_only_an_admin_key_may_rename_or_delete_a_face(start_server, tmp_path, astro_variants, other_face):
    data = tmp_path / "keyed"
    admin, client = new_key(data, "admin", "ops"), new_key(data, "client", "door")
    srv = start_server(data)
    with srv.client(headers=bearer(admin)) as c:
        eileen, _ = _enrol(c, astro_variants, other_face)
    face = eileen["faces"][0]["id"]
    with srv.client() as anyone, srv.client(headers=bearer(client)) as door:
        for who, status in [(anyone, 401), (door, 403)]:
            assert who.patch(f"/v1/people/{eileen['id']}", json={"name": "Taken Over"}).status_code == status
            assert who.delete(f"/v1/faces/{face}").status_code == status
    with srv.client(headers=bearer(admin)) as c:
        assert c.get(f"/v1/people/{eileen['id']}").json()["face_count"] == 3
        assert c.get(f"/v1/people/{eileen['id']}").json()["name"] == NAME
        assert c.patch(f"/v1/people/{eileen['id']}", json={"name": "Renamed By Admin"}).status_code == 200
        assert c.delete(f"/v1/faces/{face}").status_code == 200
        actors = {e["action"]: e["actor"] for e in c.get("/v1/audit").json()["entries"]}
        assert actors["rename"].startswith("key:") and actors["delete_face"].startswith("key:")


def test_the_routes_are_documented(start_server):
    srv = start_server()
    with srv.client() as c:
        spec = c.get("/openapi.json").json()
    patch = spec["paths"]["/v1/people/{person_id}"]["patch"]
    assert "application/json" in patch["requestBody"]["content"] and {"404", "409", "415", "422"} <= set(patch["responses"])
    assert "/v1/faces/{face_id}" in spec["paths"] and "delete" in spec["paths"]["/v1/faces/{face_id}"]
