"""Renaming a person and deleting one face, on every backend (SQLite with the PQ scan or hnswlib beyond
exact search, and PostgreSQL + pgvector): the rules of enrolment for names, audited, and a deleted face
is gone from every read, every search and (embedded) every file."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_store
from facegate.errors import FaceNotFoundError, InvalidNameError, PersonExistsError, PersonNotFoundError
from facegate.gallery.sqlite import Gallery, NewFace
from facegate.security.encryption import new_key

DIM = 32
MODEL = "edit-test-model"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def faces(vectors, tag: str = "crop") -> list[NewFace]:
    return [NewFace(np.asarray(v, np.float32), f"{tag} {i} \xa7 bytes".encode(), f"{tag}_{i}.jpg") for i, v in enumerate(vectors)]


@pytest.fixture(params=["sqlite", "sqlite-hnsw", "postgres"])
def store(request, tmp_path):
    return make_store(request, tmp_path, request.param)


@pytest.fixture
def gal(store):
    g = store.open(MODEL, DIM, exact_search_max=0)  # beyond exact search: the index answers
    yield g
    g.close()


def _audit(g, action: str) -> list:
    return [e for e in g.audit_log(1000) if e.action == action]


# ----------------------------------------------------------------------------- rename
def test_rename_changes_the_name_everywhere(gal):
    rng = np.random.default_rng(1)
    v = unit(rng, 3)
    ada = gal.add_person("Ada", faces(v[:2]), MODEL)
    bob = gal.add_person("Bob", faces(v[2:]), MODEL)

    after = gal.rename_person(ada.id, "  Ada Lovelace ")
    assert (after.id, after.name, after.face_count) == (ada.id, "Ada Lovelace", 2)
    assert [f.id for f in after.faces] == [f.id for f in ada.faces]  # the faces stay
    assert gal.get_person(ada.id).name == "Ada Lovelace"
    assert [(p.id, p.name) for p in gal.list_people()] == [(ada.id, "Ada Lovelace"), (bob.id, "Bob")]
    assert gal.find_person("ada lovelace").id == ada.id and gal.find_person("Ada") is None
    assert [(n.person_id, n.name) for n in gal.search(v[0], 1, exact=False)] == [(ada.id, "Ada Lovelace")]
    assert [(n.person_id, n.name) for n in gal.search(v[0], 1, exact=True)] == [(ada.id, "Ada Lovelace")]
    assert [p.name for p, _ in gal.export()] == ["Ada Lovelace", "Bob"]
    # The old name is free again; the new one is taken.
    assert gal.add_person("ada", faces(unit(rng, 1)), MODEL).name == "ada"
    with pytest.raises(PersonExistsError):
        gal.ensure_name_free("ADA LOVELACE")
    # Audited, by id only: the log never holds a name.
    entries = _audit(gal, "rename")
    assert [e.person_id for e in entries] == [ada.id]
    assert "Ada" not in repr(entries) and "Lovelace" not in repr(entries)


def test_a_person_may_take_their_own_name_in_another_case(gal):
    p = gal.add_person("eileen collins", faces(unit(np.random.default_rng(2), 1)), MODEL)
    assert gal.rename_person(p.id, "Eileen Collins").name == "Eileen Collins"
    assert gal.rename_person(p.id, "Eileen Collins").name == "Eileen Collins"  # the same name again
    assert gal.find_person("EILEEN COLLINS").id == p.id


@pytest.mark.parametrize("taken", ["bob", "BOB", "\uff22\uff4f\uff42", "B\u043eb"])  # case, fullwidth, Cyrillic o
def test_rename_to_another_persons_name_is_refused_and_changes_nothing(gal, taken):
    rng = np.random.default_rng(3)
    ada = gal.add_person("Ada", faces(unit(rng, 1)), MODEL)
    bob = gal.add_person("Bob", faces(unit(rng, 1)), MODEL)
    with pytest.raises(PersonExistsError) as ei:
        gal.rename_person(ada.id, taken)
    assert "'Bob'" in ei.value.message and f"id {bob.id}" in ei.value.message, ei.value.message
    assert [p.name for p in gal.list_people()] == ["Ada", "Bob"]
    assert gal.find_person("Ada").id == ada.id
    assert _audit(gal, "rename") == []


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", "x" * 129, "---", "\u3164", "X\ud800Y", 42])
def test_rename_to_a_bad_name_is_refused_and_changes_nothing(gal, bad):
    p = gal.add_person("Ada", faces(unit(np.random.default_rng(4), 1)), MODEL)
    with pytest.raises(InvalidNameError):
        gal.rename_person(p.id, bad)
    assert gal.get_person(p.id).name == "Ada" and gal.find_person("ada").id == p.id
    assert _audit(gal, "rename") == []


def test_rename_of_nobody_is_not_found(gal):
    with pytest.raises(PersonNotFoundError):
        gal.rename_person(12345, "Nobody")
    assert gal.list_people() == []


# ----------------------------------------------------------------------------- delete one face
def test_delete_face_removes_it_from_every_read_and_search(gal):
    rng = np.random.default_rng(5)
    v = unit(rng, 4)
    ada = gal.add_person("Ada", faces(v[:3], "ada"), MODEL)
    bob = gal.add_person("Bob", faces(v[3:], "bob"), MODEL)
    gone = ada.faces[1].id
    assert gal.search(v[1], 1, exact=False)[0].face_id == gone

    after = gal.delete_face(gone)
    assert (after.id, after.name, after.face_count) == (ada.id, "Ada", 2)
    assert [f.id for f in after.faces] == [ada.faces[0].id, ada.faces[2].id]
    assert gal.get_person(ada.id).face_count == 2
    assert gal.face_crop(gone) is None and gal.face_crop(ada.faces[0].id) == b"ada 0 \xc2\xa7 bytes"
    assert gal.stats()[:2] == (2, 3)
    for exact in (True, False):
        assert all(n.face_id != gone for n in gal.search(v[1], 4, exact=exact))
        assert gal.search(v[0], 1, exact=exact)[0].face_id == ada.faces[0].id  # the others still answer
        assert gal.search(v[3], 1, exact=exact)[0].person_id == bob.id
    exported = dict((p.id, [f[0] for f in fs]) for p, fs in gal.export())
    assert exported == {ada.id: [ada.faces[0].id, ada.faces[2].id], bob.id: [bob.faces[0].id]}
    assert [(e.person_id, e.detail) for e in _audit(gal, "delete_face")] == [(ada.id, {"face": gone})]

    with pytest.raises(FaceNotFoundError):  # once
        gal.delete_face(gone)
    with pytest.raises(FaceNotFoundError):
        gal.delete_face(987654)
    assert gal.stats()[:2] == (2, 3) and len(_audit(gal, "delete_face")) == 1


def test_a_person_whose_last_face_is_deleted_is_kept_with_none(gal):
    rng = np.random.default_rng(6)
    v = unit(rng, 2)
    ada = gal.add_person("Ada", faces(v[:1]), MODEL)
    gal.add_person("Bob", faces(v[1:]), MODEL)
    left = gal.delete_face(ada.faces[0].id)
    assert (left.name, left.face_count, left.faces) == ("Ada", 0, ())
    assert [(p.name, p.face_count) for p in gal.list_people()] == [("Ada", 0), ("Bob", 1)]
    assert gal.stats()[:2] == (2, 1)
    assert all(n.person_id != ada.id for n in gal.search(v[0], 5))
    with pytest.raises(PersonExistsError):  # the name stays theirs
        gal.add_person("ada", faces(unit(rng, 1)), MODEL)
    again = gal.add_faces(ada.id, faces(v[:1]), MODEL)  # and they can be given faces again
    assert again.face_count == 1 and gal.search(v[0], 1)[0].person_id == ada.id


def test_edits_reach_another_open_gallery(store):
    """Two servers (processes) on one gallery: a rename and a deleted face made through one are what
    the other answers next; the embedded one catches up from the change log, without a full reload."""
    rng = np.random.default_rng(7)
    v = unit(rng, 3)
    a, b = store.open(MODEL, DIM, exact_search_max=0), store.open(MODEL, DIM, exact_search_max=0)
    try:
        ada = a.add_person("Ada", faces(v[:2]), MODEL)
        assert b.search(v[0], 1)[0].name == "Ada"
        loads = getattr(b, "full_loads", 0)
        a.rename_person(ada.id, "Ada King")
        a.delete_face(ada.faces[1].id)
        assert [(n.person_id, n.name) for n in b.search(v[0], 1)] == [(ada.id, "Ada King")]
        assert all(n.face_id != ada.faces[1].id for n in b.search(v[1], 3))
        assert b.get_person(ada.id).name == "Ada King" and [p.name for p in b.list_people()] == ["Ada King"]
        assert b.get_person(ada.id).face_count == 1 and b.stats()[:2] == (1, 1)
        assert getattr(b, "full_loads", 0) == loads
        # and back: b renames, a answers with it (its own write then lands after b's)
        b.rename_person(ada.id, "Augusta")
        assert a.get_person(ada.id).name == "Augusta" and a.search(v[0], 1)[0].name == "Augusta"
        with pytest.raises(FaceNotFoundError):
            b.delete_face(ada.faces[1].id)
    finally:
        a.close()
        b.close()
    c = store.open(MODEL, DIM, exact_search_max=0)  # a restart: the database holds all of it
    try:
        assert [(p.name, p.face_count) for p in c.list_people()] == [("Augusta", 1)]
        assert all(n.face_id != ada.faces[1].id for n in c.search(v[1], 3))
    finally:
        c.close()


# ----------------------------------------------------------------------------- embedded: the files
def _on_disk(data_dir, needles: list[bytes]) -> list[str]:
    return [f"{f.name}: {n[:12]!r}" for f in data_dir.rglob("*") if f.is_file() for n in needles if n in f.read_bytes()]


@pytest.mark.parametrize("exact_max,ann", [(0, "hnsw"), (0, "pq"), (10_000, "pq")])
def test_a_deleted_face_leaves_no_trace_in_any_file(tmp_path, exact_max, ann):
    """Deleted means gone: the face's vector and crop bytes are in no file of the data directory, at
    once and after closing; the faces kept are still there."""
    rng = np.random.default_rng(8)
    v = unit(rng, 3)
    g = Gallery(tmp_path, MODEL, DIM, exact_search_max=exact_max, ann_index=ann, save_delay_s=0.05)
    p = g.add_person("Keeper", faces(v, "face crop"), MODEL)
    g.flush()
    gone = [v[1].tobytes(), b"face crop 1 \xc2\xa7 bytes"]
    kept = [v[0].tobytes(), b"face crop 0 \xc2\xa7 bytes"]
    assert len(_on_disk(tmp_path, gone)) >= 2
    g.delete_face(p.faces[1].id)
    assert _on_disk(tmp_path, gone) == []
    assert len(_on_disk(tmp_path, kept)) >= 2
    g.close()
    assert _on_disk(tmp_path, gone) == []
    again = Gallery(tmp_path, MODEL, DIM, exact_search_max=exact_max, ann_index=ann)
    try:
        assert again.get_person(p.id).face_count == 2
        assert all(n.face_id != p.faces[1].id for n in again.search(v[1], 3))
    finally:
        again.close()


def test_a_rename_in_a_sealed_gallery_keeps_the_new_name_sealed(tmp_path):
    key = new_key()
    g = Gallery(tmp_path, MODEL, DIM, encryption_key=key)
    p = g.add_person("Plain Start", faces(unit(np.random.default_rng(9), 1)), MODEL)
    assert g.rename_person(p.id, "Secret Newname").name == "Secret Newname"
    g.close()
    assert _on_disk(tmp_path, [b"Secret Newname", b"secret newname"]) == []
    again = Gallery(tmp_path, MODEL, DIM, encryption_key=key)
    try:
        assert again.find_person("SECRET newname").id == p.id and again.get_person(p.id).name == "Secret Newname"
        with pytest.raises(PersonExistsError):
            again.add_person("secret NEWNAME", faces(unit(np.random.default_rng(10), 1)), MODEL)
    finally:
        again.close()
