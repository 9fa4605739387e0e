"""The PostgreSQL + pgvector gallery (facegate.gallery.postgres) and what both backends must share.

``store`` tests run on both backends (audit rows, races between instances, keys); the others are
about PostgreSQL itself (migrations under concurrent starts, the HNSW index, refusals) and about
``facegate gallery migrate`` between the two.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import psycopg
import pytest

from facegate.security import audit
from facegate.gallery.backends import GalleryBackend, keys_for
from facegate.errors import EncryptionError, ModelMismatchError, PersonExistsError
from facegate.gallery.sqlite import Gallery, NewFace
from facegate.gallery.migrate import MigrationError, migrate_gallery, read_pg, read_sqlite
from facegate.gallery.postgres import PgGallery, migrations

DIM = 128
MODEL = "test-model-v1"


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def faces(vectors, **kw) -> list[NewFace]:
    return [NewFace(np.asarray(v, np.float32), **kw) for v in np.atleast_2d(vectors)]


def answers(g, queries, k: int = 5):
    return [[(n.face_id, n.person_id, n.name, round(n.similarity, 5)) for n in g.search(q, k)] for q in queries]


# ----------------------------------------------------------------------------- both backends
def test_both_backends_implement_the_interface(store):
    g = store.open(MODEL, DIM)
    try:
        assert isinstance(g, GalleryBackend)
    finally:
        g.close()


def test_every_write_leaves_one_audit_row_and_a_refused_one_none(store):
    rng = np.random.default_rng(40)
    g = store.open(MODEL, DIM)
    token = audit.current_actor.set("key:abcd1234 ip:127.0.0.1")
    try:
        p = g.add_person("Ada", faces(unit(rng, 2)), MODEL)
        g.add_faces(p.id, faces(unit(rng, 1)), MODEL)
        with pytest.raises(PersonExistsError):
            g.add_person("ADA", faces(unit(rng, 1)), MODEL)
        with pytest.raises(ModelMismatchError):
            g.add_person("Bea", faces(unit(rng, 1)), "another-model")
        g.delete_person(p.id)
        g.record(audit.EXPORT, None, people=0)
    finally:
        audit.current_actor.reset(token)
    log = g.audit_log(limit=10)
    assert [(e.action, e.person_id, e.detail) for e in log] == [
        (audit.EXPORT, None, {"people": 0}),
        (audit.DELETE, p.id, {"faces": 3}),
        (audit.ADD_FACES, p.id, {"faces": 1}),
        (audit.ENROLL, p.id, {"faces": 2}),
    ]
    assert {e.actor for e in log} == {"key:abcd1234 ip:127.0.0.1"}
    assert [e.action for e in g.audit_log(limit=10, before=log[1].id)] == [audit.ADD_FACES, audit.ENROLL]
    assert g.list_people() == [] and g.face_count == 0
    g.close()


def test_same_name_from_two_instances_at_once_has_one_winner(store):
    """Two servers enrolling one name at the same moment: exactly one succeeds, nothing half-written."""
    rng = np.random.default_rng(41)
    galleries = [store.open(MODEL, DIM), store.open(MODEL, DIM)]
    vecs = unit(rng, 16)
    won, lost, errors = [], [], []
    start = threading.Barrier(16)

    def enrol(i: int) -> None:
        try:
            start.wait()
            won.append(galleries[i % 2].add_person(["Zed", "zed", " ZED "][i % 3], faces(vecs[i]), MODEL))
        except PersonExistsError:
            lost.append(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enrol, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:1]
    assert len(won) == 1 and len(lost) == 15
    for g in galleries:
        assert [(p.id, p.face_count) for p in g.list_people()] == [(won[0].id, 1)]
        assert (g.person_count, g.face_count) == (1, 1)
        g.close()


def test_concurrent_enrolments_from_two_instances_all_land(store):
    rng = np.random.default_rng(42)
    galleries = [store.open(MODEL, DIM, exact_search_max=0), store.open(MODEL, DIM, exact_search_max=0)]
    vecs = unit(rng, 40)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(w, 40, 4):
                galleries[w % 2].add_person(f"P{i:02d}", faces(vecs[i]), MODEL)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:1]
    for g in galleries:
        assert (g.person_count, g.face_count) == (40, 40)
        assert [g.search(v, 1)[0].name for v in vecs] == [f"P{i:02d}" for i in range(40)]
    assert answers(galleries[0], vecs[:5]) == answers(galleries[1], vecs[:5])
    for g in galleries:
        g.close()


def test_keys_live_beside_the_gallery_and_count_at_once_everywhere(store):
    g1, g2 = store.open(MODEL, DIM), store.open(MODEL, DIM)
    k1, k2 = keys_for(g1), keys_for(g2)  # two servers' key stores
    try:
        assert not k1.enforcing() and not k2.enforcing()
        key, plain = k1.create("client", "gate")
        assert k2.enforcing() and k2.check(plain) == (key.id, "client")
        assert k2.check(plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
        assert k2.check("fg_nothing") is None
        k2.revoke(key.id)
        assert k1.check(plain) is None and not k1.enforcing()
        actions = [(e.action, e.detail.get("key")) for e in g1.audit_log(limit=5)]
        assert actions[:2] == [(audit.KEY_REVOKE, key.id), (audit.KEY_CREATE, key.id)]
    finally:
        for x in (k1, k2, g1, g2):
            x.close()


# ----------------------------------------------------------------------------- PostgreSQL itself
def test_servers_starting_together_migrate_once(pg_database):
    url = pg_database()
    opened, errors = [], []
    start = threading.Barrier(6)

    def open_one() -> None:
        try:
            start.wait()
            opened.append(PgGallery(url, MODEL, DIM))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:1]
    assert len(opened) == 6
    with psycopg.connect(url) as con:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY version")]
        indexes = [r[0] for r in con.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'faces_hnsw_%'")]
    assert versions == [v for v, _, _ in migrations()]
    assert indexes == [f"faces_hnsw_{DIM}"]
    opened[0].add_person("Una", faces(unit(np.random.default_rng(43), 1)), MODEL)
    assert all(g.person_count == 1 for g in opened)
    for g in opened:
        g.close()


def test_a_newer_schema_is_refused(pg_database):
    url = pg_database()
    PgGallery(url, MODEL, DIM).close()
    with psycopg.connect(url) as con:
        con.execute("INSERT INTO schema_version (version, name) VALUES (9999, '9999_future.sql')")
    with pytest.raises(RuntimeError, match="newer than this FaceGate"):
        PgGallery(url, MODEL, DIM)


def test_encryption_key_is_refused_with_the_reason(pg_database):
    from facegate.security.encryption import new_key

    url = pg_database()
    with pytest.raises(EncryptionError, match="storage"):
        PgGallery(url, MODEL, DIM, encryption_key=new_key())
    with psycopg.connect(url) as con:  # refused before anything was created
        assert con.execute("SELECT to_regclass('faces')").fetchone()[0] is None


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(ConnectionError, match="cannot connect") as ei:
        PgGallery("postgresql://postgres:secret@127.0.0.1:1/none", MODEL, DIM)
    assert "secret" not in str(ei.value)  # the password is not echoed
    from facegate.gallery.postgres import PgKeyStore

    for opening in (lambda u: PgKeyStore(u), lambda u: PgGallery.open_existing(u)):
        with pytest.raises(ConnectionError, match="cannot connect"):
            opening("postgresql://postgres:secret@127.0.0.1:1/none")


def test_hnsw_search_uses_the_pgvector_index_and_exact_does_not(pg_database):
    """The gallery's own search statement (not a copy of it), run with EXPLAIN ANALYZE: the HNSW branch
    scans the expression index (its cast matches the index's), the exact branch never touches it.

    30 rows: with real statistics PostgreSQL prefers a sequential scan below some thousands of rows
    (pgvector's cost model; ``bench/pg_search.py`` shows the index at 10k and up), which is why the
    gallery searches exactly below ``exact_search_max``; sequential scans are switched off here, for
    this one transaction, to see what the statement can use."""
    url = pg_database()
    rng = np.random.default_rng(44)
    g = PgGallery(url, MODEL, DIM, exact_search_max=0)
    v = unit(rng, 30)
    for i in range(30):
        g.add_person(f"p{i}", faces(v[i]), MODEL)

    def plan(limit: int) -> list[str]:
        with g._read() as con, con.transaction():
            con.execute("SET LOCAL enable_seqscan = off")
            rows = con.execute(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + g._search_sql,
                {"q": v[0], "k": 5, "max": limit, "model": MODEL},
            ).fetchall()
        return [r[0] for r in rows if f"faces_hnsw_{DIM}" in r[0] and "Index" in r[0]]

    hnsw, exact = plan(-1), plan(2**62)  # the limits search(exact=False / True) passes
    assert hnsw and not any("never executed" in line for line in hnsw), hnsw
    assert all("never executed" in line for line in exact), exact
    assert [n.name for n in g.search(v[3], 3, exact=False)][0] == "p3"
    ex = [[(n.face_id, n.person_id) for n in g.search(q, 5, exact=True)] for q in v]
    hn = [[(n.face_id, n.person_id) for n in g.search(q, 5, exact=False)] for q in v]
    assert ex == hn
    g.close()


def test_reembed_replaces_vectors_and_index_in_one_transaction(pg_database):
    url = pg_database()
    rng = np.random.default_rng(45)
    g = PgGallery(url, MODEL, DIM)
    other = PgGallery(url, MODEL, DIM)  # another server, still on the old model
    people = [g.add_person(f"r{i}", faces(unit(rng, 2)), MODEL) for i in range(3)]
    new = {f.id: unit(rng, 1, 64)[0] for p in people for f in p.faces}
    probes = unit(rng, 4)
    before = [[(n.face_id, n.similarity) for n in g.search(q, 3)] for q in probes]
    with pytest.raises(ValueError):
        g.reembed("model-64", 64, dict(list(new.items())[:-1]))  # one face short: nothing changes
    assert [[(n.face_id, n.similarity) for n in g.search(q, 3)] for q in probes] == before
    assert PgGallery.open_existing(url).model_id == MODEL
    g.reembed("model-64", 64, new)
    with psycopg.connect(url) as con:
        indexes = [r[0] for r in con.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'faces_hnsw_%'")]
    assert indexes == ["faces_hnsw_64"]
    fid, vec = next(iter(new.items()))
    assert g.search(vec, 1)[0].face_id == fid and g.search(vec, 1, exact=False)[0].face_id == fid
    with pytest.raises(ModelMismatchError, match="re-embedded"):
        other.search(unit(rng, 1)[0])
    with pytest.raises(ModelMismatchError):
        PgGallery(url, MODEL, DIM)
    assert PgGallery.open_existing(url).model_id == "model-64"
    g.close()
    other.close()


# ----------------------------------------------------------------------------- migration
@pytest.fixture
def sqlite_gallery(tmp_path):
    """An embedded gallery with people, crops, labels, an API key and audit entries."""
    from facegate.security.keys import KeyStore

    data = tmp_path / "embedded"
    rng = np.random.default_rng(46)
    g = Gallery(data, MODEL, DIM)
    kept = []
    for i in range(12):
        p = g.add_person(f"Person {i}", faces(unit(rng, 1 + i % 3), crop_jpeg=bytes([i]) * 50, source=f"p{i}.jpg"), MODEL)
        kept.append(p)
    g.delete_person(kept[4].id)  # a gap in the ids, and a delete in the audit log
    g.close()
    ks = KeyStore(data / "gallery.sqlite3")
    _, plain = ks.create("admin", "ops")
    ks.close()
    return data, plain


def test_migrate_sqlite_to_postgres_and_back_keeps_everything(sqlite_gallery, pg_database, tmp_path):
    data, plain = sqlite_gallery
    url = pg_database()
    before = read_sqlite(data, None)
    queries = np.stack([f[3] for f in before.faces])
    src = Gallery(data, MODEL, DIM)
    expected = answers(src, queries)
    src.close()

    seen = []
    result = migrate_gallery(str(data), url, progress=seen.append, sample=1000)
    assert result.ok, result.problems
    assert result.faces == (len(before.faces), len(before.faces)) and result.sampled == len(before.faces)
    assert sum(seen) == len(before.faces)
    pg = PgGallery(url, MODEL, DIM)
    assert answers(pg, queries) == expected
    assert [(p.id, p.name, p.face_count) for p in pg.list_people()] == [(p[0], p[1], len([f for f in before.faces if f[1] == p[0]])) for p in before.people]
    assert pg.face_crop(before.faces[0][0]) == before.faces[0][4]
    keys = keys_for(pg)
    assert keys.check(plain) is not None  # the key hash came along
    keys.close()
    assert pg.audit_log(1)[0].action == "migrate"
    newcomer = pg.add_person("Newcomer", faces(unit(np.random.default_rng(47), 1)), MODEL)
    assert newcomer.id > max(p[0] for p in before.people)  # the id sequences continue after the copied ids
    pg.delete_person(newcomer.id)
    pg.close()

    back_dir = tmp_path / "back"
    result = migrate_gallery(url, str(back_dir), sample=1000)
    assert result.ok, result.problems
    back = Gallery(back_dir, MODEL, DIM)
    assert answers(back, queries) == expected
    back.close()
    again = read_sqlite(back_dir, None)
    assert again.people == before.people and again.keys == before.keys
    assert [(f[0], f[1], f[4], f[5]) for f in again.faces] == [(f[0], f[1], f[4], f[5]) for f in before.faces]
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(again.faces, before.faces))


def test_migrate_into_a_non_empty_destination_is_refused_and_writes_nothing(sqlite_gallery, pg_database):
    data, _ = sqlite_gallery
    url = pg_database()
    g = PgGallery(url, MODEL, DIM)
    g.add_person("Already Here", faces(unit(np.random.default_rng(48), 1)), MODEL)
    g.close()
    with pytest.raises(MigrationError, match="not empty"):
        migrate_gallery(str(data), url)
    after = read_pg(url)
    assert [p[1] for p in after.people] == ["Already Here"] and len(after.faces) == 1 and after.keys == []
    with pytest.raises(MigrationError, match="one of each"):
        migrate_gallery(str(data), str(data))


def test_migrate_command_shows_progress_and_verifies(sqlite_gallery, pg_database):
    data, _ = sqlite_gallery
    url = pg_database()
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "gallery", "migrate", "--from", str(data), "--to", url],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "copying faces" in proc.stderr and "verified" in proc.stderr
    assert "copied 11 people" in proc.stderr
    again = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "gallery", "migrate", "--from", str(data), "--to", url],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert again.returncode == 1 and "not empty" in again.stderr


def test_cli_commands_work_on_the_postgres_gallery(sqlite_gallery, pg_database, tmp_path):
    """`people list`, `people delete` and `audit` read and write the database that FACEGATE_GALLERY names."""
    data, _ = sqlite_gallery
    url = pg_database()
    assert migrate_gallery(str(data), url).ok
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "FACEGATE_GALLERY": url, "FACEGATE_DATA_DIR": str(tmp_path / "unused")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True, timeout=120, env=env)

    listed = cli("people", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Person 0" in listed.stdout and "Person 11" in listed.stdout and "Person 4" not in listed.stdout
    gone = cli("people", "delete", "person 3")
    assert gone.returncode == 0 and "deleted Person 3" in gone.stderr
    log = cli("audit", "--json", "--limit", "2")
    assert log.returncode == 0, log.stderr
    entries = [json.loads(line) for line in log.stdout.splitlines()]
    assert [e["action"] for e in entries] == ["delete", "migrate"] and entries[0]["actor"].startswith("cli:")
    names = {p[1] for p in read_pg(url).people}
    assert "Person 3" not in names and len(names) == 10
    sealed = cli("gallery", "encrypt")
    assert sealed.returncode == 2 and "storage" in sealed.stderr


def test_migrating_an_encrypted_gallery_needs_its_key_and_seals_the_way_back(pg_database, tmp_path):
    from facegate.security.encryption import new_key

    key = new_key()
    data, back = tmp_path / "sealed", tmp_path / "back"
    v = unit(np.random.default_rng(49), 3)
    g = Gallery(data, MODEL, DIM, encryption_key=key)
    g.add_person("Sealed", faces(v, crop_jpeg=b"\xff\xd8 a crop", source="Sealed_0001.jpg"), MODEL)
    g.close()
    url = pg_database()
    with pytest.raises(MigrationError, match="encrypted"):
        migrate_gallery(str(data), url)
    assert migrate_gallery(str(data), url, encryption_key=key).ok
    assert migrate_gallery(url, str(back), encryption_key=key).ok
    for f in back.iterdir():
        raw = f.read_bytes()
        assert v[0].tobytes() not in raw and b"\xff\xd8 a crop" not in raw and b"Sealed" not in raw, f  # names, sources
    with pytest.raises(EncryptionError):
        Gallery(back, MODEL, DIM)
    g = Gallery(back, MODEL, DIM, encryption_key=key)
    assert g.search(v[1], 1)[0].name == "Sealed" and g.face_crop(g.find_person("sealed").faces[0].id) == b"\xff\xd8 a crop"
    assert {f.source for f in g.find_person("sealed").faces} == {"Sealed_0001.jpg"}
    g.close()


def test_a_database_keyed_before_look_alikes_is_rekeyed_at_open(pg_database):
    """Issue 19 (9): migration 2 and the keys made again (names compared by how they look)."""
    url = pg_database()
    rng = np.random.default_rng(61)
    g = PgGallery(url, MODEL, DIM)
    first = g.add_person("Ana", faces(unit(rng, 1)), MODEL)
    g.close()
    with psycopg.connect(url) as con:  # back to keys of the earlier kind, with a look-alike enrolled back then
        con.execute("UPDATE people SET name_key = lower(name)")
        con.execute("INSERT INTO people (name, name_key, created_at) VALUES ('\u0410na', '\u0430na', '2026-01-01')")
        con.execute("UPDATE gallery_state SET name_keys = 1")
    g = PgGallery(url, MODEL, DIM)
    try:
        assert g.find_person("ＡＮＡ").id == first.id
        with pytest.raises(PersonExistsError, match="'Ana'"):
            g.add_person("An\u0430", faces(unit(rng, 1)), MODEL)
        assert [p.name for p in g.list_people()] == ["Ana", "\u0410na"]
    finally:
        g.close()
