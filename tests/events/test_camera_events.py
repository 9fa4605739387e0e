"""Events from the real producer: a video file watched as a camera by `facegate serve` (the cameras
package), through the hub to a webhook receiver, with the door's access rule deciding: the enrolled
person is granted, the stranger denied. (Needs ../shared's lfw-dev photos and Debian's ffmpeg.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cameras"))

from camkit import PERSON, door_video, enrol, ffmpeg, wait_for  # noqa: E402,F401  (fixtures)
from conftest import ServerProcess  # noqa: E402
from test_webhooks import Receiver, _verify  # noqa: E402


def test_a_cameras_events_reach_a_webhook_with_the_doors_decision(tmp_path, lfw_dir, door_video):
    data = tmp_path / "data"
    receiver = Receiver()
    first = ServerProcess(data).start()
    try:
        with first.client() as c:
            person_id = enrol(c, lfw_dir)
            hook = c.post("/v1/webhooks", json={"url": receiver.url, "cameras": ["door"]}).json()
    finally:
        first.stop()
    env = {"FACEGATE_ACCESS": json.dumps({"door": {"allow": [person_id]}})}
    server = ServerProcess(data, "--camera", f"door={door_video}", env=env).start()
    try:
        with server.client() as c:
            wait_for(c, "door", lambda s: s["state"] == "ended" and s["tracks_now"] == 0, 90, "the video played to its end")
            got = []
            while len(got) < 2:
                headers, body = receiver.got.get(timeout=30)
                assert _verify(hook["secret"], headers, body)
                got.append(json.loads(body))
            got.sort(key=lambda e: e["started_at"])
            assert [(e["status"], e["decision"]) for e in got] == [("recognized", "granted"), ("unknown", "denied")], got
            assert got[0]["person_id"] == person_id and got[0]["name"] == PERSON.replace("_", " ")
            stored = c.get("/v1/events", params={"camera": "door"}).json()["events"]
            assert {(e["id"], e["decision"]) for e in stored} == {(e["id"], e["decision"]) for e in got}
            print("camera events:", [(e["status"], e["decision"], round(e["decided_at"] - e["started_at"], 2)) for e in got])
    finally:
        server.stop()
        receiver.close()
