"""A video file as a camera, watched by a real `facegate serve`: one event per person passing.

The person is enrolled through the server's /register; the server is then started again with
``--camera door=VIDEO`` (a file plays once, at its own rate, from the server's start).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ServerProcess, facegate, said
from camkit import PERSON, door_video, enrol, events_of, ffmpeg, make_video, photos, wait_for  # noqa: F401  (fixtures)


def test_file_camera_gives_one_event_per_person(tmp_path, lfw_dir, door_video):
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    try:
        with first.client() as c:
            person_id = enrol(c, lfw_dir)
            assert c.get("/v1/cameras").json() == {"cameras": []}
    finally:
        first.stop()

    server = ServerProcess(data, "--camera", f"door={door_video}").start()
    try:
        with server.client() as c:
            st = wait_for(c, "door", lambda s: s["state"] == "ended" and s["tracks_now"] == 0, 60, "the video played to its end")
            events = events_of(st)
            assert [e["status"] for e in events] == ["recognized", "unknown"], events
            known, stranger = events
            assert known["name"] == PERSON.replace("_", " ") and known["person_id"] == person_id
            assert known["similarity"] >= 0.3 and known["identified"] >= 1 and known["frames"] >= 3
            assert stranger["person_id"] is None and stranger["name"] is None
            assert known["track_id"] != stranger["track_id"]
            # the person showed at 1 s and left at 4 s; decided while there (its identifications) or as it left
            assert known["started_at"] < stranger["started_at"]
            assert all(e["has_crop"] for e in events)
            assert st["events"] == 2 and st["tracks"] >= 2 and st["frames"] >= 20
            assert st["kind"] == "file" and st["url"] == str(door_video) and st["last_error"] is None
            # the newest frame as JPEG
            snap = c.get("/v1/cameras/door/snapshot")
            assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg" and snap.content[:2] == b"\xff\xd8"
            # unknown camera: a 404 with a JSON body
            r = c.get("/v1/cameras/nope/snapshot")
            assert r.status_code == 404 and r.json()["code"] == "camera_not_found"
            # the event store has them too (newest first), with the best shot's crop
            r = c.get("/v1/events", params={"camera": "door"})
            assert r.status_code == 200, r.text
            stored = r.json()["events"]
            assert [(e["id"], e["status"]) for e in stored] == [(stranger["id"], "unknown"), (known["id"], "recognized")]
            crop = c.get(f"/v1/events/{known['id']}/crop")
            assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"
            log = server.read_log()
            assert f"track {known['track_id']} recognized" in log
        # With keys: a viewer key reads the cameras (the Cameras page), a client key may not, no key gets 401.
        keys = {}
        for role in ("viewer", "client"):
            made = facegate("keys", "create", "--role", role, "--data", data)
            assert made.returncode == 0, made.stderr
            keys[role] = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
        with server.client() as c:
            assert c.get("/v1/cameras").status_code == 401
            assert c.get("/v1/cameras", headers=keys["viewer"]).json()["cameras"][0]["events"] == 2
            assert c.get("/v1/cameras/door/snapshot", headers=keys["viewer"]).status_code == 200
            assert c.get("/v1/cameras", headers=keys["client"]).status_code == 403
    finally:
        server.stop()


def test_camera_flag_needs_name_equals_url(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "serve", "--data", str(tmp_path), "--camera", "no-equals-sign"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "NAME=URL" in proc.stdout + proc.stderr
    twice = ["--camera", "a=rtsp://u:s3cret@h/x", "--camera", "a=rtsp://u:s3cret@h/y"]
    proc = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "serve", "--data", str(tmp_path), *twice], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "given twice" in said(proc) and "s3cret" not in said(proc)


@pytest.fixture(scope="module")
def stay_video(tmp_path_factory, lfw_dir, ffmpeg) -> Path:
    """1 s empty, then the enrolled person, still, for 40 s: in view when the server stops."""
    return make_video(tmp_path_factory.mktemp("stay") / "stay.mp4", [(None, 1.0), (photos(lfw_dir, PERSON)[3], 40.0)], whole=True)


def test_a_track_still_open_when_the_server_stops_gives_its_event(tmp_path, lfw_dir, stay_video):
    """The person in view when the server shuts down is decided then, on the faces seen, and stored:
    before, the open track was dropped and that passage left no event."""
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    try:
        with first.client() as c:
            person_id = enrol(c, lfw_dir)
    finally:
        first.stop()
    # 20 identifications before a track is decided: still open while the person stands there (4 s or more)
    cams = json.dumps([{"name": "door", "url": str(stay_video), "identify": 20}])
    server = ServerProcess(data, env={"FACEGATE_CAMERAS": cams}).start()
    try:
        with server.client() as c:
            st = wait_for(c, "door", lambda s: s["tracks_now"] == 1 and s["frames"] >= 3, 60, "the person in view")
            assert st["events"] == 0, st
    finally:
        server.stop()
    log = Path(server.log.name).read_text(errors="replace")
    assert "track 1 recognized Arnold Schwarzenegger" in log and ", ended," in log, log[-3000:]
    again = ServerProcess(data).start()
    try:
        with again.client() as c:
            events = c.get("/v1/events", params={"camera": "door"}).json()["events"]
    finally:
        again.stop()
    assert [(e["status"], e["person_id"]) for e in events] == [("recognized", person_id)], events
