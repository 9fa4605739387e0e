"""The versioned API (/v1) over real HTTP against a real `facegate serve` process and real models.

Most tests share the module's server, in which "Eileen Collins" (the astronaut) is enrolled once by
the ``eileen`` fixture and nobody else is ever enrolled (so other faces stay unknown). Tests that
need a gallery of their own (multipart enrolment, deletion) start a fresh server.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from conftest import b64

NAME = "Eileen Collins"


# ------------------------------------------------------------------ images
def jpeg(image: np.ndarray) -> bytes:
    return base64.b64decode(b64(image))


def resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((round(w * height / h), height), Image.BILINEAR)
    return np.asarray(resized)


def brighten(image: np.ndarray, gain: float = 1.25, bias: float = 12.0) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return np.full((200, 200, 3), 128, np.uint8)


@pytest.fixture(scope="module")
def astro(astronaut) -> np.ndarray:
    return np.ascontiguousarray(astronaut)


@pytest.fixture(scope="module")
def astro_variants(astro) -> list[np.ndarray]:
    """Three different photos of the astronaut: the whole frame, a head-and-shoulders crop, a mirror image."""
    return [astro, astro[0:320, 40:420], astro[:, ::-1]]


@pytest.fixture(scope="module")
def astro_shifted(astro) -> np.ndarray:
    """The astronaut moved 40 px right and 25 px down (edges padded) and brightened: another photo of her."""
    shifted = np.pad(astro, ((25, 0), (40, 0), (0, 0)), mode="edge")[:512, :512]
    return brighten(shifted)


@pytest.fixture(scope="module")
def two_faces(astro, other_face) -> np.ndarray:
    """The astronaut (head and shoulders, left) beside another person (right), both 300 px tall."""
    left = resize_to_height(astro[0:300, 60:390], 300)
    right = resize_to_height(np.ascontiguousarray(other_face), 300)
    return np.ascontiguousarray(np.concatenate([left, right], axis=1))


# ------------------------------------------------------------------ server and shared state
@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def eileen(http, astro_variants) -> dict:
    """Eileen Collins enrolled through the JSON body; the 201 response."""
    r = http.post("/v1/people", json={"name": NAME, "images": [b64(v) for v in astro_variants]})
    assert r.status_code == 201, r.text
    return r.json()


def people(http) -> list[dict]:
    r = http.get("/v1/people")
    assert r.status_code == 200, r.text
    return r.json()["people"]


def gallery(http) -> dict:
    return http.get("/healthz").json()["gallery"]


def files(field: str, images: list[np.ndarray]) -> list[tuple]:
    return [(field, (f"{field}-{i}.jpg", jpeg(img), "image/jpeg")) for i, img in enumerate(images)]


# ------------------------------------------------------------------ enrolment
def test_enroll_json_is_201_with_faces_and_crop_urls(eileen):
    assert isinstance(eileen["id"], int)
    assert eileen["name"] == NAME
    assert eileen["face_count"] == 3
    assert [f["source"] for f in eileen["faces"]] == ["images[0]", "images[1]", "images[2]"]
    for face in eileen["faces"]:
        assert face["crop_url"] == f"/v1/faces/{face['id']}/crop"
        assert face["created_at"]
    assert len({f["id"] for f in eileen["faces"]}) == 3


def test_enroll_multipart_then_add_faces_multipart(start_server, astro_variants, astro_shifted):
    srv = start_server()
    with srv.client() as c:
        r = c.post("/v1/people", data={"name": "Eileen Multipart"}, files=files("images", astro_variants[:2]))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["name"] == "Eileen Multipart"
        assert body["face_count"] == 2 and len(body["faces"]) == 2
        assert [f["source"] for f in body["faces"]] == ["images[0]", "images[1]"]
        assert all(f["crop_url"] == f"/v1/faces/{f['id']}/crop" for f in body["faces"])

        r = c.post(f"/v1/people/{body['id']}/faces", files=files("images", [astro_shifted]))
        assert r.status_code == 200, r.text
        assert r.json()["face_count"] == 3

        got = c.get(f"/v1/people/{body['id']}").json()
        assert got["face_count"] == 3 and len(got["faces"]) == 3
        assert c.get("/healthz").json()["gallery"]["faces"] == 3

        r = c.post("/v1/identify", files={"image": ("a.jpg", jpeg(astro_variants[0]), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["name"] == "Eileen Multipart"


def test_duplicate_name_is_409_and_changes_nothing(http, eileen, astro_variants):
    before = gallery(http)
    r = http.post("/v1/people", json={"name": NAME.lower(), "images": [b64(astro_variants[0])]})  # case-insensitive
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "person_exists"
    assert r.json()["field"] == "name"
    assert str(eileen["id"]) in r.json()["detail"]
    assert gallery(http) == before
    assert [p["name"] for p in people(http)].count(NAME) == 1


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_enroll_leaves_out_and_names_the_image_without_a_face(http, eileen, astro_variants, grey, kind):
    images = [astro_variants[0], grey, astro_variants[2]]
    name = f"Dropped {kind}"
    before_people, before_gallery = people(http), gallery(http)
    if kind == "json":  # Eileen's face under another name, on purpose
        r = http.post("/v1/people", json={"name": name, "images": [b64(i) for i in images], "allow_duplicate": True})
    else:
        r = http.post("/v1/people", data={"name": name, "allow_duplicate": "true"}, files=files("images", images))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["face_count"] == 2 and [f["source"] for f in body["faces"]] == ["images[0]", "images[2]"]
    assert [(d["field"], d["code"]) for d in body["dropped"]] == [("images[1]", "no_face")]
    assert http.delete(f"/v1/people/{body['id']}").status_code == 200
    # Only faceless images: 422 naming the first, nothing stored.
    if kind == "json":
        r = http.post("/v1/people", json={"name": name, "images": [b64(grey), b64(grey)]})
    else:
        r = http.post("/v1/people", data={"name": name}, files=files("images", [grey, grey]))
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["code"] == "no_face" and err["field"] == "images[0]" and "images[1]" in err["detail"]
    assert people(http) == before_people
    assert gallery(http) == before_gallery


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_enroll_more_than_ten_images_is_422(http, eileen, astro, kind):
    small = astro[60:220, 150:300]  # a face crop, a few kB as JPEG
    before = people(http)
    if kind == "json":
        r = http.post("/v1/people", json={"name": "Too Many", "images": [b64(small)] * 11})
    else:
        r = http.post("/v1/people", data={"name": "Too Many"}, files=files("images", [small] * 11))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "images"
    assert "11" in r.json()["detail"]
    assert people(http) == before


def test_enroll_many_more_multipart_files_is_still_422(http, eileen, astro):
    """Beyond the multipart parser's own file cap, the answer is still a 422 about images, not a bare 400."""
    small = astro[60:220, 150:300]
    r = http.post("/v1/people", data={"name": "Way Too Many"}, files=files("images", [small] * 20))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "images"
    assert all(p["name"] != "Way Too Many" for p in people(http))


def test_enroll_with_no_images_or_no_name_is_422(http, eileen, astro):
    before = people(http)
    r = http.post("/v1/people", json={"name": "Nobody", "images": []})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request" and r.json()["field"] == "images"

    r = http.post("/v1/people", json={"name": "Nobody"})
    assert r.status_code == 422 and r.json()["field"] == "images"

    r = http.post("/v1/people", json={"images": [b64(astro)]})
    assert r.status_code == 422 and r.json()["field"] == "name"

    # Multipart with only the name, and multipart with only files.
    r = http.post("/v1/people", data={"name": "Nobody"}, files={"other": ("x.txt", b"hello", "text/plain")})
    assert r.status_code == 422 and r.json()["field"] == "images"
    r = http.post("/v1/people", files=files("images", [astro]))
    assert r.status_code == 422 and r.json()["field"] == "name"
    assert people(http) == before


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "x" * 200])
def test_enroll_invalid_name_is_422_naming_name(http, eileen, astro, name):
    before = people(http)
    r = http.post("/v1/people", json={"name": name, "images": [b64(astro)]})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_name" and r.json()["field"] == "name"
    assert people(http) == before


def test_enroll_bad_base64_names_the_image(http, eileen, astro):
    r = http.post("/v1/people", json={"name": "Bad B64", "images": [b64(astro), "not base64 at all!"]})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_image" and r.json()["field"] == "images[1]"
    assert all(p["name"] != "Bad B64" for p in people(http))


# ------------------------------------------------------------------ people as a resource
def test_list_people(http, eileen):
    r = http.get("/v1/people")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["people"]) == 1
    (p,) = body["people"]
    assert p["id"] == eileen["id"] and p["name"] == NAME
    assert p["face_count"] == http.get(f"/v1/people/{eileen['id']}").json()["face_count"] >= 3
    assert "faces" not in p


def test_get_person(http, eileen):
    r = http.get(f"/v1/people/{eileen['id']}")
    assert r.status_code == 200
    got = r.json()
    assert got["name"] == NAME
    assert got["created_at"] == eileen["created_at"]
    assert [f["id"] for f in got["faces"]][:3] == [f["id"] for f in eileen["faces"]]


def test_unknown_person_is_404_json(http, eileen):
    r = http.get("/v1/people/987654")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["code"] == "person_not_found"
    assert "987654" in r.json()["detail"]


@pytest.mark.parametrize("bad", ["abc", "1.5", "1e3"])
def test_non_integer_person_id_is_422(http, bad):
    r = http.get(f"/v1/people/{bad}")
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"
    assert r.json()["field"] == "person_id"


def test_add_faces_grows_face_count(http, eileen, astro_shifted):
    before = http.get(f"/v1/people/{eileen['id']}").json()["face_count"]
    faces_before = gallery(http)["faces"]
    r = http.post(f"/v1/people/{eileen['id']}/faces", json={"images": [b64(astro_shifted)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == eileen["id"] and body["face_count"] == before + 1
    assert body["faces"][-1]["source"] == "images[0]"
    assert http.get(f"/v1/people/{eileen['id']}").json()["face_count"] == before + 1
    assert gallery(http)["faces"] == faces_before + 1


def test_add_faces_without_a_usable_face_changes_nothing(http, eileen, grey):
    before = http.get(f"/v1/people/{eileen['id']}").json()
    r = http.post(f"/v1/people/{eileen['id']}/faces", json={"images": [b64(grey), b64(grey)]})
    assert r.status_code == 422 and r.json()["field"] == "images[0]" and len(r.json()["dropped"]) == 2
    assert http.get(f"/v1/people/{eileen['id']}").json() == before


def test_add_faces_to_missing_person_is_404(http, eileen, astro):
    before = gallery(http)
    r = http.post("/v1/people/987654/faces", json={"images": [b64(astro)]})
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "person_not_found"
    r = http.post("/v1/people/987654/faces", files=files("images", [astro]))
    assert r.status_code == 404 and r.json()["code"] == "person_not_found"
    assert gallery(http) == before


# ------------------------------------------------------------------ face crops
def test_face_crops_are_112px_jpegs(http, eileen):
    crops = []
    for face in eileen["faces"]:
        r = http.get(face["crop_url"])
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/jpeg"
        img = Image.open(io.BytesIO(r.content))
        assert img.format == "JPEG" and img.size == (112, 112)
        arr = np.asarray(img.convert("RGB"), np.float32)
        assert arr.std() > 10  # an actual picture, not a blank
        crops.append(arr)
    # The mirrored photo's crop differs from the original's.
    assert np.abs(crops[0] - crops[2]).mean() > 1


def test_unknown_face_crop_is_404_json(http):
    r = http.get("/v1/faces/987654/crop")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["code"] == "face_not_found"
    assert http.get("/v1/faces/abc/crop").status_code == 422


# ------------------------------------------------------------------ identify
def _check_recognised(body: dict, eileen: dict, astronaut_face) -> None:
    assert body["model"] and 0 < body["threshold"] < 1
    assert len(body["faces"]) == 1
    f = body["faces"][0]
    assert f["status"] == "recognized"
    assert f["name"] == NAME and f["person_id"] == eileen["id"]
    assert f["similarity"] >= body["threshold"]
    assert 0.5 < f["score"] <= 1.0
    box = f["box"]
    x1, y1, x2, y2 = astronaut_face.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert box["x1"] < cx < box["x2"] and box["y1"] < cy < box["y2"]


def test_identify_multipart(http, eileen, astro, astronaut_face):
    r = http.post("/v1/identify", files={"image": ("photo.jpg", jpeg(astro), "image/jpeg")})
    assert r.status_code == 200, r.text
    _check_recognised(r.json(), eileen, astronaut_face)


def test_identify_json(http, eileen, astro, astronaut_face):
    r = http.post("/v1/identify", json={"image": b64(astro, "PNG")})
    assert r.status_code == 200, r.text
    _check_recognised(r.json(), eileen, astronaut_face)
    r2 = http.post("/v1/identify", json={"image": "data:image/png;base64," + b64(astro, "PNG")})
    assert r2.status_code == 200 and r2.json()["faces"][0]["name"] == NAME


def test_identify_two_faces_one_known_one_unknown(http, eileen, two_faces):
    r = http.post("/v1/identify", files={"image": ("pair.jpg", jpeg(two_faces), "image/jpeg")})
    assert r.status_code == 200, r.text
    faces = sorted(r.json()["faces"], key=lambda f: f["box"]["x1"])
    assert len(faces) == 2
    left, right = faces
    mid = two_faces.shape[1] / 2
    assert left["box"]["x2"] < mid + 20 and right["box"]["x1"] > mid - 20
    assert left["status"] == "recognized" and left["name"] == NAME and left["person_id"] == eileen["id"]
    assert right["status"] == "unknown" and right["name"] is None and right["person_id"] is None
    assert right["similarity"] < r.json()["threshold"] <= left["similarity"]


def test_identify_photo_without_face_is_empty(http, eileen, grey):
    for r in (
        http.post("/v1/identify", files={"image": ("grey.jpg", jpeg(grey), "image/jpeg")}),
        http.post("/v1/identify", json={"image": b64(grey)}),
    ):
        assert r.status_code == 200, r.text
        assert r.json()["faces"] == []


def test_identify_bad_input_is_422(http):
    r = http.post("/v1/identify", files={"picture": ("a.jpg", b"x", "image/jpeg")})
    assert r.status_code == 422 and r.json()["field"] == "image"
    r = http.post("/v1/identify", files={"image": ("a.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 422 and r.json()["code"] == "invalid_image" and r.json()["field"] == "image"
    r = http.post("/v1/identify", json={"image": "%%%"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_image"
    r = http.post("/v1/identify", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    r = http.post("/v1/identify", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    many = [("image", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(20)]
    r = http.post("/v1/identify", files=many)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    r = http.post("/v1/identify", json={"image": 12})
    assert r.status_code == 422 and r.json()["field"] == "image"


# ------------------------------------------------------------------ verify
def test_verify_same_person_json(http, astro, astro_shifted):
    r = http.post("/v1/verify", json={"image_a": b64(astro), "image_b": b64(astro_shifted)})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["same_person"] is True
    assert v["similarity"] >= v["threshold"] > 0
    assert v["model"]


def test_verify_different_people_json(http, astro, other_face):
    r = http.post("/v1/verify", json={"image_a": b64(astro), "image_b": b64(other_face)})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["same_person"] is False
    assert v["similarity"] < v["threshold"]


def test_verify_multipart(http, astro, astro_shifted, other_face):
    same = http.post(
        "/v1/verify",
        files={
            "image_a": ("a.jpg", jpeg(astro), "image/jpeg"),
            "image_b": ("b.jpg", jpeg(astro_shifted), "image/jpeg"),
        },
    )
    diff = http.post(
        "/v1/verify",
        files={"image_a": ("a.jpg", jpeg(astro), "image/jpeg"), "image_b": ("b.jpg", jpeg(other_face), "image/jpeg")},
    )
    assert same.status_code == diff.status_code == 200
    assert same.json()["same_person"] is True and diff.json()["same_person"] is False
    assert same.json()["similarity"] > diff.json()["similarity"]
    assert same.json()["threshold"] == diff.json()["threshold"]


def test_verify_errors_name_the_image(http, astro, grey):
    r = http.post("/v1/verify", json={"image_a": b64(astro), "image_b": b64(grey)})
    assert r.status_code == 422 and r.json()["code"] == "no_face" and r.json()["field"] == "image_b"
    r = http.post("/v1/verify", files={"image_a": ("a.jpg", jpeg(astro), "image/jpeg")})
    assert r.status_code == 422 and r.json()["field"] == "image_b"
    r = http.post("/v1/verify", json={"image_a": b64(astro)})
    assert r.status_code == 422 and r.json()["field"] == "image_b"


# ------------------------------------------------------------------ delete
def test_delete_person_removes_every_trace(start_server, astronaut_payloads, other_face):
    register, predict = astronaut_payloads
    srv = start_server()
    with srv.client() as c:
        r = c.post("/register", json=register)
        assert r.status_code == 200, r.text
        pid = r.json()["person_id"]
        other = c.post("/v1/people", json={"name": "Other Person", "images": [b64(other_face)]})
        assert other.status_code == 201, other.text
        assert c.post("/predict", json=predict).json()["user_name"] == NAME
        assert c.get("/healthz").json()["gallery"]["faces"] == 4
        crop_urls = [f["crop_url"] for f in c.get(f"/v1/people/{pid}").json()["faces"]]
        assert len(crop_urls) == 3 and all(c.get(u).status_code == 200 for u in crop_urls)

        r = c.delete(f"/v1/people/{pid}")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == pid and r.json()["name"] == NAME and r.json()["face_count"] == 3

        def gone(client) -> None:
            assert client.get(f"/v1/people/{pid}").status_code == 404
            assert all(p["id"] != pid for p in client.get("/v1/people").json()["people"])
            p = client.post("/predict", json=predict).json()
            assert p["user_name"] == "unknown" and p["status"] == "unknown" and p["person_id"] is None
            assert client.get("/healthz").json()["gallery"] == {"people": 1, "faces": 1, "search": "exact"}
            for u in crop_urls:
                r = client.get(u)
                assert r.status_code == 404 and r.json()["code"] == "face_not_found"
            # The other person is untouched.
            assert client.get(other.json()["faces"][0]["crop_url"]).status_code == 200

        gone(c)
        r = c.delete(f"/v1/people/{pid}")
        assert r.status_code == 404 and r.json()["code"] == "person_not_found"

    # And after a restart on the same data directory (index and database both forgot her).
    srv.stop()
    again = start_server(srv.data_dir)
    with again.client() as c:
        gone(c)


def test_delete_non_integer_id_is_422(http, eileen):
    r = http.delete("/v1/people/eileen")
    assert r.status_code == 422 and r.json()["field"] == "person_id"
    assert http.get(f"/v1/people/{eileen['id']}").status_code == 200


# ------------------------------------------------------------------ docs and routing
def test_docs_page(http):
    r = http.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "swagger" in r.text.lower() and "/openapi.json" in r.text


def test_openapi_lists_every_endpoint_and_both_body_kinds(http):
    r = http.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    paths = spec["paths"]
    for p in (
        "/register",
        "/predict",
        "/v1/identify",
        "/v1/people",
        "/v1/people/{person_id}",
        "/v1/people/{person_id}/faces",
        "/v1/verify",
        "/v1/faces/{face_id}/crop",
        "/healthz",
    ):
        assert p in paths, p
    assert {"get", "delete"} <= set(paths["/v1/people/{person_id}"])
    assert {"get", "post"} <= set(paths["/v1/people"])
    for p in ("/v1/identify", "/v1/people", "/v1/people/{person_id}/faces", "/v1/verify"):
        content = paths[p]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= set(content), p
    identify = paths["/v1/identify"]["post"]["requestBody"]["content"]
    assert "image" in identify["application/json"]["schema"]["properties"]
    assert identify["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    enroll = paths["/v1/people"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert enroll["properties"]["images"]["type"] == "array"


def test_unknown_route_is_404_json(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["detail"]
    assert r.json()["code"] == "not_found"


def test_wrong_method_is_405_json(http):
    for r in (http.get("/v1/identify"), http.put("/v1/people"), http.delete("/v1/verify")):
        assert r.status_code == 405
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["code"] == "method_not_allowed" and r.json()["detail"]
