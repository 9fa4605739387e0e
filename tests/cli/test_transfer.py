"""`facegate import EXPORT.json`: what GET /v1/export gave, enrolled in another gallery: the same people,
the same vectors (and crops), the same answers; a file it cannot take is refused whole, changing nothing."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from conftest import b64, facegate, said

from facegate.cli import transfer
from facegate.gallery.sqlite import DB_NAME, Gallery, NewFace


@pytest.fixture(scope="module")
def pictures(astronaut, other_face) -> dict[str, np.ndarray]:
    a = np.ascontiguousarray(astronaut)
    o = np.ascontiguousarray(other_face)
    import cv2

    h = 300
    left = cv2.resize(a[0:300, 60:390], (330, h))
    right = cv2.resize(o, (int(o.shape[1] * h / o.shape[0]), h))
    return {
        "astronaut": a,
        "astronaut crop": np.ascontiguousarray(a[0:320, 40:420]),
        "mirrored": np.ascontiguousarray(a[:, ::-1]),
        "other": o,
        "both": np.ascontiguousarray(np.concatenate([left, right], axis=1)),
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory, pictures):
    """A served gallery with two people (3 + 1 faces), its exports with and without crops, and its answers."""
    from conftest import ServerProcess

    root = tmp_path_factory.mktemp("transfer")
    srv = ServerProcess(root / "source").start()
    try:
        with srv.client() as c:
            r = c.post("/v1/people", json={"name": "Eileen Collins", "images": [b64(pictures[k]) for k in ("astronaut", "astronaut crop", "mirrored")]})
            assert r.status_code == 201, r.text
            r = c.post("/v1/people", json={"name": "Other Person", "images": [b64(pictures["other"])]})
            assert r.status_code == 201, r.text
            plain, with_crops = c.get("/v1/export"), c.get("/v1/export", params={"crops": "true"})
            assert plain.status_code == with_crops.status_code == 200
            crops = {f["id"]: c.get(f"/v1/faces/{f['id']}/crop").content for p in plain.json()["people"] for f in p["faces"]}
            answers = {k: _answers(c, img) for k, img in pictures.items()}
        assert [a[:2] for a in answers["astronaut"]] == [("recognized", "Eileen Collins")]
        assert [a[:2] for a in answers["other"]] == [("recognized", "Other Person")]
        assert sorted(a[1] for a in answers["both"]) == ["Eileen Collins", "Other Person"]
        files = {"plain": root / "export.json", "crops": root / "export-crops.json"}
        files["plain"].write_text(plain.text)
        files["crops"].write_text(with_crops.text)
        yield {"root": root, "export": plain.json(), "files": files, "crops": crops, "answers": answers}
    finally:
        srv.stop()


def _answers(c, image: np.ndarray) -> list:
    r = c.post("/v1/identify", json={"image": b64(image)})
    assert r.status_code == 200, r.text
    return [(f["status"], f["name"], f["similarity"], f["box"]) for f in r.json()["faces"]]


def _people(export: dict) -> list:
    """What must survive a move: names, and each face's vector and source label, in order (not ids or times)."""
    return [(p["name"], [(f["embedding"], f["source"]) for f in p["faces"]]) for p in export["people"]]


def test_export_with_crops_holds_them(source):
    with_crops = json.loads(source["files"]["crops"].read_text())
    assert _people(with_crops) == _people(source["export"])
    got = {f["id"]: base64.b64decode(f["crop"]) for p in with_crops["people"] for f in p["faces"]}
    assert got == source["crops"] and all(v.startswith(b"\xff\xd8") for v in got.values())
    assert all(f["crop"] is None for p in source["export"]["people"] for f in p["faces"])  # not asked: not sent


@pytest.mark.parametrize("kind", ["crops", "plain"])
def test_round_trip_same_people_same_vectors_same_answers(source, pictures, start_server, tmp_path, kind):
    target = tmp_path / "target"
    proc = facegate("import", source["files"][kind], "--data", target)
    assert proc.returncode == 0, said(proc)
    assert "imported 2 people, 4 faces" in proc.stdout
    srv = start_server(target)
    with srv.client() as c:
        moved = c.get("/v1/export").json()
        assert (moved["model"], moved["dim"]) == (source["export"]["model"], source["export"]["dim"])
        assert _people(moved) == _people(source["export"])
        for name, img in pictures.items():
            assert _answers(c, img) == source["answers"][name], name
        faces = [f for p in moved["people"] for f in p["faces"]]
        crops = [c.get(f"/v1/faces/{f['id']}/crop") for f in faces]
        if kind == "crops":
            assert [r.content for r in crops] == list(source["crops"].values())  # the same crops, in order
        else:
            assert all(r.status_code == 404 for r in crops)
        log = [e for e in c.get("/v1/audit").json()["entries"] if e["action"] != "crop_read"]  # the reads above, counted
        assert [e["action"] for e in log][:3] == ["export", "import", "enroll"]
        assert log[1]["detail"] == {"people": 2, "faces": 4, "crops": 4 if kind == "crops" else 0}
        assert log[1]["actor"].startswith("cli:")


def test_names_already_enrolled_refuse_the_import_or_are_skipped(source, tmp_path):
    target = tmp_path / "target"
    g = Gallery(target, source["export"]["model"], source["export"]["dim"])
    v = np.zeros(source["export"]["dim"], np.float32)
    v[0] = 1.0
    g.add_person("OTHER PERSON", [NewFace(v)], source["export"]["model"])  # the same name, another case
    g.close()
    proc = facegate("import", source["files"]["plain"], "--data", target)
    assert proc.returncode == 1 and "already enrolled" in said(proc) and "nothing imported" in said(proc), said(proc)
    assert _names(target) == ["OTHER PERSON"]
    proc = facegate("import", source["files"]["plain"], "--data", target, "--existing", "skip")
    assert proc.returncode == 0, said(proc)
    assert "imported 1 people, 3 faces" in proc.stdout and "1 already enrolled, skipped" in proc.stdout
    assert _names(target) == ["OTHER PERSON", "Eileen Collins"]


def _names(data) -> list[str]:
    g = Gallery.open_existing(data)
    try:
        return [p.name for p in g.list_people()]
    finally:
        g.close()


def test_another_model_is_refused_and_nothing_is_made(source, tmp_path):
    bad = json.loads(source["files"]["plain"].read_text())
    bad["model"] = "adaface-ir50/tta-normsum"
    path = tmp_path / "other-model.json"
    path.write_text(json.dumps(bad))
    target = tmp_path / "target"
    proc = facegate("import", path, "--data", target)
    assert proc.returncode == 1, said(proc)
    assert "adaface-ir50/tta-normsum" in said(proc) and source["export"]["model"] in said(proc)
    assert not (target / DB_NAME).exists()
    # A gallery of another model here: refused too, and left as it was.
    g = Gallery(target, "other-model/v2", source["export"]["dim"])
    v = np.zeros(source["export"]["dim"], np.float32)
    v[1] = 1.0
    g.add_person("Keeper", [NewFace(v)], "other-model/v2")
    g.close()
    proc = facegate("import", source["files"]["plain"], "--data", target)
    assert proc.returncode == 1 and "other-model/v2" in said(proc), said(proc)
    assert _names(target) == ["Keeper"]


def _mutations(export: dict) -> dict[str, tuple[object, str]]:
    """name -> (file content, what the refusal says): each a broken copy of a good export."""

    def change(fn):
        e = json.loads(json.dumps(export))
        fn(e)
        return json.dumps(e)

    face = ("people", 0, "faces", 0)
    dim = export["dim"]
    return {
        "not json": ("{not json", "not a FaceGate export"),
        "not an export": (json.dumps({"people": []}), "model"),
        "embedding not base64": (change(lambda e: e["people"][0]["faces"][0].update(embedding="@@@")), "not base64"),
        "embedding too short": (
            change(lambda e: e["people"][0]["faces"][0].update(embedding=base64.b64encode(b"\0" * 8).decode())),
            "8 bytes",
        ),
        "embedding not unit": (
            change(lambda e: e["people"][0]["faces"][0].update(embedding=base64.b64encode(np.full(dim, 2, "<f4").tobytes()).decode())),
            "unit vector",
        ),
        "embedding nan": (
            change(lambda e: e["people"][0]["faces"][0].update(embedding=base64.b64encode(np.full(dim, np.nan, "<f4").tobytes()).decode())),
            "unit vector",
        ),
        "crop not a jpeg": (
            change(lambda e: e["people"][0]["faces"][0].update(crop=base64.b64encode(b"GIF89a...").decode())),
            "not a JPEG",
        ),
        "blank name": (change(lambda e: e["people"][0].update(name="   ")), "name must not be empty"),
        "look-alike names": (change(lambda e: e["people"][1].update(name="EILEEN COLLINS")), "also in the file"),
        "name not a string": (change(lambda e: e["people"][0].update(name=5)), "people.0.name"),
        "dim wrong": (change(lambda e: e.update(dim=dim + 1)), "bytes"),
    }


def test_a_broken_file_is_refused_whole(source, tmp_path):
    """Each broken copy of a good export is refused (exit 2) naming the problem, and nothing is enrolled
    (checked in process: the same code the command runs, without loading a model per case)."""
    for name, (content, says) in _mutations(source["export"]).items():
        path = tmp_path / "broken.json"
        path.write_text(content)
        with pytest.raises(transfer.ExportFileError) as ei:
            transfer.check_people(transfer.read_export(path), 128)
        assert says in ei.value.message, (name, ei.value.message)
    # The command itself: exit 2, one line, and no gallery made.
    path = tmp_path / "broken.json"
    path.write_text(_mutations(source["export"])["embedding not unit"][0])
    target = tmp_path / "target"
    proc = facegate("import", path, "--data", target)
    assert proc.returncode == 2 and "unit vector" in proc.stderr and proc.stderr.count("error:") == 1, said(proc)
    assert not target.exists()
    proc = facegate("import", tmp_path / "missing.json", "--data", target)
    assert proc.returncode == 2 and "cannot be read" in said(proc)
    assert not target.exists()


def test_a_person_without_faces_is_said_not_enrolled(source, tmp_path):
    e = json.loads(source["files"]["plain"].read_text())
    e["people"][1]["faces"] = []
    people, empty = transfer.check_people(_validate(e), 128)
    assert [p.name for p in people] == ["Eileen Collins"] and empty == ["Other Person"]


def _validate(e: dict):
    from facegate.api.schemas import GalleryExport

    return GalleryExport.model_validate(e)


def test_import_into_postgresql(source, pg_database):
    from facegate.gallery.postgres import PgGallery

    url = pg_database()
    proc = facegate("import", source["files"]["crops"], "--gallery", url)
    assert proc.returncode == 0 and "imported 2 people, 4 faces (4 with crops)" in proc.stdout, said(proc)
    g = PgGallery.open_existing(url)
    try:
        assert g.model_id == source["export"]["model"]
        moved = [(p.name, [(base64.b64encode(v).decode(), src) for _, src, _, v in faces]) for p, faces in g.export()]
        assert moved == _people(source["export"])
        assert [c for _, c in g.stored_crops()] == list(source["crops"].values())
    finally:
        g.close()
