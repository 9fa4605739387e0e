"""facegate.gallery.sqlite: SQLite truth, derived search index, model ids, and writes from other processes.

Tests taking ``store`` or ``gal`` run on both backends, the embedded one with either index beyond
exact search (the PQ scan by default, and hnswlib), and PostgreSQL + pgvector
(``facegate.gallery.postgres``); those about the HNSW index file or the SQLite file are embedded-only.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time

import numpy as np
import pytest

from facegate.errors import InvalidNameError, ModelMismatchError, PersonExistsError, PersonNotFoundError
from conftest import make_store
from facegate.gallery.sqlite import DB_NAME, INDEX_META, INDEX_NAME, Gallery, NewFace, clean_name
from facegate.gallery import pqindex
from facegate.gallery.pqindex import TRAIN_MIN

DIM = 128
MODEL = "test-model-v1"


# ----------------------------------------------------------------------------- helpers
def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """A unit vector close to ``v``, as a second photo of the same face would be."""
    w = v + rng.normal(scale=noise, size=v.shape).astype(np.float32)
    return (w / np.linalg.norm(w)).astype(np.float32)


def faces(vectors, **kw) -> list[NewFace]:
    return [NewFace(np.asarray(v, np.float32), **kw) for v in np.atleast_2d(vectors)]


def open_gallery(path, **kw) -> Gallery:
    """An embedded gallery with the hnswlib index (what the index-file tests are about) unless told otherwise."""
    return Gallery(path, MODEL, DIM, **{"ann_index": "hnsw", **kw})


def answers(g: Gallery, queries: np.ndarray, k: int = 5, exact: bool | None = None):
    return [[(n.face_id, n.person_id, n.name) for n in g.search(q, k, exact=exact)] for q in queries]


def sims(g: Gallery, queries: np.ndarray, k: int = 5, exact: bool | None = None):
    return np.array([[n.similarity for n in g.search(q, k, exact=exact)] for q in queries])


@pytest.fixture(params=["sqlite", "sqlite-hnsw", "postgres"])
def store(request, tmp_path):
    """Here the embedded gallery is tried with both of its large-gallery indexes."""
    return make_store(request, tmp_path, request.param)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def gal(store):
    g = store.open(MODEL, DIM)
    yield g
    g.close()


@pytest.fixture(scope="module")
def population():
    """120 people with 1-4 faces each (about 300 vectors), plus queries near some stored faces."""
    rng = np.random.default_rng(1234)
    people = []
    for i in range(120):
        base = unit(rng, 1)[0]
        n = 1 + i % 4
        people.append((f"person-{i:03d}", np.stack([base] + [near(base, rng, 0.3) for _ in range(n - 1)])))
    stored = np.concatenate([v for _, v in people])
    queries = np.concatenate([np.stack([near(stored[j], rng, 0.15) for j in range(0, len(stored), 7)]), unit(rng, 10)])
    return people, queries


def enrol_population(g: Gallery, population) -> dict[str, int]:
    people, _ = population
    return {name: g.add_person(name, faces(vecs), MODEL).id for name, vecs in people}


@pytest.fixture(scope="module")
def _filled_template(tmp_path_factory, population):
    data_dir = tmp_path_factory.mktemp("filled") / "data"
    g = open_gallery(data_dir)
    ids = enrol_population(g, population)
    g.close()
    return data_dir, ids


@pytest.fixture
def filled_store(store, population):
    """``store`` holding the population: (store, ids by name, queries); no gallery open."""
    g = store.open(MODEL, DIM)
    ids = enrol_population(g, population)
    g.close()
    return store, ids, population[1]


@pytest.fixture
def filled(_filled_template, data_dir, population):
    """A fresh copy of a data directory holding the population: (dir, ids by name, queries); no gallery open."""
    template, ids = _filled_template
    shutil.copytree(template, data_dir)
    return data_dir, ids, population[1]


# ----------------------------------------------------------------------------- clean_name
@pytest.mark.parametrize(
    "raw,clean",
    [
        ("Alice", "Alice"),
        ("  Bob Smith \n", "Bob Smith"),
        ("Zo\u0065\u0301", "Zo\u00e9"),  # NFC
        ("Łukasz Żółć", "Łukasz Żółć"),
        ("李小龍", "李小龍"),
        ("O'Brien-Smith Jr.", "O'Brien-Smith Jr."),
    ],
)
def test_clean_name_accepts(raw, clean):
    assert clean_name(raw) == clean


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "\n\t \r",
        "x" * 10_000,  # 10 kB
        "x" * 129,
        "Al\x00ice",
        "Al\nice",
        "Al\tice",
        "Al\x1bice",
        "Al\x7fice",
        "Al\u200bice",  # zero-width space (Cf)
        "Al\u202eice",  # right-to-left override (Cf)
        "Al\u2028ice",  # line separator
        None,
        42,
        b"Alice",
    ],
)
def test_clean_name_refuses(bad):
    with pytest.raises(InvalidNameError) as ei:
        clean_name(bad)
    assert ei.value.field == "user_name"
    assert ei.value.code == "invalid_name"


def test_clean_name_length_limit():
    assert clean_name("y" * 128) == "y" * 128
    assert clean_name("y" * 20, max_length=20) == "y" * 20
    with pytest.raises(InvalidNameError):
        clean_name("y" * 21, max_length=20)


def test_add_person_refuses_bad_name_and_stores_nothing(gal):
    rng = np.random.default_rng(0)
    for bad in ["", "a\x00b", "z" * 10_000]:
        with pytest.raises(InvalidNameError):
            gal.add_person(bad, faces(unit(rng, 1)), MODEL)
    assert gal.list_people() == [] and gal.face_count == 0
    assert gal.add_person("z" * 200, faces(unit(rng, 1)), MODEL, max_name_length=200).name == "z" * 200


# ----------------------------------------------------------------------------- CRUD
def test_add_list_get_delete(gal):
    rng = np.random.default_rng(1)
    va, vb = unit(rng, 3), unit(rng, 1)
    a = gal.add_person("  Alice ", faces(va, crop_jpeg=b"\xff\xd8fake", source="upload.jpg"), MODEL)
    b = gal.add_person("Bob", faces(vb), MODEL)
    assert a.name == "Alice" and b.name == "Bob" and a.id != b.id
    assert a.face_count == 3 and b.face_count == 1
    assert all(f.has_crop and f.source == "upload.jpg" for f in a.faces)
    assert not b.faces[0].has_crop
    assert gal.face_crop(a.faces[0].id) == b"\xff\xd8fake"
    assert gal.face_crop(b.faces[0].id) is None
    assert gal.face_crop(999_999) is None

    listed = gal.list_people()
    assert [(p.id, p.name, p.face_count) for p in listed] == [(a.id, "Alice", 3), (b.id, "Bob", 1)]
    assert gal.get_person(a.id) == a
    assert gal.find_person("alice") == a and gal.find_person(" BOB ") == b
    assert gal.find_person("Carol") is None
    assert (gal.person_count, gal.face_count) == (2, 4)

    gone = gal.delete_person(a.id)
    assert gone == a
    with pytest.raises(PersonNotFoundError):
        gal.get_person(a.id)
    with pytest.raises(PersonNotFoundError):
        gal.delete_person(a.id)
    assert gal.find_person("Alice") is None
    assert [p.name for p in gal.list_people()] == ["Bob"]
    assert (gal.person_count, gal.face_count) == (1, 1)
    assert gal.face_crop(a.faces[0].id) is None  # crops go with the person
    assert {n.person_id for n in gal.search(va[0], k=10)} == {b.id}


def test_add_faces(gal):
    rng = np.random.default_rng(2)
    v = unit(rng, 3)
    p = gal.add_person("Carol", faces(v[0]), MODEL)
    p2 = gal.add_faces(p.id, faces(v[1:], source="second"), MODEL)
    assert p2.id == p.id and p2.face_count == 3
    assert [f.source for f in p2.faces] == [None, "second", "second"]
    top = gal.search(v[2], k=1)[0]
    assert top.person_id == p.id and top.face_id == p2.faces[2].id
    assert top.similarity == pytest.approx(1.0, abs=1e-5)


def test_add_faces_to_missing_person(gal):
    rng = np.random.default_rng(3)
    p = gal.add_person("Dan", faces(unit(rng, 1)), MODEL)
    with pytest.raises(PersonNotFoundError):
        gal.add_faces(p.id + 1000, faces(unit(rng, 2)), MODEL)
    gal.delete_person(p.id)
    with pytest.raises(PersonNotFoundError):
        gal.add_faces(p.id, faces(unit(rng, 1)), MODEL)
    assert gal.face_count == 0 and gal.list_people() == []


def test_add_without_faces_refused(gal):
    with pytest.raises(ValueError):
        gal.add_person("Eve", [], MODEL)
    assert gal.list_people() == []


@pytest.mark.parametrize("dup", ["Alice", "alice", "ALICE", "  aLiCe  "])
def test_duplicate_name_case_insensitive(gal, dup):
    rng = np.random.default_rng(4)
    va = unit(rng, 1)
    a = gal.add_person("Alice", faces(va), MODEL)
    before = (gal.list_people(), gal.face_count, answers(gal, va, k=5))
    with pytest.raises(PersonExistsError) as ei:
        gal.add_person(dup, faces(unit(rng, 2)), MODEL)
    assert ei.value.field == "user_name"
    assert str(a.id) in str(ei.value)
    assert (gal.list_people(), gal.face_count, answers(gal, va, k=5)) == before


@pytest.mark.parametrize("first,dup", [("Émile", "émile"), ("ÉMILE", "émile"), ("Ærøskøbing", "ÆRØSKØBING"), ("Straße", "STRASSE")])
def test_duplicate_name_case_insensitive_beyond_ascii(gal, first, dup):
    rng = np.random.default_rng(5)
    p = gal.add_person(first, faces(unit(rng, 1)), MODEL)
    with pytest.raises(PersonExistsError):
        gal.add_person(dup, faces(unit(rng, 1)), MODEL)
    assert gal.person_count == 1 and gal.face_count == 1
    assert gal.find_person(dup) == p


# Issue 19 (9): these were four people; names that render blank were accepted.
LOOK_ALIKES = ["Ａｎａ", "\u0410na", "Ana\ufe0f", "ANA", "\u0391NA", "An\u0430", "  ana "]


@pytest.mark.parametrize("dup", LOOK_ALIKES, ids=["fullwidth", "cyrillic A", "variation selector", "capitals", "greek A", "cyrillic a", "spaces"])
def test_look_alike_names_are_one_person(gal, dup):
    rng = np.random.default_rng(8)
    a = gal.add_person("Ana", faces(unit(rng, 1)), MODEL)
    with pytest.raises(PersonExistsError) as ei:
        gal.add_person(dup, faces(unit(rng, 1)), MODEL)
    assert "'Ana'" in ei.value.message and f"id {a.id}" in ei.value.message, ei.value.message  # names who holds it
    assert ei.value.field == "user_name"
    assert gal.person_count == 1 and gal.face_count == 1
    assert gal.find_person(dup) == a


@pytest.mark.parametrize("name", ["Ana-Maria", "Anna", "Ama", "Ana B", "Ána", "Ана"])
def test_names_that_look_different_are_different_people(gal, name):
    rng = np.random.default_rng(9)
    gal.add_person("Ana", faces(unit(rng, 1)), MODEL)
    assert gal.add_person(name, faces(unit(rng, 1)), MODEL).name == name
    assert gal.person_count == 2


@pytest.mark.parametrize("blank", ["\u3164", "\u3164\u3164", "\u2800", "\u2800 \u2800", "\u115f\u1160", "---", ". . .", "\ufe0f"])
def test_names_without_a_letter_or_digit_are_refused(gal, blank):
    with pytest.raises(InvalidNameError) as ei:
        gal.add_person(blank, faces(unit(np.random.default_rng(10), 1)), MODEL)
    assert "letter or digit" in ei.value.message and ei.value.field == "user_name"
    assert gal.person_count == 0 and gal.face_count == 0


def test_a_gallery_keyed_before_look_alikes_is_rekeyed_at_open(data_dir):
    """Keys of the earlier kind (the case-folded name) are made again when the gallery is opened; two
    people enrolled back then under look-alike names are both kept, the older one named in refusals."""
    rng = np.random.default_rng(11)
    g = open_gallery(data_dir)
    first = g.add_person("Ana", faces(unit(rng, 1)), MODEL)
    g.add_person("Marta", faces(unit(rng, 1)), MODEL)
    g.close()
    with sqlite3.connect(data_dir / DB_NAME) as db:  # back to the earlier format, with a look-alike enrolled
        db.execute("INSERT INTO people (name, name_key, created_at) VALUES ('\u0410na', '\u0430na', '2026-01-01')")
        db.execute("UPDATE people SET name_key = lower(name) WHERE id <= 2")
        db.execute("DELETE FROM meta WHERE key = 'name_keys'")
    g = open_gallery(data_dir)
    try:
        assert [p.name for p in g.list_people()] == ["Ana", "Marta", "\u0410na"]
        assert g.find_person("ＡＮＡ") == g.get_person(first.id) and g.find_person("MARTA").name == "Marta"
        with pytest.raises(PersonExistsError, match="'Ana'"):
            g.add_person("An\u0430", faces(unit(rng, 1)), MODEL)
    finally:
        g.close()


def test_duplicate_name_nothing_changed_on_disk(data_dir):
    rng = np.random.default_rng(6)
    g = open_gallery(data_dir)
    g.add_person("Alice", faces(unit(rng, 1)), MODEL)
    with pytest.raises(PersonExistsError):
        g.add_person("alice", faces(unit(rng, 1)), MODEL)
    g.close()
    with sqlite3.connect(data_dir / DB_NAME) as db:
        assert db.execute("SELECT COUNT(*) FROM people").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 1


# ----------------------------------------------------------------------------- vectors and models
def test_wrong_dimension_refused(gal):
    rng = np.random.default_rng(7)
    with pytest.raises(ModelMismatchError):
        gal.add_person("Frank", faces(unit(rng, 1, 64)), MODEL)
    p = gal.add_person("Frank", faces(unit(rng, 1)), MODEL)
    with pytest.raises(ModelMismatchError):
        gal.add_faces(p.id, faces(unit(rng, 1, 256)), MODEL)
    with pytest.raises(ModelMismatchError):
        gal.search(unit(rng, 1, 256)[0])
    assert gal.face_count == 1 and gal.get_person(p.id).face_count == 1


def test_non_finite_embedding_refused(gal):
    v = np.random.default_rng(8).normal(size=DIM).astype(np.float32)
    v[3] = np.nan
    with pytest.raises(ValueError):
        gal.add_person("Gina", faces(v), MODEL)
    assert gal.list_people() == []


def test_model_id_mismatch_on_add(gal):
    rng = np.random.default_rng(9)
    with pytest.raises(ModelMismatchError):
        gal.add_person("Hank", faces(unit(rng, 1)), "another-model")
    assert gal.list_people() == [] and gal.face_count == 0  # rolled back: no person without faces
    p = gal.add_person("Hank", faces(unit(rng, 1)), MODEL)
    with pytest.raises(ModelMismatchError):
        gal.add_faces(p.id, faces(unit(rng, 1)), "another-model")
    assert gal.get_person(p.id).face_count == 1


def test_other_model_on_non_empty_gallery_refused(store):
    rng = np.random.default_rng(10)
    g = store.open(MODEL, DIM)
    g.add_person("Ivy", faces(unit(rng, 1)), MODEL)
    g.close()
    with pytest.raises(ModelMismatchError) as ei:
        store.open("another-model", DIM)
    assert MODEL in str(ei.value)
    with pytest.raises(ModelMismatchError):
        store.open("another-model", 512)
    # the gallery itself is untouched and still opens with its own model
    g = store.open(MODEL, DIM)
    assert [p.name for p in g.list_people()] == ["Ivy"]
    g.close()


def test_same_model_id_other_dimension_refused(store):
    g = store.open(MODEL, DIM)
    g.add_person("Jay", faces(unit(np.random.default_rng(11), 1)), MODEL)
    g.close()
    with pytest.raises(ModelMismatchError):
        store.open(MODEL, 256)


def test_empty_gallery_can_change_model(store):
    rng = np.random.default_rng(12)
    g = store.open(MODEL, DIM)
    p = g.add_person("Kim", faces(unit(rng, 1)), MODEL)
    g.delete_person(p.id)
    g.close()
    g2 = store.open("another-model", 64)
    q = unit(rng, 1, 64)
    g2.add_person("Kim", faces(q), "another-model")
    assert g2.search(q[0], k=1)[0].name == "Kim"
    g2.close()


# ----------------------------------------------------------------------------- search
def test_search_empty_gallery(gal):
    q = unit(np.random.default_rng(13), 1)[0]
    assert gal.search(q) == [] and gal.search(q, exact=False) == []


def test_search_returns_nearest_first_with_cosine(gal):
    rng = np.random.default_rng(14)
    v = unit(rng, 20)
    ids = [gal.add_person(f"p{i}", faces(v[i]), MODEL).id for i in range(20)]
    q = near(v[5], rng, 0.1)
    for exact in (True, False):
        res = gal.search(q, k=5, exact=exact)
        assert len(res) == 5
        assert res[0].person_id == ids[5] and res[0].name == "p5"
        s = [n.similarity for n in res]
        assert s == sorted(s, reverse=True)
        assert s[0] == pytest.approx(float(v[5] @ q), abs=1e-5)
    assert len(gal.search(q, k=100)) == 20  # k larger than the gallery


def test_exact_and_approximate_search_agree(filled_store):
    store, ids, queries = filled_store
    g = store.open(MODEL, DIM)
    hn = store.open(MODEL, DIM, exact_search_max=0)
    assert g.search_mode == "exact" and hn.search_mode == {"sqlite": "pq"}.get(store.kind, "hnsw")
    assert g.face_count == hn.face_count > 250
    ex = answers(g, queries)
    assert ex == answers(hn, queries)  # the default mode of an exact_search_max=0 gallery is the approximate one
    assert ex == answers(g, queries, exact=False)
    assert ex == answers(hn, queries, exact=True)
    np.testing.assert_allclose(sims(g, queries), sims(hn, queries), atol=1e-5)
    # queries made near a stored face find that face's person first
    first = [a[0][2] for a in ex[:-10]]
    assert sum(name.startswith("person-") for name in first) == len(first)
    g.close()
    hn.close()


def test_search_survives_close_and_reopen(filled):
    data_dir, ids, queries = filled
    g = open_gallery(data_dir, exact_search_max=0)
    assert not g.index_rebuilt  # the saved index was trusted
    before, before_sims = answers(g, queries), sims(g, queries)
    g.close()
    g = open_gallery(data_dir, exact_search_max=0)
    assert not g.index_rebuilt
    assert answers(g, queries) == before
    np.testing.assert_allclose(sims(g, queries), before_sims, atol=1e-6)
    assert answers(g, queries, exact=True) == before
    g.close()


# ----------------------------------------------------------------------------- index damage
def _reference(data_dir, queries):
    g = open_gallery(data_dir, exact_search_max=0)
    ref = answers(g, queries), answers(g, queries, exact=True)
    g.close()
    return ref


@pytest.mark.parametrize("victim", [[INDEX_NAME], [INDEX_META], [INDEX_NAME, INDEX_META]])
def test_missing_index_files_rebuilt(filled, victim):
    data_dir, _, queries = filled
    ref = _reference(data_dir, queries)
    for name in victim:
        (data_dir / name).unlink()
    g = open_gallery(data_dir, exact_search_max=0)
    assert g.index_rebuilt
    assert (data_dir / INDEX_NAME).is_file() and (data_dir / INDEX_META).is_file()
    assert (answers(g, queries), answers(g, queries, exact=True)) == ref
    g.close()
    g = open_gallery(data_dir, exact_search_max=0)
    assert not g.index_rebuilt  # the rebuilt index was saved and is trusted next time
    g.close()


def _truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _random_bytes(p):
    p.write_bytes(np.random.default_rng(0).integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())


def _empty(p):
    p.write_bytes(b"")


def _flip_one_byte(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _random_bytes, _empty, _flip_one_byte])
@pytest.mark.parametrize("target", [INDEX_NAME, INDEX_META])
def test_corrupt_index_rebuilt(filled, damage, target):
    data_dir, _, queries = filled
    ref = _reference(data_dir, queries)
    damage(data_dir / target)
    g = open_gallery(data_dir, exact_search_max=0)
    assert g.index_rebuilt
    assert (answers(g, queries), answers(g, queries, exact=True)) == ref
    g.close()


def test_stale_index_files_detected(filled, population):
    """Index files from an older generation (e.g. restored from a backup) are rebuilt, not trusted."""
    data_dir, ids, queries = filled
    old = data_dir.parent / "old"
    old.mkdir()
    for name in (INDEX_NAME, INDEX_META):
        shutil.copy2(data_dir / name, old / name)
    rng = np.random.default_rng(15)
    g = open_gallery(data_dir)
    extra = unit(rng, 1)
    newcomer = g.add_person("Newcomer", faces(extra), MODEL)
    g.delete_person(ids["person-000"])
    g.close()
    for name in (INDEX_NAME, INDEX_META):
        shutil.copy2(old / name, data_dir / name)
    g = open_gallery(data_dir, exact_search_max=0)
    assert g.index_rebuilt
    top = g.search(extra[0], k=1)[0]
    assert (top.person_id, top.similarity) == (newcomer.id, pytest.approx(1.0, abs=1e-5))
    assert answers(g, queries) == answers(g, queries, exact=True)
    assert ids["person-000"] not in {n.person_id for a in queries for n in g.search(a, k=g.face_count)}
    g.close()


def test_stale_index_after_writes_by_second_instance(filled):
    """g1 closes after g2 wrote: it catches up before saving, so the index on disk stays current."""
    data_dir, ids, queries = filled
    rng = np.random.default_rng(16)
    g1 = open_gallery(data_dir, exact_search_max=0)
    g2 = open_gallery(data_dir, exact_search_max=0)
    extra = unit(rng, 2)
    p = g2.add_person("Late Arrival", faces(extra), MODEL)
    g2.delete_person(ids["person-001"])
    g2.close()
    g1.close()  # without searching first: close() syncs, so it must not stamp an old index as current
    g3 = open_gallery(data_dir, exact_search_max=0)
    assert not g3.index_rebuilt
    assert g3.search(extra[1], k=1)[0].person_id == p.id
    assert answers(g3, queries) == answers(g3, queries, exact=True)
    assert ids["person-001"] not in {n.person_id for q in queries for n in g3.search(q, k=g3.face_count)}
    g3.close()


# ----------------------------------------------------------------------------- other processes
@pytest.mark.parametrize("exact_search_max", [20_000, 0])
def test_write_from_second_instance_visible_without_reopen(store, exact_search_max):
    rng = np.random.default_rng(17)
    v = unit(rng, 6)
    g1 = store.open(MODEL, DIM, exact_search_max=exact_search_max)
    a = g1.add_person("Alice", faces(v[0]), MODEL)
    g2 = store.open(MODEL, DIM, exact_search_max=exact_search_max)  # as `facegate enroll` in another process
    b = g2.add_person("Bob", faces(v[1:3]), MODEL)
    top = g1.search(v[2], k=1)[0]
    assert (top.person_id, top.name) == (b.id, "Bob")
    assert g1.face_count == 3 and g1.find_person("bob") is not None
    # and the other way round, through add_faces and delete
    g1.add_faces(b.id, faces(v[3]), MODEL)
    assert g2.search(v[3], k=1)[0].person_id == b.id
    g2.delete_person(a.id)
    assert a.id not in {n.person_id for n in g1.search(v[0], k=10)}
    assert g1.face_count == 3
    # g1 writes after g2's delete: its incremental state must build on g2's
    c = g1.add_person("Carol", faces(v[4]), MODEL)
    assert {n.person_id for n in g2.search(v[0], k=10)} == {b.id, c.id}
    assert answers(g1, v) == answers(g2, v)
    g2.close()
    g1.close()


def test_write_committed_by_another_process_during_our_write(data_dir):
    """Another process commits while we wait for the write lock: our write must not lose theirs."""
    rng = np.random.default_rng(18)
    v = unit(rng, 3)
    g = open_gallery(data_dir, exact_search_max=0)
    g.add_person("Alice", faces(v[0]), MODEL)
    other = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, timeout=30)
    other.execute("BEGIN IMMEDIATE")  # the other process holds the write lock ...
    errors: list[BaseException] = []

    def enrol():
        try:
            g.add_person("Carol", faces(v[2]), MODEL)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=enrol)
    t.start()
    time.sleep(0.5)  # ... while our add_person has synced and waits for the lock
    other.execute("INSERT INTO people (name, name_key, created_at) VALUES ('Bob', 'bob', 'now')")
    bob = other.execute("SELECT last_insert_rowid()").fetchone()[0]
    other.execute(
        "INSERT INTO faces (person_id, model_id, embedding, created_at) VALUES (?, ?, ?, 'now')",
        (bob, MODEL, v[1].tobytes()),
    )
    other.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    other.execute("COMMIT")
    other.close()
    t.join(30)
    assert not t.is_alive() and not errors
    assert g.face_count == 3
    for exact in (True, False):
        assert g.search(v[1], k=1, exact=exact)[0].person_id == bob
    g.close()
    g = open_gallery(data_dir, exact_search_max=0)
    assert answers(g, v) == answers(g, v, exact=True)
    assert g.search(v[1], k=1)[0].person_id == bob
    g.close()


# ----------------------------------------------------------------------------- deletion
def test_deleted_people_never_in_results(filled_store, population):
    store, ids, _ = filled_store
    data_dir = store.data_dir
    people, _ = population
    g = store.open(MODEL, DIM)
    doomed = [name for i, (name, _) in enumerate(people) if i % 3 == 0]
    for name in doomed:
        g.delete_person(ids[name])
    doomed_ids = {ids[n] for n in doomed}
    probes = np.concatenate([vecs for name, vecs in people if name in doomed])

    def check(gallery):
        n = gallery.face_count
        for exact in (True, False):
            for q in probes:
                hits = gallery.search(q, k=n, exact=exact)
                assert len(hits) == n
                assert not doomed_ids & {h.person_id for h in hits}
                assert len({h.face_id for h in hits}) == n

    check(g)
    g.close()
    if store.kind != "sqlite-hnsw":  # what follows is about the embedded gallery's HNSW index file
        g = store.open(MODEL, DIM, exact_search_max=0)  # the approximate index this time
        check(g)
        g.close()
        return
    g = open_gallery(data_dir, exact_search_max=0)  # the saved index carries the deletions
    assert not g.index_rebuilt
    check(g)
    g.close()
    g = open_gallery(data_dir)
    (data_dir / INDEX_NAME).unlink()
    g.close()  # re-saves its index
    g = open_gallery(data_dir, exact_search_max=0)
    check(g)
    g.close()


def test_delete_then_reenrol_same_name(gal):
    rng = np.random.default_rng(19)
    v1, v2 = unit(rng, 1), unit(rng, 1)
    p1 = gal.add_person("Max", faces(v1), MODEL)
    gal.delete_person(p1.id)
    p2 = gal.add_person("max", faces(v2), MODEL)
    assert p2.id != p1.id
    for exact in (True, False):
        hits = gal.search(v1[0], k=5, exact=exact)
        assert [h.person_id for h in hits] == [p2.id]
        assert hits[0].similarity == pytest.approx(float(v1[0] @ v2[0]), abs=1e-5)


def test_many_writes_grow_the_index(store):
    # More faces than the initial HNSW capacity reserved after a reopen of a small gallery.
    rng = np.random.default_rng(20)
    g = store.open(MODEL, DIM, exact_search_max=0)
    g.add_person("seed", faces(unit(rng, 1)), MODEL)
    g.close()
    g = store.open(MODEL, DIM, exact_search_max=0)
    v = unit(rng, 40)
    p = g.add_person("bulk", faces(v), MODEL)
    assert g.face_count == 41
    assert all(g.search(q, k=1)[0].person_id == p.id for q in v)
    g.close()


@pytest.mark.parametrize("exact_max,ann", [(0, "hnsw"), (0, "pq"), (10_000, "hnsw")])
def test_delete_leaves_no_trace_of_the_vectors_on_disk(data_dir, exact_max, ann):
    """Biometric data: after delete, the person's vector bytes are in no file of the data directory."""
    rng = np.random.default_rng(99)
    keep, gone = unit(rng, 3), unit(rng, 2)
    g = open_gallery(data_dir, exact_search_max=exact_max, ann_index=ann)
    g.add_person("Keeper", faces(keep), MODEL)
    p = g.add_person("Leaver", faces(gone), MODEL)

    def on_disk(vec: np.ndarray) -> bool:
        needle = np.asarray(vec, np.float32).tobytes()
        return any(needle in f.read_bytes() for f in data_dir.iterdir() if f.is_file())

    assert on_disk(gone[0]) and on_disk(gone[1])
    g.delete_person(p.id)
    assert not on_disk(gone[0]) and not on_disk(gone[1])
    assert on_disk(keep[0])
    g.close()
    assert not on_disk(gone[0]) and not on_disk(gone[1])


def test_a_reader_blocking_the_purge_is_said_and_the_purge_ends_when_it_goes(data_dir):
    """Issue 19 (6): a read transaction held by another connection (as `sqlite3 .backup` holds one) kept
    the deleted person's name, lookup key and crop in the -wal file, also after it closed, and the delete
    waited 30 s for it. Now the delete answers within a second, says the purge is pending, and the
    purge ends when the reader goes."""
    rng = np.random.default_rng(66)
    keep, gone = unit(rng, 2), unit(rng, 2)
    g = open_gallery(data_dir, exact_search_max=10_000)
    g.add_person("Keeper Kim", faces(keep, crop_jpeg=b"crop of the keeper"), MODEL)
    p = g.add_person("Leaver Lou", faces(gone, crop_jpeg=b"crop of the leaver 5c1e"), MODEL)
    needles = [b"Leaver Lou", b"leaver lou", b"crop of the leaver 5c1e", np.asarray(gone[0], np.float32).tobytes()]

    def on_disk() -> list[str]:
        return [f"{f.name}: {n[:12]!r}" for f in data_dir.iterdir() if f.is_file() for n in needles if n in f.read_bytes()]

    reader = sqlite3.connect(data_dir / DB_NAME)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 4  # a snapshot, held
        t0 = time.monotonic()
        g.delete_person(p.id)
        assert time.monotonic() - t0 < 5
        assert g.purge_pending
        assert [x.name for x in g.list_people()] == ["Keeper Kim"]  # deleted for every read all the same
        time.sleep(0.6)
        assert g.purge_pending and any(h.startswith(DB_NAME + "-wal") for h in on_disk())
    finally:
        reader.execute("COMMIT")
        reader.close()
    deadline = time.monotonic() + 10
    while g.purge_pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not g.purge_pending
    assert not on_disk()
    assert g.get_person(1).name == "Keeper Kim"
    g.close()
    assert not on_disk()


def test_without_a_reader_the_purge_is_done_at_once(data_dir):
    g = open_gallery(data_dir)
    p = g.add_person("Quick Quinn", faces(unit(np.random.default_rng(67), 1)), MODEL)
    g.delete_person(p.id)
    assert not g.purge_pending
    assert not (data_dir / (DB_NAME + "-wal")).exists() or (data_dir / (DB_NAME + "-wal")).stat().st_size == 0
    g.close()


def test_writes_do_not_rebuild_and_the_index_is_saved_in_the_background(data_dir):
    """An enrolment adds to the live index (no rebuild); the file follows within the save delay."""
    rng = np.random.default_rng(123)
    g = open_gallery(data_dir, exact_search_max=0, save_delay_s=0.05)
    first = g.add_person("First", faces(unit(rng, 2)), MODEL)
    index_before = g._index
    g.add_person("Second", faces(unit(rng, 2)), MODEL)
    assert g._index is index_before  # same object: appended to, not rebuilt
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and json.loads((data_dir / INDEX_META).read_text())["count"] != 4:
        time.sleep(0.02)
    assert json.loads((data_dir / INDEX_META).read_text())["count"] == 4
    g.delete_person(first.id)  # saved at once: deleted vectors must leave the disk before delete returns
    assert json.loads((data_dir / INDEX_META).read_text())["count"] == 2
    g.close()
    g2 = open_gallery(data_dir, exact_search_max=0)
    assert not g2.index_rebuilt and g2.face_count == 2
    g2.close()


def test_queries_run_while_writes_and_saves_happen(store):
    rng = np.random.default_rng(321)
    g = store.open(MODEL, DIM, exact_search_max=0, save_delay_s=0.0)
    base = unit(rng, 50)
    for i in range(10):
        g.add_person(f"P{i}", faces(base[i * 5 : i * 5 + 5]), MODEL)
    errors: list[BaseException] = []
    stop = threading.Event()

    def query():
        try:
            while not stop.is_set():
                hits = g.search(base[0], k=5)
                assert hits and hits[0].name == "P0"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(10, 40):
        p = g.add_person(f"P{i}", faces(unit(rng, 2)), MODEL)
        if i % 3 == 0:
            g.delete_person(p.id)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:1]
    assert g.person_count == 10 + 20
    g.close()


# ----------------------------------------------------------------------------- PQ scan index
def test_pq_index_keeps_no_file_and_removes_an_old_hnsw_one(filled):
    """The PQ index lives in memory (rebuilt at start); switching from "hnsw" deletes the old index files."""
    data_dir, _, queries = filled
    assert (data_dir / INDEX_NAME).is_file()
    g = open_gallery(data_dir, exact_search_max=0, ann_index="pq")
    assert g.search_mode == "pq" and g.index_rebuilt
    assert not (data_dir / INDEX_NAME).exists() and not (data_dir / INDEX_META).exists()
    assert answers(g, queries) == answers(g, queries, exact=True)
    g.close()
    assert sorted(f.name for f in data_dir.iterdir() if not f.name.startswith(DB_NAME)) == []


def test_pq_index_rebuilds_after_deletions_and_as_the_gallery_grows(data_dir):
    """Deleted faces' codes leave memory once a tenth of the index is stale; codebooks trained on a small
    gallery are trained again when it has doubled. Answers equal exact search throughout."""
    rng = np.random.default_rng(7)
    g = open_gallery(data_dir, exact_search_max=0, ann_index="pq")
    people = [g.add_person(f"p{i}", faces(unit(rng, 3)), MODEL) for i in range(40)]
    assert g._index.trained_on == 0 and g._index.count == 120
    probes = unit(rng, 20)
    assert answers(g, probes) == answers(g, probes, exact=True)
    g.delete_person(people[0].id)  # 3 of 120: kept as stale codes, filtered out by the exact re-rank
    assert g._index.stale == 3 and g._index.count == 120
    assert people[0].id not in {n.person_id for q in probes for n in g.search(q, k=g.face_count)}
    for p in people[1:5]:
        g.delete_person(p.id)  # 15 of 120 > 10%: rebuilt without them
    assert g._index.stale == 0 and g._index.count == 105
    assert answers(g, probes) == answers(g, probes, exact=True)
    bulk = unit(rng, 2 * TRAIN_MIN)
    g.add_person("bulk", faces(bulk), MODEL)  # past twice the training floor: codebooks trained on real faces
    assert g._index.trained_on == g.face_count == 105 + 2 * TRAIN_MIN
    assert answers(g, probes) == answers(g, probes, exact=True)
    g.close()


def test_pq_search_finds_the_exact_top5_in_a_large_clustered_gallery(data_dir, monkeypatch):
    """30,000 face-like vectors (7,500 identities, 4 faces each, genuine cosine ~0.65): the scan plus exact
    re-rank returns the exact top 5 for nearly every query (bench/search.py measures 1M)."""
    rng = np.random.default_rng(11)
    centres = unit(rng, 7500)
    who = np.repeat(np.arange(7500), 4)
    noise = rng.normal(scale=0.65 / np.sqrt(DIM), size=(len(who), DIM)).astype(np.float32)
    vecs = centres[who] + noise
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    g = open_gallery(data_dir, exact_search_max=0, ann_index="pq")
    g.add_person("crowd", faces(vecs), MODEL)
    g.close()
    g = open_gallery(data_dir, exact_search_max=0, ann_index="pq")  # built at start from the database
    assert g._index.count == 30_000 and g._index.trained_on == 30_000
    qs = centres[rng.integers(0, 7500, 200)] + rng.normal(scale=0.65 / np.sqrt(DIM), size=(200, DIM)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    got = [{n.face_id for n in g.search(q, 5)} for q in qs]
    want = [{n.face_id for n in g.search(q, 5, exact=True)} for q in qs]
    recall = np.mean([len(a & b) / 5 for a, b in zip(got, want)])
    print(f"\nPQ scan recall@5 at 30k faces: {recall:.4f}")
    assert recall >= 0.98
    assert len(g._index._shards) == min(4, os.cpu_count() or 1)
    # Large galleries scan their shards in parallel threads: the same candidates, merged in the same order.
    monkeypatch.setattr(pqindex, "PARALLEL_MIN", 0)
    assert [{n.face_id for n in g.search(q, 5)} for q in qs] == got
    g.close()


def test_pq_index_serves_a_512_d_model(data_dir):
    """An imported AdaFace model has 512-d embeddings: one sub-quantizer per 2 dimensions there too."""
    rng = np.random.default_rng(12)
    vecs = unit(rng, 3000, 512)
    g = Gallery(data_dir, "adaface-like", 512, exact_search_max=0)
    g.add_person("many", faces(vecs), "adaface-like")
    assert g.search_mode == "pq" and g._index.sub == 256
    probes = np.stack([near(v, rng, 0.3) for v in vecs[:40]])
    assert answers(g, probes) == answers(g, probes, exact=True)
    g.close()


def test_exact_top_finds_rows_through_the_id_map_as_by_bisection():
    """The id -> row map only speeds up the look-up: candidates deleted, never issued, or added after the
    snapshot are dropped either way, and the same rows and similarities come back."""
    rng = np.random.default_rng(21)
    ids = np.sort(rng.choice(np.arange(1, 50_000), 20_000, replace=False)).astype(np.int64)  # gaps: deletions
    vecs = unit(rng, len(ids))
    table = pqindex.RowMap.build(ids)
    assert table is not None
    later = np.arange(ids[-1] + 1, ids[-1] + 101, dtype=np.int64)
    assert table.add(later, len(ids))  # appended after the snapshot below was taken
    for _ in range(50):
        q = unit(rng, 1)[0]
        found = np.concatenate([rng.choice(ids, 200), rng.choice(later, 20), rng.integers(-5, 60_000, 30)])
        rng.shuffle(found)
        by_map = pqindex.exact_top(q, found, ids, vecs, 5, table)
        by_bisection = pqindex.exact_top(q, found, ids, vecs, 5)
        np.testing.assert_array_equal(by_map[0], by_bisection[0])
        np.testing.assert_array_equal(by_map[1], by_bisection[1])
        assert len(by_map[0]) == 5 and set(ids[by_map[0]]) <= set(ids)
    assert table.add(np.array([ids[-1] + 10**8], np.int64), len(ids) + 100) is False  # too sparse: dropped
    assert pqindex.RowMap.build(np.array([1, 10**9], np.int64)) is None


def test_gallery_keeps_its_id_map_through_adds_and_deletions(data_dir):
    """The PQ search re-ranks through the gallery's id map: right after adds and after a deletion compacts
    the arrays, its answers are the exact ones."""
    rng = np.random.default_rng(22)
    g = open_gallery(data_dir, exact_search_max=0, ann_index="pq")
    people = [g.add_person(f"p{i}", faces(unit(rng, 40)), MODEL) for i in range(30)]
    for p in people[::3]:
        g.delete_person(p.id)
    g.add_person("late", faces(unit(rng, 40)), MODEL)
    rows = g._table.rows
    ids, _, _ = g._table.view()
    assert rows is not None and np.array_equal(rows.positions(ids), np.arange(len(ids)))
    probes = np.stack([near(v, rng, 0.3) for v in g._table.view()[2][::37]])
    assert answers(g, probes) == answers(g, probes, exact=True)
    g.close()
