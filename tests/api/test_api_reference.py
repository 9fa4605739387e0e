"""The reference clients' API over real HTTP: POST /register and POST /predict with the seed's exact JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import b64


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


def people_count(http) -> int:
    return http.get("/v1/people").json()["count"]


def test_healthz_reports_model_threshold_and_tta(http):
    h = http.get("/healthz").json()
    assert h["status"] == "ok"
    assert h["model"] == "sface-2021dec/tta-sum"
    assert h["tta"] in ("none", "concat", "sum")
    assert 0.0 < h["threshold"] < 1.0
    assert (h["landmarks"], h["fallback_detector"], h["quality_gate"]) == ("yunet", "yunet", True)
    assert h["gallery"] == {"people": 0, "faces": 0, "search": "exact"}


def test_predict_on_empty_gallery_is_unknown(http, astronaut_payloads):
    _, predict = astronaut_payloads
    r = http.post("/predict", json=predict)
    assert r.status_code == 200, r.text
    assert r.json()["user_name"] == "unknown"
    assert r.json()["similarity"] == 0.0


def test_register_then_predict_recognises(http, astronaut_payloads):
    register, predict = astronaut_payloads
    r = http.post("/register", json=register)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_name"] == "Eileen Collins" and body["faces"] == 3 and body["status"] == "registered"

    r = http.post("/predict", json=predict)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["user_name"] == "Eileen Collins"
    assert p["status"] == "recognized"
    assert p["similarity"] >= p["threshold"]
    assert p["person_id"] == body["person_id"]


def test_predict_without_keypoints_and_with_data_url(http, astronaut_payloads):
    _, predict = astronaut_payloads
    bare = {"file_name": "x.jpg", "image": "data:image/jpeg;base64," + predict["image"]}
    r = http.post("/predict", json=bare)
    assert r.status_code == 200, r.text
    assert r.json()["user_name"] == "Eileen Collins"
    assert r.json()["landmarks"] == "detector"


def test_predict_whole_photo_also_works(http, astronaut):
    r = http.post("/predict", json={"file_name": "full.png", "image": b64(np.ascontiguousarray(astronaut), "PNG")})
    assert r.status_code == 200
    assert r.json()["user_name"] == "Eileen Collins"


def test_stranger_is_unknown(http, other_face, detector):
    from facegate.clients.http import predict_payload
    from facegate.vision.detect import pick_main_face

    face = pick_main_face(detector.detect(other_face), other_face.shape)
    r = http.post("/predict", json=predict_payload(np.ascontiguousarray(other_face), face, margin=0.25))
    assert r.status_code == 200
    assert r.json()["user_name"] == "unknown"
    assert r.json()["status"] == "unknown"
    assert r.json()["similarity"] < r.json()["threshold"]


def test_register_same_name_again_is_409_and_changes_nothing(http, astronaut_payloads):
    register, _ = astronaut_payloads
    before = http.get("/healthz").json()["gallery"]
    r = http.post("/register", json={**register, "user_name": "eileen collins"})  # case-insensitive
    assert r.status_code == 409
    assert r.json()["code"] == "person_exists"
    assert http.get("/healthz").json()["gallery"] == before


@pytest.mark.parametrize("bad_field", ["first_img", "sec_img", "third_img"])
def test_register_leaves_out_and_names_the_photo_without_a_face(http, astronaut_payloads, bad_field):
    register, _ = astronaut_payloads
    before = http.get("/healthz").json()["gallery"]
    grey = b64(np.full((200, 200, 3), 128, np.uint8))
    # The same face as Eileen Collins, enrolled on purpose under another name.
    body = {**register, "user_name": f"Someone {bad_field}", bad_field: grey, "allow_duplicate": True}
    r = http.post("/register", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["faces"] == 2 and [(d["field"], d["code"]) for d in r.json()["dropped"]] == [(bad_field, "no_face")]
    assert "no face" in r.json()["dropped"][0]["reasons"][0]
    assert http.delete(f"/v1/people/{r.json()['person_id']}").status_code == 200
    # No photo with a face: 422 naming the first, nothing stored.
    r = http.post("/register", json={**body, "first_img": grey, "sec_img": grey, "third_img": grey})
    assert r.status_code == 422 and r.json()["code"] == "no_face" and r.json()["field"] == "first_img"
    assert [d["field"] for d in r.json()["dropped"]] == ["first_img", "sec_img", "third_img"]
    assert http.get("/healthz").json()["gallery"] == before
    assert all(p["name"] != body["user_name"] for p in http.get("/v1/people").json()["people"])


def test_eye_points_align_a_crop_the_detector_cannot_see(http, astronaut, astronaut_face):
    """A strip around the eyes defeats BlazeFace; the client's eye points still align it (2-point transform)."""
    img = np.ascontiguousarray(astronaut)
    x1, _, x2, _ = (int(v) for v in astronaut_face.box)
    eyes = astronaut_face.eyes
    top, bottom = int(eyes[:, 1].min()) - 10, int(eyes[:, 1].max()) + 10
    crop = img[top:bottom, x1:x2]
    local = eyes - np.array([x1, top])
    body = {
        "file_name": "strip.jpg",
        "image": b64(crop),
        "keypoints_x1": float(local[1, 0]),  # deliberately swapped: the server orders them itself
        "keypoints_y1": float(local[1, 1]),
        "keypoints_x2": float(local[0, 0]),
        "keypoints_y2": float(local[0, 1]),
    }
    r = http.post("/predict", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["landmarks"] == "eyes", json.dumps(r.json())  # the answer (box, quality) says what was detected if not
    assert isinstance(r.json()["similarity"], float)

    # Eye points far outside the image are refused, not trusted.
    r = http.post("/predict", json={**body, "keypoints_x1": 5000.0, "keypoints_x2": 5050.0})
    assert r.status_code == 422 and r.json()["code"] == "no_face"
    # Without eye points and without a detectable face, it is a clear 422.
    r = http.post("/predict", json={"file_name": "grey.jpg", "image": b64(np.full((60, 90, 3), 90, np.uint8))})
    assert r.status_code == 422 and r.json()["code"] == "no_face"
