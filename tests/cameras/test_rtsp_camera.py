"""A camera on a real RTSP server (Debian's GStreamer RTSP server), watched by a real `facegate serve`:
disconnected while the server is down, events once it is up, disconnected when it is killed, and
connected with events again when it comes back. Credentials in the URL never show.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import ServerProcess, free_port
from camkit import PERSON, door_video, enrol, events_of, ffmpeg, wait_for  # noqa: F401  (fixtures)

DEBIAN_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).resolve().parent
SECRET = "s3cret-Pa55"


@pytest.fixture(scope="session")
def rtsp_available() -> None:
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"],
        capture_output=True, text=True,
    ) if Path(DEBIAN_PYTHON).is_file() else None
    if probe is None or probe.returncode != 0:
        pytest.skip(
            "GStreamer's RTSP server for Debian's python3 is missing: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
            "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
        )


class RtspServer:
    def __init__(self, port: int, video: Path, log: Path) -> None:
        self.port, self.video, self.log_path = port, video, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> RtspServer:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [DEBIAN_PYTHON, str(HERE / "rtsp_server.py"), str(self.port), "/door", str(self.video)], stdout=subprocess.PIPE, stderr=self.log
        )
        line = self.proc.stdout.readline().decode().strip()
        assert line == "ready", f"the RTSP server did not start: {line!r} {self.log_path.read_text(errors='replace')[-2000:]}"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def test_rtsp_camera_drops_and_comes_back(tmp_path, lfw_dir, door_video, rtsp_available):
    port = free_port()
    rtsp = RtspServer(port, door_video, tmp_path / "rtsp.log")
    settings = tmp_path / "facegate.toml"
    settings.write_text(
        f'[[cameras]]\nname = "door"\nurl = "rtsp://admin:{SECRET}@127.0.0.1:{port}/door"\nfps = 5\nreconnect_max_s = 1.0\n'
    )
    server = ServerProcess(tmp_path / "data", "--config", str(settings)).start()
    try:
        with server.client() as c:
            # Nothing listens yet: disconnected, with the error, the password masked.
            st = wait_for(c, "door", lambda s: s["state"] == "disconnected", 30, "disconnected before the RTSP server runs")
            assert st["watching"] and not st["connected"] and st["last_error"]
            assert st["url"] == f"rtsp://***@127.0.0.1:{port}/door" and st["kind"] == "rtsp"
            person_id = enrol(c, lfw_dir)

            rtsp.start()
            st = wait_for(c, "door", lambda s: len(s["recent"]) >= 2, 60, "two events from the stream")
            first = events_of(st)
            assert [e["status"] for e in first[:2]] == ["recognized", "unknown"], first
            assert first[0]["name"] == PERSON.replace("_", " ") and first[0]["person_id"] == person_id
            assert st["connected"] and st["last_error"] is None and st["fps_in"] > 0

            # The RTSP server dies: disconnected with an error, then reconnects (backoff capped at 1 s) and sees the person again.
            rtsp.kill()
            st = wait_for(c, "door", lambda s: s["state"] == "disconnected" and s["last_error"], 30, "disconnected after the kill")
            before = st["events"]
            rtsp.start()
            st = wait_for(c, "door", lambda s: s["events"] >= before + 1 and s["connected"], 60, "an event after the stream came back")
            again = st["recent"][0] if st["recent"][0]["status"] == "recognized" else st["recent"][-1]
            assert st["reconnects"] >= 2
            assert any(e["status"] == "recognized" and e["name"] == PERSON.replace("_", " ") for e in st["recent"][: st["events"] - before])
            assert again["started_at"] > first[0]["started_at"]
            body = c.get("/v1/cameras").text
            assert SECRET not in body
        time.sleep(0.2)
        assert SECRET not in server.read_log()
    finally:
        rtsp.kill()
        server.stop()
