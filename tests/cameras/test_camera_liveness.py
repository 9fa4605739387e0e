"""A camera with ``liveness = "passive"``: a printed photo held up to it is a spoof event, never named;
a live face is judged by recognition. MiniFASNet checkpoints imported by the real CLI; the reference's
sample photos (a print, a live person) made into an H.264 video by ffmpeg."""

from __future__ import annotations

import pytest

from conftest import SHARED, ServerProcess, facegate, said
from camkit import events_of, ffmpeg, make_video, wait_for  # noqa: F401  (fixtures)

MINIFAS = SHARED / "models" / "minifasnet"
CHECKPOINTS = (("2.7_80x80_MiniFASNetV2.pth", "minifasnet-v2"), ("4_0_0_80x80_MiniFASNetV1SE.pth", "minifasnet-v1se"))

pytestmark = pytest.mark.skipif(
    not all((MINIFAS / f).is_file() for f, _ in CHECKPOINTS),
    reason=f"MiniFASNet checkpoints not found in {MINIFAS} (../shared beside the repository)",
)


def test_a_printed_face_is_a_spoof_event(tmp_path, ffmpeg):
    data = tmp_path / "data"
    for f, arch in CHECKPOINTS:
        r = facegate("models", "import-liveness", MINIFAS / f, "--arch", arch, "--data", data)
        assert r.returncode == 0, said(r)
    samples = MINIFAS / "samples"
    video = make_video(tmp_path / "spoof.mp4", [(None, 0.5), (samples / "image_F1.jpg", 2.5), (None, 1.5), (samples / "image_T1.jpg", 2.5), (None, 1.0)], whole=True)
    server = ServerProcess(data, "--liveness", "passive", "--camera", f"desk={video}").start()
    try:
        with server.client() as c:
            st = wait_for(c, "desk", lambda s: s["state"] == "ended" and s["tracks_now"] == 0, 60, "the video played to its end")
            events = events_of(st)
            assert [e["status"] for e in events] == ["spoof", "unknown"], events
            spoof, live = events
            assert spoof["person_id"] is None and spoof["name"] is None and spoof["liveness"] < 0.5
            assert live["liveness"] is not None and live["liveness"] > 0.5
    finally:
        server.stop()
