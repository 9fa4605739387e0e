"""Encryption at rest: with a key, no file of the data directory holds a face vector, a crop or a name in the clear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facegate.security.encryption import new_key
from facegate.errors import EncryptionError, PersonExistsError
from facegate.gallery.sqlite import Gallery, NewFace

DIM = 128
CROP = b"\xff\xd8\xff\xe0 a stand-in for an aligned JPEG crop, unique bytes 7f3a9c"


def _faces(rng: np.random.Generator, n: int, source: str = "img") -> list[NewFace]:
    """``n`` faces whose source labels are ``source`` + a number (an enrolment photo's file name, as
    `facegate enroll` stores it, holds the person's name: ``Xavier_Quincy_0001.jpg``)."""
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [NewFace(x, CROP + bytes([i]), f"{source}{i}") for i, x in enumerate(v)]


def _files_contain(data_dir: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            hits += [f"{path.name}: {n[:12]!r}" for n in needles if n in blob]
    return hits


def test_sealed_gallery_keeps_nothing_in_the_clear(tmp_path):
    key = new_key()
    faces = _faces(np.random.default_rng(1), 4, "Sealed_Person_000")
    g = Gallery(tmp_path, "m", DIM, exact_search_max=0, ann_index="hnsw", encryption_key=key, save_delay_s=0.0)
    p = g.add_person("Sealed Person", faces, "m")
    assert g.encrypted
    assert g.search(faces[0].embedding, 1)[0].person_id == p.id  # HNSW, in memory
    assert g.face_crop(p.faces[0].id) == faces[0].crop_jpeg
    assert [f.source for f in p.faces] == [f"Sealed_Person_000{i}" for i in range(4)]
    g.close()
    needles = [f.embedding.tobytes()[:32] for f in faces] + [CROP, b"Sealed Person", b"sealed person", b"Sealed_Person"]
    assert not _files_contain(tmp_path, needles)
    assert not (tmp_path / "faces.hnsw").exists()

    again = Gallery(tmp_path, "m", DIM, exact_search_max=0, ann_index="hnsw", encryption_key=key)
    try:
        assert [(n.person_id, n.name) for n in again.search(faces[2].embedding, 1)] == [(p.id, "Sealed Person")]
        # Names are still found and kept unique regardless of case, through their keyed hash.
        assert again.find_person("SEALED person").id == p.id and again.find_person("Sealed") is None
        with pytest.raises(PersonExistsError):
            again.add_person("sealed PERSON", _faces(np.random.default_rng(5), 1), "m")
        assert [q.name for q in again.list_people()] == ["Sealed Person"]
        assert [q.name for q, _ in again.export()] == ["Sealed Person"] == [again.get_person(p.id).name]
        # Source labels are opened for whoever holds the key.
        assert [f.source for f in again.get_person(p.id).faces] == [f"Sealed_Person_000{i}" for i in range(4)]
        assert [s for _, fs in again.export() for _, s, _, _ in fs] == [f"Sealed_Person_000{i}" for i in range(4)]
        # A person another instance enrolled, not yet in this one's memory: the name is opened from the column.
        other = Gallery(tmp_path, "m", DIM, exact_search_max=0, ann_index="hnsw", encryption_key=key)
        try:
            late = other.add_person("Late Comer", _faces(np.random.default_rng(7), 1), "m")
        finally:
            other.close()
        assert late.id not in again._names
        assert [q.name for q in again.list_people()] == ["Sealed Person", "Late Comer"] == [
            again.get_person(p.id).name, again.get_person(late.id).name]
    finally:
        again.close()


@pytest.mark.parametrize("earlier", ["names and sources plain", "sources plain"])
def test_a_gallery_sealed_before_names_were_has_them_sealed_when_opened(tmp_path, earlier):
    """Galleries encrypted by earlier versions kept names (and then faces' source labels) in the clear:
    the first open with the key seals them in place (and scrubs the file), and lookups go on working."""
    import sqlite3

    key = new_key()
    faces = _faces(np.random.default_rng(6), 2, "Early_Bird_000")
    g = Gallery(tmp_path, "m", DIM, encryption_key=key)
    p = g.add_person("Early Bird", faces, "m")
    g.close()
    con = sqlite3.connect(tmp_path / "gallery.sqlite3")  # back to an earlier format: plain values, no flag
    if earlier == "names and sources plain":
        con.execute("UPDATE people SET name = 'Early Bird', name_key = 'early bird'")
        con.execute("DELETE FROM meta WHERE key = 'names'")
    con.execute("UPDATE faces SET source = 'Early_Bird_000' || (id - 1)")
    con.execute("DELETE FROM meta WHERE key = 'sources'")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    assert _files_contain(tmp_path, [b"Early_Bird_0001"])

    again = Gallery(tmp_path, "m", DIM, encryption_key=key)
    try:
        assert again.find_person("early BIRD").id == p.id
        assert again.search(faces[1].embedding, 1)[0].name == "Early Bird"
        assert [f.source for f in again.get_person(p.id).faces] == ["Early_Bird_0000", "Early_Bird_0001"]
    finally:
        again.close()
    assert not _files_contain(tmp_path, [b"Early Bird", b"early bird", b"Early_Bird"])


@pytest.mark.parametrize("given", [None, "wrong", "malformed"])
def test_sealed_gallery_refuses_a_missing_or_wrong_key(tmp_path, given):
    g = Gallery(tmp_path, "m", DIM, encryption_key=new_key())
    g.add_person("A", _faces(np.random.default_rng(2), 1), "m")
    g.close()
    key = {"None": None, "wrong": new_key(), "malformed": "not-a-key"}[str(given)]
    with pytest.raises(EncryptionError) as err:
        Gallery(tmp_path, "m", DIM, encryption_key=key)
    assert "FACEGATE_ENCRYPTION_KEY" in err.value.message


def test_cli_seals_an_existing_plain_gallery(tmp_path):
    faces = _faces(np.random.default_rng(3), 3, "Plain_Person_000")
    g = Gallery(tmp_path, "m", DIM, exact_search_max=0, ann_index="hnsw", save_delay_s=0.0)
    p = g.add_person("Plain Person", faces, "m")
    g.close()
    needles = [f.embedding.tobytes()[:32] for f in faces] + [CROP, b"Plain Person", b"Plain_Person"]
    assert all(_files_contain(tmp_path, [n]) for n in needles), "a plain gallery stores vectors and names as they are"
    key = new_key()
    with pytest.raises(EncryptionError, match="gallery encrypt"):
        Gallery(tmp_path, "m", DIM, encryption_key=key)

    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")} | {"FACEGATE_ENCRYPTION_KEY": key}
    r = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "gallery", "encrypt", "--data", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert "sealed 3 faces" in r.stderr
    assert not _files_contain(tmp_path, needles)
    sealed = Gallery(tmp_path, "m", DIM, exact_search_max=0, encryption_key=key)
    try:
        assert sealed.search(faces[1].embedding, 1)[0].person_id == p.id
        assert sealed.find_person("PLAIN person").id == p.id
        assert [f.source for f in sealed.get_person(p.id).faces] == [f"Plain_Person_000{i}" for i in range(3)]
        assert sealed.audit_log(5)[0].action == "encrypt"
    finally:
        sealed.close()


def test_server_with_a_key_recognises_and_leaves_no_plain_face(start_server, tmp_path, astronaut_payloads):
    key = new_key()
    s = start_server(tmp_path / "sealed", env={"FACEGATE_ENCRYPTION_KEY": key, "FACEGATE_EXACT_SEARCH_MAX": "0"})
    register, predict = astronaut_payloads
    with s.client() as c:
        assert c.post("/register", json=register).status_code == 200
        assert c.post("/predict", json=predict).json()["user_name"] == "Eileen Collins"
        vectors = [f["embedding"] for p in c.get("/v1/export").json()["people"] for f in p["faces"]]
        crop = c.get("/v1/faces/1/crop").content
    s.stop()
    import base64

    needles = [base64.b64decode(v)[:32] for v in vectors] + [crop[-64:], b"Eileen Collins", b"eileen collins"]
    assert len(needles) == 6 and not _files_contain(tmp_path / "sealed", needles)
    s2 = start_server(tmp_path / "sealed", env={"FACEGATE_ENCRYPTION_KEY": key, "FACEGATE_EXACT_SEARCH_MAX": "0"})
    with s2.client() as c:
        assert c.post("/predict", json=predict).json()["user_name"] == "Eileen Collins"


def test_cli_enrolment_with_a_key_leaves_no_file_name(tmp_path, astronaut):
    """The attack: `facegate enroll people/` with a key kept '..._Xavier_Quincy_0001.jpg' in the clear (faces.source)."""
    from PIL import Image

    person = tmp_path / "people" / "Xavier Quincy"
    person.mkdir(parents=True)
    Image.fromarray(np.ascontiguousarray(astronaut)).save(person / "Xavier_Quincy_0001.jpg", quality=95)
    data = tmp_path / "data"
    key = new_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")} | {"FACEGATE_ENCRYPTION_KEY": key}
    r = subprocess.run([sys.executable, "-m", "facegate.cli", "enroll", str(tmp_path / "people"), "--data", str(data)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    g = Gallery.open_existing(data, encryption_key=key)
    try:
        (p,) = g.list_people()
        assert p.name == "Xavier Quincy"
        assert [f.source for f in g.get_person(p.id).faces] == ["Xavier_Quincy_0001.jpg"]
    finally:
        g.close()
    assert not _files_contain(data, [b"Xavier_Quincy", b"Xavier Quincy", b"xavier quincy", b"Xavier"])
