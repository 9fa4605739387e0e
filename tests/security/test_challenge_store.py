"""Liveness challenges in the gallery's database, as several processes would use them: two stores on one
SQLite file or one PostgreSQL database (each its own connection), real threads racing to spend one challenge.
The same over HTTP with `facegate serve --workers 2` is tests/api/test_challenges_workers.py."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from facegate.errors import BusyError, ChallengeExpiredError, ChallengeNotFoundError, ChallengeRequiredError, ChallengeUsedError
from facegate.security.challenges import ChallengeStore


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request, tmp_path):
    """Factory: a new ChallengeStore on the test's one database (call it twice: two 'processes')."""
    opened: list[ChallengeStore] = []
    if request.param == "postgres":
        from facegate.gallery.pg_challenges import PgChallengeStore

        url = request.getfixturevalue("pg_database")()
        make = lambda: PgChallengeStore(url)  # noqa: E731
    else:
        from facegate.gallery.challenges import SqliteChallengeStore

        make = lambda: SqliteChallengeStore(tmp_path / "gallery.sqlite3")  # noqa: E731

    def _open(**kw) -> ChallengeStore:
        s = ChallengeStore(backend=make(), **kw)
        opened.append(s)
        return s

    _open.kind = request.param
    yield _open
    for s in opened:
        s.close()


def race(*calls):
    """Run the calls at once (released together by a barrier); each one's result or exception."""
    gate = threading.Barrier(len(calls))

    def run(f):
        gate.wait()
        try:
            return f()
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_two_answers_at_once_exactly_one_spends(opener):
    """Issued by one store, answered at once through both, 25 times: one answer takes it, the other hears 409."""
    a, b = opener(), opener()
    for _ in range(25):
        c = a.new("key:k1@10.0.0.1")
        got = race(lambda: a.take(c.id, c.owner), lambda: b.take(c.id, c.owner))
        won = [g for g in got if not isinstance(g, Exception)]
        lost = [g for g in got if isinstance(g, Exception)]
        assert won == [c], got
        assert len(lost) == 1 and isinstance(lost[0], ChallengeUsedError), got
        with pytest.raises(ChallengeUsedError):
            b.take(c.id, c.owner)


def test_passed_challenge_spent_once_by_an_enrolment(opener):
    """The passed face's vector, recorded by one store, is spent through the other; two enrolments at once: one gets it."""
    a, b = opener(), opener()
    vec = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    for _ in range(10):
        c = a.new("key:k1@10.0.0.1")
        assert b.take(c.id, c.owner) == c
        with pytest.raises(ChallengeRequiredError):
            a.spend_passed(c.id, c.owner)  # answered, not (yet) passed
        b.passed(c.id, c.owner, vec)
        with pytest.raises(ChallengeRequiredError):
            a.spend_passed(c.id, "key:other@10.0.0.2")  # another client's: refused, and not spent by that
        got = race(lambda: a.spend_passed(c.id, c.owner), lambda: b.spend_passed(c.id, c.owner))
        vectors = [g for g in got if isinstance(g, np.ndarray)]
        assert len(vectors) == 1 and np.array_equal(vectors[0], vec), got
        assert sum(isinstance(g, ChallengeRequiredError) for g in got) == 1, got


def test_refusals_are_the_same_on_every_store(opener):
    a, b = opener(ttl_s=0.6), opener(ttl_s=0.6)
    c = a.new("key:k1@10.0.0.1")
    with pytest.raises(ChallengeNotFoundError):
        b.take(c.id, "key:k2@10.0.0.1")  # another key's challenge
    with pytest.raises(ChallengeNotFoundError):
        b.take("no-such-id", c.owner)
    late = b.new("key:k1@10.0.0.1")
    time.sleep(0.8)
    for s in (a, b, a):  # a late answer is 410 however often it comes, and does not become 409
        with pytest.raises(ChallengeExpiredError):
            s.take(late.id, late.owner)
    with pytest.raises(ChallengeExpiredError):
        b.take(c.id, c.owner)


def test_frames_remembered_across_stores_and_racing(opener):
    """Frames answered through one store are a replay through the other; the same new frame sent through
    both at once is new to exactly one."""
    a, b = opener(), opener()
    assert a.replayed([b"frame one", b"frame two"]) == []
    assert b.replayed([b"frame three", b"frame one"]) == [1]
    for i in range(20):
        frame = f"fresh frame {i}".encode()
        got = race(lambda: a.replayed([b"x" + frame, frame]), lambda: b.replayed([frame, b"y" + frame]))
        assert sorted(map(tuple, got)) == [(), (0,)] or sorted(map(tuple, got)) == [(), (1,)], got
        assert got.count([]) == 1, got


def test_bounds_per_key_and_in_all_hold_across_stores(opener):
    """At most max_open_per_key open per API key (whatever its address) and max_open in all, counted in
    the database: the second store sees the first's; an answered or expired challenge frees its place."""
    a, b = opener(ttl_s=3, max_open=5, max_open_per_key=3), opener(ttl_s=3, max_open=5, max_open_per_key=3)
    k1 = [a.new("key:k1@10.0.0.1"), b.new("key:k1@10.0.0.2"), a.new("key:k1@10.0.0.3")]
    with pytest.raises(BusyError, match="this API key has 3 challenges open"):
        b.new("key:k1@10.0.0.1")
    b.new("key:k2@10.0.0.1")
    a.new("open@127.0.0.1")
    with pytest.raises(BusyError, match="5 challenges are open"):
        b.new("key:k3@10.0.0.1")
    a.take(k1[0].id, k1[0].owner)  # answered: its place is free
    b.new("key:k3@10.0.0.1")
    # Two stores racing for the last place: one gets it.
    a.take(k1[1].id, k1[1].owner)
    got = race(lambda: a.new("key:k4@10.0.0.1"), lambda: b.new("key:k5@10.0.0.1"))
    assert sum(isinstance(g, BusyError) for g in got) == 1, got
    time.sleep(3.2)  # all expired: places free again
    assert all(a.new(f"key:k1@10.0.0.{i}") for i in range(3))


def test_expired_rows_are_removed(opener):
    """Answered challenges and frame hashes are kept for the replay window, then deleted; open ones after
    their life plus the window; beyond 10 x max_open rows the oldest go whatever their age."""
    s = opener(ttl_s=0.2, replay_window_s=0.5, purge_every_s=0.0, max_open=3, max_open_per_key=3)
    c = s.new("key:k1@h")
    s.take(c.id, c.owner)
    s.new("key:k1@h")
    s.replayed([b"a", b"b"])
    assert s.backend.count() == (2, 2)
    time.sleep(0.9)
    s.replayed([b"c"])  # purges before remembering
    assert s.backend.count() == (0, 1)
    with pytest.raises(ChallengeNotFoundError):
        s.take(c.id, c.owner)  # forgotten: unknown now, still refused
    # A passed face nobody enrolled with: its vector is cleared once it can no longer be spent (the row stays for 409s).
    p = opener(ttl_s=0.2, replay_window_s=60, purge_every_s=0.0)
    c = p.new("key:k1@h")
    p.take(c.id, c.owner)
    p.passed(c.id, c.owner, np.ones(8, np.float32))

    def vector():
        with p.backend._tx() as cur:
            return p.backend._x(cur, "SELECT vector FROM challenges WHERE id = ?", (c.id,)).fetchone()[0]

    assert vector() is not None
    time.sleep(0.3)
    p.new("key:k1@h")  # purges first
    assert vector() is None
    with pytest.raises(ChallengeUsedError):
        p.take(c.id, c.owner)
    with pytest.raises(ChallengeRequiredError):
        p.spend_passed(c.id, c.owner)
    big = opener(ttl_s=60, purge_every_s=0.0, max_open=2, max_open_per_key=2)
    for i in range(25):
        big.replayed([f"f{i}".encode()])
        time.sleep(0.002)
    assert big.backend.count()[1] <= 21, big.backend.count()
    assert big.replayed([b"f24"]) == [0] and big.replayed([b"f0"]) == []  # the newest kept, the oldest gone


def test_sqlite_seals_the_passed_face_with_the_gallery_key(tmp_path):
    """With encryption at rest, a passed challenge's face vector is stored sealed, and cleared when spent."""
    from facegate.gallery.challenges import SqliteChallengeStore
    from facegate.security.encryption import new_key

    db = tmp_path / "gallery.sqlite3"
    s = ChallengeStore(backend=SqliteChallengeStore(db, encryption_key=new_key()))
    vec = np.arange(512, dtype=np.float32) / 512
    c = s.new("key:k1@h")
    s.take(c.id, c.owner)
    s.passed(c.id, c.owner, vec)
    with sqlite3.connect(db) as con:
        (stored,) = con.execute("SELECT vector FROM challenges WHERE id = ?", (c.id,)).fetchone()
    assert stored is not None and vec.tobytes() not in stored and stored.startswith(b"gAAAA")  # a Fernet token
    assert np.array_equal(s.spend_passed(c.id, c.owner), vec)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT vector, state FROM challenges WHERE id = ?", (c.id,)).fetchone() == (None, "spent")
    s.close()


def test_gallery_encrypt_drops_passed_faces_stored_in_the_clear(tmp_path):
    """`facegate gallery encrypt` (Gallery.seal_existing) on a gallery whose challenge table holds a passed face
    written before the key: afterwards its vector is in no file; the challenge can no longer be enrolled with."""
    from facegate.gallery.challenges import SqliteChallengeStore
    from facegate.gallery.sqlite import DB_NAME, Gallery
    from facegate.security.encryption import new_key

    data = tmp_path / "data"
    data.mkdir()
    g = Gallery(data, "test-model", 512)
    s = ChallengeStore(backend=SqliteChallengeStore(data / DB_NAME))
    vec = (np.arange(512, dtype=np.float32) + 0.123) / 1000
    c = s.new("key:k1@h")
    s.take(c.id, c.owner)
    s.passed(c.id, c.owner, vec)
    on_disk = lambda: b"".join(f.read_bytes() for f in data.iterdir() if f.is_file())  # noqa: E731
    assert vec.tobytes() in on_disk()  # so the check below can fail
    g.seal_existing(new_key())
    assert vec.tobytes() not in on_disk()
    with pytest.raises(ChallengeRequiredError):
        s.spend_passed(c.id, c.owner)
    s.close()
    g.close()


def test_challenges_ask_only_the_configured_actions(tmp_path):
    """challenge_actions = turn_left,turn_right: every challenge asks both turns, in a random order, never a blink."""
    from facegate.gallery.challenges import SqliteChallengeStore

    store = ChallengeStore(backend=SqliteChallengeStore(tmp_path / "g.sqlite3"), actions=("turn_left", "turn_right"))
    asked = [store.new("key:a").actions for _ in range(40)]
    assert all(set(a) == {"turn_left", "turn_right"} for a in asked)
    assert len(set(asked)) == 2  # both orders occur (odds of one order 40 times: 2 x 2^-40)
    with pytest.raises(ValueError, match="at least two"):
        ChallengeStore(backend=SqliteChallengeStore(tmp_path / "h.sqlite3"), actions=("blink",))
