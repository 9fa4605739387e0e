"""Issue 19, finding 10: crop reads, listings and failed authentication are audited, and counted so
that a flood cannot fill the log (``security.audit.Tally``: one entry per actor and action per window).

Against a real `facegate serve` with keys, as an attacker or a curious operator would use it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ServerProcess
from facegate.security import audit


def new_key(data_dir: Path, role: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    r = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "keys", "create", "--role", role, "--data", str(data_dir)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, astronaut_payloads):
    data = tmp_path_factory.mktemp("audit-counts") / "data"
    s = ServerProcess(data).start()  # open (no key yet, loopback): enrol one person
    with s.client() as c:
        assert c.post("/register", json=astronaut_payloads[0]).status_code == 200
    s.stop()
    s.admin = new_key(data, "admin")
    s.start()  # with a key now: closed
    yield s
    s.stop()


def test_crop_read_listing_and_a_flood_of_failed_authentications_are_audited_in_a_few_entries(keyed):
    admin = {"Authorization": f"Bearer {keyed.admin}"}
    key_id = keyed.admin.split("_")[1]
    with keyed.client() as c:
        (person,) = c.get("/v1/people", headers=admin).json()["people"]
        face = c.get(f"/v1/people/{person['id']}", headers=admin).json()["faces"][0]
        r = c.get(face["crop_url"], headers=admin)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        time.sleep(1.1)  # the per-address limit (100/s) refuses before any key is looked at: not counted here
        # A new connection each (Connection: close): a connection resending before its 429's Retry-After is
        # held until then (finding 11), which would stretch this flood over minutes and their audit windows.
        codes = [
            c.get(
                "/v1/people", headers={"Connection": "close", **({"Authorization": f"Bearer fg_nope_{i}"} if i % 2 else {})}
            ).status_code
            for i in range(100)
        ]
        assert set(codes) <= {401, 429} and codes[0] == 401
        time.sleep(1.1)  # the flood also spent this address's 100 requests a second
        r = c.get("/v1/audit", params={"limit": 1000}, headers=admin)
        assert r.status_code == 200, r.text
        log = r.json()["entries"]

    by_action: dict[str, list[dict]] = {}
    for e in log:
        by_action.setdefault(e["action"], []).append(e)
    (crop,) = by_action[audit.CROP_READ]
    assert crop["actor"].startswith(f"key:{key_id}@127.0.0.1") and crop["detail"]["count"] == 1
    assert crop["detail"]["items"] == [face["id"]]
    (listing,) = by_action[audit.LIST_PEOPLE]
    assert listing["actor"].startswith(f"key:{key_id}@") and listing["detail"]["count"] == 1
    failed = by_action[audit.AUTH_FAILED]
    assert 1 <= len(failed) <= 3, failed
    assert sum(e["detail"]["count"] for e in failed) == 100
    assert all(e["actor"] == "unauthenticated@127.0.0.1" for e in failed)
    assert len(log) <= 10, [e["action"] for e in log]  # enroll, key_create?, crop, listing, a few counts

    # Read again: nothing counted twice.
    with keyed.client() as c:
        c.get("/v1/people", headers={})
        time.sleep(1.1)
        again = c.get("/v1/audit", params={"limit": 1000}, headers=admin).json()["entries"]
    failed = [e for e in again if e["action"] == audit.AUTH_FAILED]
    assert sum(e["detail"]["count"] for e in failed) == 101 and len(failed) <= 4


def test_the_counts_survive_a_stop(tmp_path, astronaut_payloads):
    """Counts not yet written are written when the server stops (SIGTERM)."""
    data = tmp_path / "data"
    key = new_key(data, "admin")
    s = ServerProcess(data).start()
    try:
        with s.client() as c:
            for _ in range(7):
                assert c.get("/v1/people", headers={"X-API-Key": key}).status_code == 200
    finally:
        s.stop()
    s.start()
    try:
        with s.client() as c:
            log = c.get("/v1/audit", headers={"X-API-Key": key}).json()["entries"]
    finally:
        s.stop()
    assert sum(e["detail"]["count"] for e in log if e["action"] == audit.LIST_PEOPLE) == 7 + 0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_tally_writes_a_windows_first_event_at_once_and_the_rest_when_it_closes():
    clock = Clock()
    t = audit.Tally(window_s=60, max_open=2, clock=clock)
    first = t.note("key:a@1", audit.CROP_READ, 5)
    assert first == [("key:a@1", audit.CROP_READ, {"count": 1, "window_s": 60, "items": [5]})]
    assert all(t.note("key:a@1", audit.CROP_READ, i) == [] for i in range(30))
    clock.t = 61
    out = t.note("key:b@1", audit.LIST_PEOPLE)  # closes a's window
    assert [(a, n, d["count"], len(d["items"])) for a, n, d in out[:1]] == [("key:a@1", audit.CROP_READ, 30, audit.TALLY_ITEMS)]
    assert out[1][0] == "key:b@1"
    # Many actors at once: beyond max_open they are counted together.
    t.note("x@2", audit.AUTH_FAILED)
    assert t.note("y@3", audit.AUTH_FAILED)[0][0] == audit.TALLY_OVERFLOW
    assert t.note("z@4", audit.AUTH_FAILED) == []
    drained = t.drain()
    assert (audit.TALLY_OVERFLOW, audit.AUTH_FAILED) in [(a, n) for a, n, _ in drained]
    assert t.drain() == []
