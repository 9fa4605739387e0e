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


def _pg_files_hold(pgdata, needles: list[bytes]) -> list[str]:
    """Files of the cluster's databases (``base/``, ``global/``) holding any needle. ``pg_wal`` is left
    out: it keeps the rows until its segments are reused, which FaceGate cannot force (docs/security.md)."""
    hits = []
    for top in ("base", "global"):
        for f in (pgdata / top).rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                hits += [f"{f.relative_to(pgdata)}: {n[:16]!r}" for n in needles if n in data]
    return hits


def test_delete_on_postgresql_leaves_no_row_in_the_data_files(start_server, other_face, postgres, pg_database):
    """PostgreSQL only marks deleted rows dead: name, lookup key and crop stayed in the heap, TOAST and
    index files (also after a plain VACUUM). The delete now rewrites the tables; while an older snapshot
    (a pg_dump, a long transaction) needs the dead rows it says the purge is pending, as SQLite does."""
    import psycopg

    url = pg_database()
    s = start_server(None, "--gallery", url)
    with s.client() as c:
        made = c.post("/v1/people", json={"name": "Zelda Quokka", "images": [b64(other_face)]})
        assert made.status_code == 201, made.text
        pid = made.json()["id"]
        crop = c.get(made.json()["faces"][0]["crop_url"]).content
        needles = [b"Zelda Quokka", crop[len(crop) // 2: len(crop) // 2 + 48]]
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("CHECKPOINT")  # the rows reach the data files
            assert _pg_files_hold(postgres.pgdata, needles), "the scan must see the rows before the delete"
            holder = psycopg.connect(url, autocommit=True)  # as pg_dump: a snapshot older than the delete
            try:
                holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                holder.execute("SELECT 1").fetchone()
                r = c.delete(f"/v1/people/{pid}")
                assert r.status_code == 200 and r.json()["purge"] == "pending", r.text
                assert c.get("/healthz").json()["purge_pending"] is True
                assert c.get(f"/v1/people/{pid}").status_code == 404  # gone for every read already
                con.execute("CHECKPOINT")
                assert _pg_files_hold(postgres.pgdata, needles)  # the dead rows are still on disk
            finally:
                holder.execute("COMMIT")
                holder.close()
            deadline = time.monotonic() + 20
            while c.get("/healthz").json()["purge_pending"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert c.get("/healthz").json()["purge_pending"] is False
            con.execute("CHECKPOINT")
            assert not _pg_files_hold(postgres.pgdata, needles)
            # Without an older snapshot: done at once, the renamed-away name gone too.
            again = c.post("/v1/people", json={"name": "Quick Quinn", "images": [b64(other_face)]})
            assert again.status_code == 201, again.text
            assert c.patch(f"/v1/people/{again.json()['id']}", json={"name": "Slow Quinn"}).status_code == 200
            r = c.delete(f"/v1/people/{again.json()['id']}")
            assert r.status_code == 200 and r.json()["purge"] == "done", r.text
            con.execute("CHECKPOINT")
            assert not _pg_files_hold(postgres.pgdata, [b"Quick Quinn", b"Slow Quinn"])
    assert "keeps deleted rows" in s.read_log() and "pending purge" in s.read_log()
