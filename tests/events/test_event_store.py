"""The event log in the gallery's database and the hub in front of it, on SQLite and PostgreSQL:
filters and pagination, retention, a deleted person's events gone (from the files too, on SQLite),
sealing at rest, the bounded queue dropping the oldest, and door access decisions."""

from __future__ import annotations

import time

import numpy as np
import pytest

from facegate.events.access import AccessRules, Rule, parse_window
from facegate.events.hub import EventHub
from facegate.events.model import Event
from facegate.gallery.backends import events_for
from facegate.gallery.common import NewFace
from facegate.security.encryption import new_key

DIM = 8
CROP = b"\xff\xd8\xff\xe0EVENTCROP-" + b"Q7x" * 40 + b"\xff\xd9"  # stands for a JPEG: only its bytes matter here


def _face(seed: int) -> NewFace:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return NewFace(v / np.linalg.norm(v))


def _event(camera="door", status="unknown", person_id=None, name=None, t=None, crop=None, **kw) -> Event:
    t = time.time() if t is None else t
    return Event(camera=camera, started_at=t - 1, decided_at=t, status=status, person_id=person_id, name=name,
                 similarity=0.7 if person_id else None, track_id=1, frames=10, identified=3, crop_jpeg=crop, **kw)


@pytest.fixture
def gallery(store):
    g = store.open("test-model", DIM)
    yield g
    g.close()


def _hub(gallery, **kw) -> EventHub:
    return EventHub(events_for(gallery, kw.pop("key", None)), **kw)


def test_stored_events_filter_page_and_read_back(gallery):
    ada = gallery.add_person("Ada Lovelace", [_face(1)], "test-model")
    hub = _hub(gallery)
    try:
        t0 = time.time() - 100
        for i in range(7):
            hub.publish(_event(camera="door" if i % 2 else "yard", t=t0 + i))
        hub.publish(_event(status="recognized", person_id=ada.id, name="Ada Lovelace", t=t0 + 10, crop=CROP))
        assert hub.flush()
        store = hub.store
        assert store.count() == 8 and hub.counts["stored"] == 8
        everything = store.list(limit=100)
        assert [r.seq for r in everything] == sorted((r.seq for r in everything), reverse=True)  # newest first
        assert {r.event.camera for r in store.list(camera="yard", limit=100)} == {"yard"}
        assert len(store.list(camera="yard", limit=100)) == 4
        mine = store.list(person_id=ada.id)
        assert len(mine) == 1 and mine[0].event.name == "Ada Lovelace" and mine[0].has_crop
        assert store.crop(mine[0].event.id) == CROP
        assert [r.event.status for r in store.list(status="recognized")] == ["recognized"]
        assert len(store.list(since=t0 + 5, limit=100)) == 3  # decided at t0+5, t0+6, t0+10
        # cursor pagination: pages of 3 cover everything once
        seen, before = [], None
        while True:
            page = store.list(limit=3, before=before)
            if not page:
                break
            seen += [r.seq for r in page]
            before = page[-1].seq
        assert seen == [r.seq for r in everything]
        got = store.get(mine[0].event.id)
        assert got.event.similarity == pytest.approx(0.7) and got.event.frames == 10
        assert store.get("nope") is None and store.crop("nope") is None
    finally:
        hub.close()


def test_retention_by_age_and_count(gallery):
    hub = _hub(gallery, keep_days=1.0, keep_max=5)
    try:
        now = time.time()
        for i in range(3):
            hub.publish(_event(t=now - 3 * 86400 - i))  # three days old
        for i in range(8):
            hub.publish(_event(t=now - 60 + i))
        assert hub.flush()
        assert hub.store.count() == 11
        assert hub.prune() == 6  # 3 too old, then 3 beyond the newest 5
        left = hub.store.list(limit=100)
        assert len(left) == 5 and min(r.event.decided_at for r in left) == pytest.approx(now - 60 + 3)
        assert hub.counts["pruned"] == 6
    finally:
        hub.close()


def test_deleting_a_person_deletes_their_events(gallery, store, request):
    zed = gallery.add_person("Zelda Quokka", [_face(2)], "test-model")
    other = gallery.add_person("Other Person", [_face(3)], "test-model")
    hub = _hub(gallery)
    try:
        for _ in range(3):
            hub.publish(_event(status="recognized", person_id=zed.id, name="Zelda Quokka", crop=CROP))
        hub.publish(_event(status="recognized", person_id=other.id, name="Other Person"))
        hub.publish(_event())
        assert hub.flush()
        assert len(hub.store.list(person_id=zed.id)) == 3
        gallery.delete_person(zed.id)
        assert hub.store.list(person_id=zed.id) == []
        assert hub.store.count() == 2  # the other person's and the unknown one stay
        # an event of theirs still queued when they were deleted is dropped, not stored
        hub.publish(_event(status="recognized", person_id=zed.id, name="Zelda Quokka", crop=CROP))
        assert hub.flush() and hub.counts["skipped"] == 1 and hub.store.count() == 2
    finally:
        hub.close()
    if store.kind == "sqlite":
        gallery.flush()
        held = [f.name for f in store.data_dir.iterdir() if f.is_file() for n in (b"Zelda Quokka", b"EVENTCROP") if n in f.read_bytes()]
        assert held == []
    else:  # the delete rewrote the event log's files too (VACUUM FULL): no dead row version left on disk
        import psycopg

        pgdata = request.getfixturevalue("postgres").pgdata
        with psycopg.connect(store.url, autocommit=True) as con:
            con.execute("CHECKPOINT")
            oid = con.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        files = [f for f in (pgdata / "base" / str(oid)).rglob("*") if f.is_file()]
        assert files, "the scan must see this database's files"
        held = [f.name for f in files for n in (b"Zelda Quokka", b"EVENTCROP") if n in f.read_bytes()]
        assert held == []


def test_sealed_at_rest_with_the_gallerys_key(tmp_path):
    from facegate.gallery.sqlite import Gallery

    key = new_key()
    g = Gallery(tmp_path / "data", "test-model", DIM, encryption_key=key)
    ada = g.add_person("Ada Lovelace", [_face(1)], "test-model")
    hub = EventHub(events_for(g, key))
    try:
        hub.publish(_event(status="recognized", person_id=ada.id, name="Ada Lovelace", crop=CROP))
        assert hub.flush()
        r = hub.store.list()[0]
        assert r.event.name == "Ada Lovelace" and hub.store.crop(r.event.id) == CROP
        hub.store.add_webhook("http://127.0.0.1:9/x", "s3cret-webhook-key-123", [], [], [])
        assert hub.store.webhooks()[0].secret == "s3cret-webhook-key-123"
    finally:
        hub.close()
        g.close()
    for f in (tmp_path / "data").iterdir():
        data = f.read_bytes()
        assert b"Ada Lovelace" not in data and b"EVENTCROP" not in data and b"s3cret-webhook" not in data, f.name


def test_a_full_queue_drops_the_oldest_and_counts_it(gallery):
    hub = _hub(gallery, queue_max=10)
    try:
        events = [_event(camera=f"cam{i}") for i in range(3000)]
        t0 = time.monotonic()
        for e in events:
            hub.publish(e)
        publish_s = time.monotonic() - t0
        assert hub.flush(60)
        assert hub.counts["dropped"] > 0
        assert hub.counts["stored"] + hub.counts["dropped"] == 3000
        newest = hub.store.list(limit=1)[0]
        assert newest.event.id == events[-1].id  # the newest is never the one dropped
        print(f"3000 publishes in {publish_s * 1000:.1f} ms; stored {hub.counts['stored']}, dropped {hub.counts['dropped']}")
    finally:
        hub.close()


def test_access_rules_decide_per_camera_person_and_time():
    rules = AccessRules({"door": Rule.build(["ada lovelace", 7], ["mon-fri 07:00-19:00"]), "shed": Rule.build(["Bob"])})
    monday_9 = time.mktime((2026, 12, 7, 9, 0, 0, 0, 0, -1))  # a Monday, local time
    monday_20 = time.mktime((2026, 12, 7, 20, 0, 0, 0, 0, -1))
    saturday_9 = time.mktime((2026, 12, 12, 9, 0, 0, 0, 0, -1))
    ada = dict(status="recognized", person_id=3, name="Ada Lovelace")
    assert rules.decide(_event(t=monday_9, **ada)) == "granted"
    assert rules.decide(_event(t=monday_20, **ada)) == "denied"
    assert rules.decide(_event(t=saturday_9, **ada)) == "denied"
    assert rules.decide(_event(t=monday_9, status="recognized", person_id=7, name="Someone")) == "granted"  # by id
    assert rules.decide(_event(t=monday_9, status="recognized", person_id=8, name="Eve")) == "denied"
    assert rules.decide(_event(t=monday_9)) == "denied"  # unknown
    assert rules.decide(_event(t=monday_9, status="spoof")) == "denied"
    assert rules.decide(_event(camera="shed", status="recognized", person_id=1, name="bob")) == "granted"  # no hours
    assert rules.decide(_event(camera="gate", **ada)) is None  # no rule for this camera
    assert parse_window("sat-mon 22:00-24:00").days == frozenset({5, 6, 0})
    for bad in ("mon-fri", "funday 07:00-08:00", "mon 19:00-07:00", "mon 07:00-25:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_encrypting_a_gallery_in_place_seals_its_events(tmp_path):
    from facegate.gallery.sqlite import Gallery

    g = Gallery(tmp_path / "data", "test-model", DIM)
    ada = g.add_person("Ada Lovelace", [_face(1)], "test-model")
    hub = EventHub(events_for(g))
    hub.publish(_event(status="recognized", person_id=ada.id, name="Ada Lovelace", crop=CROP))
    hub.publish(_event(crop=CROP))
    hub.store.add_webhook("http://127.0.0.1:9/x", "s3cret-webhook-key-123", [], [], [])
    assert hub.flush()
    hub.close()
    assert any(b"EVENTCROP" in f.read_bytes() for f in (tmp_path / "data").iterdir())  # plain until sealed
    key = new_key()
    g.seal_existing(key)  # `facegate gallery encrypt`
    g.close()
    for f in (tmp_path / "data").iterdir():
        data = f.read_bytes()
        assert b"Ada Lovelace" not in data and b"EVENTCROP" not in data and b"s3cret-webhook" not in data, f.name
    g = Gallery(tmp_path / "data", "test-model", DIM, encryption_key=key)
    store = events_for(g, key)
    try:
        rows = store.list()
        assert sorted(str(r.event.name) for r in rows) == ["Ada Lovelace", "None"]
        assert all(store.crop(r.event.id) == CROP for r in rows)
        assert store.webhooks()[0].secret == "s3cret-webhook-key-123"
    finally:
        store.close()
        g.close()


def test_events_stored_before_a_key_are_sealed_when_one_is_set(tmp_path):
    from facegate.gallery.sqlite import Gallery

    g = Gallery(tmp_path / "data", "test-model", DIM)  # nobody enrolled yet: a key may be set on it
    hub = EventHub(events_for(g))
    hub.publish(_event(crop=CROP))
    assert hub.flush()
    hub.close()
    g.close()
    key = new_key()
    g = Gallery(tmp_path / "data", "test-model", DIM, encryption_key=key)
    store = events_for(g, key)
    try:
        assert store.crop(store.list()[0].event.id) == CROP
        store.add_webhook("http://127.0.0.1:9/x", "another-secret-0123456", [], [], [])
    finally:
        store.close()
    store = events_for(g, key)  # opened again: nothing sealed twice
    try:
        assert store.crop(store.list()[0].event.id) == CROP and store.webhooks()[0].secret == "another-secret-0123456"
    finally:
        store.close()
        g.close()
    assert not any(b"EVENTCROP" in f.read_bytes() for f in (tmp_path / "data").iterdir())


def test_a_stream_gets_events_another_process_stored(tmp_path):
    """Two hubs on one SQLite gallery (as `serve --workers 2` has): a subscriber of one gets the other's
    events (the log is polled), each once, and its own hub's events once too."""
    import asyncio
    import threading

    from facegate.gallery.sqlite import Gallery

    g1 = Gallery(tmp_path / "data", "test-model", DIM)
    g2 = Gallery(tmp_path / "data", "test-model", DIM)
    a, b = EventHub(events_for(g1), poll_s=0.05), EventHub(events_for(g2), poll_s=0.05)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    sub = b.subscribe(loop)
    try:
        sent = [_event(camera="from-a"), _event(camera="from-b"), _event(camera="from-a")]
        a.publish(sent[0])
        b.publish(sent[1])
        a.publish(sent[2])
        got = []

        async def take(n):
            for _ in range(n):
                got.append((await asyncio.wait_for(sub.queue.get(), 20))[1]["id"])

        asyncio.run_coroutine_threadsafe(take(3), loop).result(30)
        assert sorted(got) == sorted(e.id for e in sent)
        time_left = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.3), loop)
        time_left.result(5)
        assert sub.queue.empty()  # nothing twice
    finally:
        b.unsubscribe(sub)
        a.close()
        b.close()
        loop.call_soon_threadsafe(loop.stop)
        g1.close()
        g2.close()
