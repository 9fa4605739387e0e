"""Enrolment as a person would meet it, over HTTP on a real server and through `facegate enroll`:
each photo that passes is kept and the others are listed (``dropped``); a face already enrolled as
someone else is refused with that person's name (409 ``looks_like``) unless the request allows it;
every identification answer says ``status``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import b64, facegate, said


def blurred(img: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), 8.0)


def jpeg(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from conftest import ServerProcess

    s = ServerProcess(tmp_path_factory.mktemp("enrol") / "data").start()
    yield s
    s.stop()


def test_v1_enrolment_keeps_good_photos_and_lists_the_others(srv, astronaut):
    a = np.ascontiguousarray(astronaut)
    files = [("images", ("a.jpg", jpeg(a), "image/jpeg")), ("images", ("grey.jpg", jpeg(np.full((240, 240, 3), 128, np.uint8)), "image/jpeg"))]
    files.append(("images", ("soft.jpg", jpeg(blurred(a)), "image/jpeg")))
    with srv.client() as c:
        r = c.post("/v1/people", data={"name": "Eileen"}, files=files)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["face_count"] == 1
        assert [(d["field"], d["code"]) for d in body["dropped"]] == [("images[1]", "no_face"), ("images[2]", "poor_quality")]
        assert "no face" in body["dropped"][0]["reasons"][0] and "blurred" in body["dropped"][1]["reasons"][0]
        pid = body["id"]
        # Adding photos: the good one is added, the poor one listed; none usable is 422 and nothing changes.
        r = c.post(f"/v1/people/{pid}/faces", json={"images": [b64(a[:, ::-1]), b64(blurred(a))]})
        assert r.status_code == 200, r.text
        assert r.json()["face_count"] == 2 and [d["field"] for d in r.json()["dropped"]] == ["images[1]"]
        r = c.post(f"/v1/people/{pid}/faces", json={"images": [b64(blurred(a))]})
        assert r.status_code == 422 and r.json()["code"] == "poor_quality" and r.json()["dropped"][0]["field"] == "images[0]"
        assert c.get(f"/v1/people/{pid}").json()["face_count"] == 2


def test_the_same_face_under_another_name_is_refused_unless_allowed(srv, astronaut, other_face):
    a = np.ascontiguousarray(astronaut)
    with srv.client() as c:
        eileen = next(p for p in c.get("/v1/people").json()["people"] if p["name"] == "Eileen")
        r = c.post("/v1/people", json={"name": "Al Video", "images": [b64(a[20:400, 60:460])]})
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["code"] == "looks_like" and body["person_id"] == eileen["id"] and body["name"] == "Eileen"
        assert body["similarity"] > 0.5 and "Eileen" in body["detail"]
        assert "Al Video" not in [p["name"] for p in c.get("/v1/people").json()["people"]]
        # The multipart form says the same; the override enrols.
        r = c.post("/v1/people", data={"name": "Al Video", "allow_duplicate": "true"}, files=[("images", ("a.jpg", jpeg(a), "image/jpeg"))])
        assert r.status_code == 201, r.text
        c.delete(f"/v1/people/{r.json()['id']}")
        # Another person is enrolled as usual; adding Eileen's face to them is refused (it matches Eileen better).
        other = c.post("/v1/people", json={"name": "Other", "images": [b64(other_face)]})
        assert other.status_code == 201, other.text
        r = c.post(f"/v1/people/{other.json()['id']}/faces", json={"images": [b64(a)]})
        assert r.status_code == 409 and r.json()["code"] == "looks_like" and r.json()["name"] == "Eileen"
        assert c.get(f"/v1/people/{other.json()['id']}").json()["face_count"] == 1
        r = c.post(f"/v1/people/{other.json()['id']}/faces", json={"images": [b64(a)], "allow_duplicate": True})
        assert r.status_code == 200 and r.json()["face_count"] == 2
        c.delete(f"/v1/people/{other.json()['id']}")
        # The reference /register: the same refusal, the seed fields unchanged, the override beside them.
        reg = {"user_name": "Eileen Again", "first_img": b64(a), "sec_img": b64(a[:, ::-1]), "third_img": b64(a[10:500, 10:500])}
        r = c.post("/register", json=reg)
        assert r.status_code == 409 and r.json()["code"] == "looks_like" and r.json()["person_id"] == eileen["id"]
        r = c.post("/register", json={**reg, "allow_duplicate": True})
        assert r.status_code == 200 and r.json()["faces"] == 3 and r.json()["dropped"] == []
        c.delete(f"/v1/people/{r.json()['person_id']}")
        r = c.post("/v1/people", json={"name": "X", "images": [b64(a)], "allow_duplicate": "maybe"})
        assert r.status_code == 422


def test_every_answer_says_status(srv, astronaut, other_face, astronaut_payloads):
    a = np.ascontiguousarray(astronaut)
    _, predict = astronaut_payloads
    with srv.client() as c:
        r = c.post("/v1/identify", json={"image": b64(a)}).json()
        assert [(f["status"], f["name"]) for f in r["faces"]] == [("recognized", "Eileen")]
        r = c.post("/v1/identify", json={"image": b64(other_face)}).json()
        assert [(f["status"], f["name"]) for f in r["faces"]] == [("unknown", None)]
        dark = (a.astype(np.float32) * 0.04).astype(np.uint8)
        r = c.post("/v1/identify", json={"image": b64(dark, "PNG")}).json()
        assert r["faces"] and all(f["status"] == "retry" and f["name"] is None and f["quality"]["reasons"] for f in r["faces"]), r
        assert c.post("/predict", json=predict).json()["status"] == "recognized"


def test_cli_enrolls_a_person_without_their_poor_photo(tmp_path, astronaut, other_face):
    a = np.ascontiguousarray(astronaut)
    people = tmp_path / "people"
    (people / "Eileen").mkdir(parents=True)
    (people / "Other").mkdir()
    Image.fromarray(a).save(people / "Eileen" / "1.jpg")
    Image.fromarray(a[:, ::-1].copy()).save(people / "Eileen" / "2.jpg")
    Image.fromarray(blurred(a)).save(people / "Eileen" / "3-soft.jpg")
    Image.fromarray(np.ascontiguousarray(other_face)).save(people / "Other" / "1.jpg")
    data = tmp_path / "data"
    proc = facegate("enroll", people, "--data", data)
    assert proc.returncode == 0, proc.stderr
    out = said(proc)
    assert "enrolled 2 people" in out and "Eileen/3-soft.jpg: left out: unclear face" in out and "blurred" in out, out
    listing = facegate("people", "list", "--data", data).stdout
    assert "Eileen" in listing and "Other" in listing
    # The same face in another person's folder: that person is skipped, named after whom it looks like.
    (people / "Al Video").mkdir()
    Image.fromarray(a[10:500, 10:500].copy()).save(people / "Al Video" / "1.jpg")
    proc = facegate("enroll", people, "--data", data)
    assert proc.returncode == 0 and "Al Video: not enrolled: 1.jpg: this face looks like Eileen" in said(proc), said(proc)
    # identify says status, in text and JSON; a face too poor to name is "retry" with its reasons, not "unknown (0.000)".
    Image.fromarray((a.astype(np.float32) * 0.04).astype(np.uint8)).save(tmp_path / "dark.png")
    Image.fromarray(a).save(tmp_path / "a.jpg")
    proc = facegate("identify", tmp_path / "a.jpg", tmp_path / "dark.png", "--data", data)
    lines = proc.stdout.splitlines()
    assert "Eileen (" in lines[0] and "dark.png: retry (" in lines[1] and "too dark" in lines[1], proc.stdout
    proc = facegate("identify", tmp_path / "dark.png", "--json", "--data", data)
    row = json.loads(proc.stdout.splitlines()[0])
    assert row["status"] == "retry" and "too dark" in row["reasons"][0]
