"""Deleting a person while a reader holds the database (issue 19, finding 6), over real HTTP: the
answer and /healthz say the purge is pending, and it finishes when the reader goes."""

from __future__ import annotations

import sqlite3
import time

from conftest import b64


def _files_hold(data_dir, needles: list[bytes]) -> list[str]:
    return [f"{f.name}: {n!r}" for f in data_dir.iterdir() if f.is_file() for n in needles if n in f.read_bytes()]


def test_delete_under_a_held_read_transaction_says_purge_pending_until_the_reader_goes(start_server, other_face):
    s = start_server(None)
    with s.client() as c:
        made = c.post("/v1/people", json={"name": "Zelda Quokka", "images": [b64(other_face)]})
        assert made.status_code == 201, made.text
        pid = made.json()["id"]
        assert c.get("/healthz").json()["purge_pending"] is False
        reader = sqlite3.connect(s.data_dir / "gallery.sqlite3")  # as `sqlite3 .backup` during serving
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM faces").fetchone()
            t0 = time.monotonic()
            r = c.delete(f"/v1/people/{pid}")
            assert r.status_code == 200 and time.monotonic() - t0 < 5, r.text
            assert r.json()["purge"] == "pending" and r.json()["id"] == pid
            assert c.get("/healthz").json()["purge_pending"] is True
            assert c.get(f"/v1/people/{pid}").status_code == 404  # gone for every read already
            assert _files_hold(s.data_dir, [b"Zelda Quokka"])  # the -wal file still holds the name
        finally:
            reader.execute("COMMIT")
            reader.close()
        deadline = time.monotonic() + 10
        while c.get("/healthz").json()["purge_pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/healthz").json()["purge_pending"] is False
        assert not _files_hold(s.data_dir, [b"Zelda Quokka", b"zelda quokka"])
        # Without a reader: done at once.
        again = c.post("/v1/people", json={"name": "Quick Quinn", "images": [b64(other_face)]})
        assert again.status_code == 201, again.text
        r = c.delete(f"/v1/people/{again.json()['id']}")
        assert r.status_code == 200 and r.json()["purge"] == "done"
    assert "blocks the checkpoint" in s.read_log() and "pending purge" in s.read_log()
