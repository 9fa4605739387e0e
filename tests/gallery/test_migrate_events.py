"""``facegate gallery migrate`` carries the door's history: the event log (fields, ids, crops), the
webhooks (secrets) and their delivery log, from the embedded gallery to PostgreSQL and back, sealed
or not as the destination needs; and on PostgreSQL a person deleted after the move takes their
events with them. Through the real command, on a real throwaway PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg

from facegate.events.model import Event
from facegate.gallery.backends import events_for
from facegate.gallery.common import NewFace
from facegate.gallery.events import Delivery, SqliteEventStore
from facegate.gallery.sqlite import DB_NAME, Gallery
from facegate.security.encryption import new_key

MODEL, DIM = "test-model-v1", 16
#: Stand-ins for JPEG crops: only their bytes matter, and each is findable in a file or a table.
CROP_ADA = b"\xff\xd8ADA-CROP-" + b"k3" * 60 + b"\xff\xd9"
CROP_STRANGER = b"\xff\xd8STRANGER-CROP-" + b"w9" * 60 + b"\xff\xd9"
SECRET = "whsec-Migrated-Secret-0123456789"
ADA = "Ada Zanzibarquill"


def _face(seed: int) -> NewFace:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return NewFace(v / np.linalg.norm(v), crop_jpeg=b"\xff\xd8face" + bytes([seed]) * 20)


def _event(status, person=None, crop=None, t=0.0, **kw) -> Event:
    return Event(
        camera="door", started_at=1_700_000_000.25 + t, decided_at=1_700_000_001.5 + t, status=status,
        person_id=None if person is None else person.id, name=None if person is None else person.name,
        similarity=0.83 if person else None, track_id=7 + int(t), frames=12, identified=5, crop_jpeg=crop, **kw,
    )


def _source(data: Path, key: str | None):
    """An embedded gallery with two people, five events (crops, a spoof with liveness, decisions),
    a webhook and three delivery rows; returns the people."""
    g = Gallery(data, MODEL, DIM, encryption_key=key)
    ada = g.add_person(ADA, [_face(1), _face(2)], MODEL)
    bob = g.add_person("Bob Stone", [_face(3)], MODEL)
    store = events_for(g, key)
    events = [
        _event("recognized", ada, CROP_ADA, 0, decision="granted"),
        _event("unknown", None, CROP_STRANGER, 1, decision="denied"),
        _event("recognized", bob, None, 2),
        _event("spoof", None, None, 3, liveness=0.12),
        _event("recognized", ada, CROP_ADA + b"2", 4),
    ]
    for e in events:
        assert store.add(e) is not None
    hook = store.add_webhook("https://relay.example/door", SECRET, ["recognized"], ["granted"], ["door"])
    for attempt, code in ((1, 500), (2, 500), (3, 204)):
        store.add_delivery(Delivery(hook.id, events[0].id, attempt, 1_700_000_002.0 + attempt, code, None if code == 204 else "HTTP 500", 3.5))
    store.close()
    g.close()
    return ada, bob


def _snapshot(store) -> dict:
    """Everything the API answers about events and webhooks, crops included."""
    rows = store.list(limit=1000)
    hooks = store.webhooks()
    return {
        "events": [(r.seq, r.has_crop, r.event.to_json()) for r in rows],
        "crops": {r.event.id: store.crop(r.event.id) for r in rows},
        "hooks": [h.__dict__ for h in hooks],
        "deliveries": {h.id: [d.__dict__ for d in store.deliveries(h.id)] for h in hooks},
    }


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True, timeout=180,
        env={**base, "COLUMNS": "200", **env},
    )


def _said(proc) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


def test_migrate_carries_events_and_webhooks_and_a_deleted_person_takes_their_events(pg_database, tmp_path):
    from facegate.gallery.pg_events import PgEventStore
    from facegate.gallery.postgres import PgGallery

    data = tmp_path / "embedded"
    ada, bob = _source(data, None)
    src = SqliteEventStore(data / DB_NAME)
    before = _snapshot(src)
    src.close()
    assert len(before["events"]) == 5 and before["crops"][before["events"][-1][2]["id"]] == CROP_ADA

    url = pg_database()
    moved = _cli("gallery", "migrate", "--from", str(data), "--to", url)
    assert moved.returncode == 0, moved.stderr
    assert "5 events, 1 webhooks (3 deliveries)" in _said(moved) and "verified" in _said(moved)

    pg = PgEventStore(url)
    try:
        assert _snapshot(pg) == before  # same seqs, ids, fields, crop bytes, webhook (secret), delivery log
        assert pg.webhooks()[0].secret == SECRET
        later = pg.add(_event("unknown", None, None, 9))  # the seq continues after the copied ones
        assert later > max(seq for seq, _, _ in before["events"])
    finally:
        pg.close()
    g = PgGallery(url, MODEL, DIM)
    entry = g.audit_log(1)[0]
    g.close()
    assert entry.action == "migrate" and entry.detail == {"faces": 3, "people": 2, "events": 5, "webhooks": 1}

    # Ada deleted on PostgreSQL through the CLI: her events (and their crops) go in the same transaction.
    gone = _cli("people", "delete", ADA, FACEGATE_GALLERY=url, FACEGATE_DATA_DIR=str(tmp_path / "unused"))
    assert gone.returncode == 0, gone.stderr
    pg = PgEventStore(url)
    try:
        left = pg.list(limit=100)
        assert ada.id not in {r.event.person_id for r in left} and pg.list(person_id=ada.id) == []
        assert len(left) == 4 and {r.event.person_id for r in left} == {None, bob.id}
        ada_events = [e[2]["id"] for e in before["events"] if e[2]["person_id"] == ada.id]
        assert len(ada_events) == 2 and all(pg.get(i) is None and pg.crop(i) is None for i in ada_events)
        assert pg.deliveries(pg.webhooks()[0].id)  # the delivery log is the webhook's, not the event's
    finally:
        pg.close()
    with psycopg.connect(url) as con:
        found = con.execute(
            "SELECT COUNT(*) FROM events WHERE position(%s::bytea in crop) > 0 OR name = %s", (b"ADA-CROP", ADA)
        ).fetchone()[0]
    assert found == 0


def test_an_encrypted_gallery_moves_its_events_open_to_postgres_and_sealed_back(pg_database, tmp_path):
    from facegate.gallery.pg_events import PgEventStore

    key = new_key()
    data, back = tmp_path / "sealed", tmp_path / "back"
    _source(data, key)
    src = SqliteEventStore(data / DB_NAME, key)
    before = _snapshot(src)
    src.close()
    url = pg_database()

    refused = _cli("gallery", "migrate", "--from", str(data), "--to", url)
    assert refused.returncode == 1 and "encrypted" in _said(refused)
    there = _cli("gallery", "migrate", "--from", str(data), "--to", url, FACEGATE_ENCRYPTION_KEY=key)
    assert there.returncode == 0, there.stderr
    pg = PgEventStore(url)  # PostgreSQL is not sealed by FaceGate: it holds them opened
    try:
        assert _snapshot(pg) == before
    finally:
        pg.close()
    with psycopg.connect(url) as con:
        assert con.execute("SELECT secret FROM webhooks").fetchone()[0] == SECRET
        assert bytes(con.execute("SELECT crop FROM events WHERE crop IS NOT NULL ORDER BY seq LIMIT 1").fetchone()[0]) == CROP_ADA

    home = _cli("gallery", "migrate", "--from", url, "--to", str(back), FACEGATE_ENCRYPTION_KEY=key)
    assert home.returncode == 0, home.stderr
    for f in back.iterdir():  # sealed again with the key: no name, crop or secret in any file
        raw = f.read_bytes()
        assert b"ADA-CROP" not in raw and b"STRANGER-CROP" not in raw and SECRET.encode() not in raw and b"Zanzibarquill" not in raw, f
    store = SqliteEventStore(back / DB_NAME, key)
    try:
        assert _snapshot(store) == before
    finally:
        store.close()


def test_migrate_into_a_database_holding_events_is_refused_and_writes_nothing(pg_database, tmp_path):
    from facegate.gallery.pg_events import PgEventStore
    from facegate.gallery.postgres import PgGallery

    data = tmp_path / "embedded"
    _source(data, None)
    url = pg_database()
    PgGallery(url, MODEL, DIM).close()
    pg = PgEventStore(url)
    pg.add(_event("unknown", None, None, 0))
    pg.close()
    refused = _cli("gallery", "migrate", "--from", str(data), "--to", url)
    assert refused.returncode == 1 and "not empty" in _said(refused)
    with psycopg.connect(url) as con:
        assert con.execute("SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM people), (SELECT COUNT(*) FROM webhooks)").fetchone() == (1, 0, 0)


def test_a_source_no_server_ever_ran_on_migrates_without_events(pg_database, tmp_path):
    """A gallery made by enrolments only has no event tables: it migrates with none."""
    data = tmp_path / "bare"
    g = Gallery(data, MODEL, DIM)
    g.add_person("Solo", [_face(5)], MODEL)
    g.close()
    url = pg_database()
    moved = _cli("gallery", "migrate", "--from", str(data), "--to", url)
    assert moved.returncode == 0, moved.stderr
    assert "0 events, 0 webhooks (0 deliveries)" in _said(moved)
