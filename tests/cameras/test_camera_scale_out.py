"""Two FaceGate servers on one PostgreSQL, both configured with the same camera: exactly one watches it
(advisory lock), and when that one is SIGKILLed the other takes it over within seconds."""

from __future__ import annotations

import time

from conftest import ServerProcess
from camkit import camera, door_video, ffmpeg  # noqa: F401  (fixtures)


def test_one_server_watches_a_camera_and_another_takes_over(tmp_path, pg_database, door_video):
    url = pg_database()
    args = ("--gallery", url, "--camera", f"door={door_video}")
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(ServerProcess(tmp_path / name / "data", *args).start())
        a, b = servers
        with a.client() as ca, b.client() as cb:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                sa, sb = camera(ca, "door"), camera(cb, "door")
                if sa["watching"] or sb["watching"]:
                    break
                time.sleep(0.2)
            time.sleep(3)  # more than camera_claim_s (2 s): the other had its tries, and lost them
            sa, sb = camera(ca, "door"), camera(cb, "door")
            assert [sa["watching"], sb["watching"]].count(True) == 1, (sa, sb)
            holder, other, other_client = (a, b, cb) if sa["watching"] else (b, a, ca)
            assert (sb if holder is a else sa)["state"] == "standby"
            assert other_client.get("/v1/cameras/door/snapshot").status_code == 503  # another server has the frames

            holder.proc.kill()  # SIGKILL: no shutdown, its database session just ends
            holder.proc.wait()
            killed = time.monotonic()
            while not camera(other_client, "door")["watching"]:
                assert time.monotonic() - killed < 10, "the other server did not take the camera over within 10 s"
                time.sleep(0.2)
            took = time.monotonic() - killed
            st = camera(other_client, "door")
            assert st["state"] in ("connecting", "connected", "ended") and other.alive()
            print(f"camera taken over {took:.1f} s after the holder's SIGKILL")
    finally:
        for s in servers:
            s.stop()
