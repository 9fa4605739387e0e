"""The camera parts on their own: URL masking, a file read at its own rate keeping only the newest
frame, a missing file's error, and the per-track vote on real identifications of real faces."""

from __future__ import annotations

import time

import numpy as np
import pytest

from camkit import PERSON, STRANGER, ffmpeg, photos  # noqa: F401  (fixtures)
from facegate.cameras.source import FrameReader, kind_of, mask_text, mask_url
from facegate.cameras.tracks import Look, Tracks, face_weight, vote


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://user:pa55@10.0.0.5/stream1", "rtsp://***@10.0.0.5/stream1"),
        ("rtsp://user@10.0.0.5:8554/s", "rtsp://***@10.0.0.5:8554/s"),
        ("http://a:b@[::1]:8080/video.mjpg?x=1", "http://***@[::1]:8080/video.mjpg?x=1"),
        ("rtsp://10.0.0.5/stream1", "rtsp://10.0.0.5/stream1"),
        ("/dev/video0", "/dev/video0"),
    ],
)
def test_credentials_are_masked(url, masked):
    assert mask_url(url) == masked
    assert "pa55" not in mask_text(f"Connection refused: '{url}' and rtsp://x:pa55@other/", url)


def test_kinds():
    assert [kind_of(u) for u in ("rtsp://h/s", "https://h/m.mjpg", "/dev/video2", "clip.mp4")] == ["rtsp", "http", "device", "file"]


def test_a_file_plays_once_at_its_own_rate_and_only_the_newest_frame_is_kept(tmp_path, ffmpeg):
    import subprocess

    video = tmp_path / "count.mp4"
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=20", "-t", "2",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)],
        check=True, timeout=60,
    )
    reader = FrameReader(str(video), name="t").start()
    t0 = time.monotonic()
    try:
        time.sleep(1.0)
        mid = reader.latest()
        # Only bounds a slow machine cannot break: never ahead of the file's own 20 fps (decoding alone
        # takes a few ms for all 40 frames), and every frame read by the end.
        assert mid is not None and mid.seq <= 30, "played at its own 20 fps, not as fast as it decodes"
        assert reader.connected and reader.fps_in <= 25
        while not reader.ended and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert reader.ended and not reader.connected and reader.frames_in == 40 and reader.last_error is None
        assert took >= 1.7
        assert reader.latest().seq == 40 and reader.latest().rgb().shape == (120, 160, 3)
    finally:
        reader.stop()


def test_a_missing_file_is_an_error_and_retried(tmp_path):
    reader = FrameReader(str(tmp_path / "nope.mp4"), reconnect_max_s=0.5, name="t").start()
    try:
        deadline = time.monotonic() + 5
        while reader.reconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.reconnects >= 2 and not reader.connected and not reader.ended
        assert "no such video file" in reader.last_error
    finally:
        reader.stop()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, lfw_dir):
    """A real pipeline with PERSON enrolled from three photos."""
    from facegate.config import Settings
    from facegate.pipeline import Pipeline
    from facegate.vision.imageio import decode_image

    p = Pipeline.from_settings(Settings(data_dir=tmp_path_factory.mktemp("gallery")))
    p.enroll(PERSON, [decode_image(f.read_bytes()) for f in photos(lfw_dir, PERSON)[:3]])
    yield p
    p.close()


def _located(pipeline, path):
    from facegate.vision.imageio import decode_image

    img = decode_image(path.read_bytes())
    return img, pipeline.locator.faces(img)


def test_vote_names_the_enrolled_person_and_not_the_stranger(pipeline, lfw_dir):
    from facegate.cameras.watch import identify_one

    looks = []
    for path in photos(lfw_dir, PERSON)[3:6]:
        img, faces = _located(pipeline, path)
        lf = max(faces, key=face_weight)
        looks.append(Look(identify_one(pipeline, img, lf), face_weight(lf)))
    v = vote(looks, pipeline.threshold)
    assert (v.status, v.name) == ("recognized", PERSON) and v.similarity >= pipeline.threshold
    assert v.best is max((lk for lk in looks if lk.ident.decision.known), key=lambda lk: lk.weight)

    img, faces = _located(pipeline, photos(lfw_dir, STRANGER)[0])
    stranger = Look(identify_one(pipeline, img, max(faces, key=face_weight)), 1.0)
    assert vote([stranger], pipeline.threshold).status == "unknown"
    # one heavy stranger look against one light look of the person: the weights decide
    light = Look(looks[0].ident, 0.05)
    assert vote([stranger, light], pipeline.threshold).status == "unknown"
    assert vote([Look(stranger.ident, 0.05), looks[0]], pipeline.threshold).status == "recognized"


def test_tracks_decide_once_per_face(pipeline, lfw_dir):
    """A face held still for 10 frames is one track, decided after 3 identifications; gone, nothing more."""
    from facegate.cameras.watch import identify_one

    img, faces = _located(pipeline, photos(lfw_dir, PERSON)[3])
    calls = []

    def identify(image, lf):
        calls.append(lf)
        return identify_one(pipeline, image, lf)

    tracks = Tracks(identify, pipeline.threshold, per_track=3, lost_s=1.0, fps=5)
    decided, t = [], 1000.0
    for i in range(10):
        decided += tracks.step(img, faces[:1], t + 0.2 * i)
    assert len(decided) == 1 and decided[0].reason == "identified" and decided[0].verdict.name == PERSON
    assert len(calls) == 3 and tracks.count == 1
    blank = np.zeros_like(img)
    assert tracks.step(blank, [], t + 4.0) == [] and not tracks.live
    # a track that ends before its third identification is decided as it ends
    tracks2 = Tracks(identify, pipeline.threshold, per_track=3, lost_s=1.0, fps=5)
    assert tracks2.step(img, faces[:1], t) == []
    ended = tracks2.step(blank, [], t + 1.5)
    assert len(ended) == 1 and ended[0].reason == "ended" and ended[0].track.frames == 1


def test_mjpeg_over_http_is_read_live_and_its_end_is_a_disconnection(tmp_path, ffmpeg):
    """An http MJPEG stream (multipart/x-mixed-replace) served by ffmpeg itself (-listen 1), as cheap
    IP cameras do: read at its own 10 fps; when the sender stops, disconnected with the error."""
    import subprocess

    from conftest import free_port

    video = tmp_path / "clip.mp4"
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "4",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)],
        check=True, timeout=60,
    )
    port = free_port()
    sender = subprocess.Popen(
        [ffmpeg, "-loglevel", "error", "-re", "-i", str(video), "-c:v", "mjpeg", "-q:v", "5", "-f", "mpjpeg",
         "-listen", "1", f"http://127.0.0.1:{port}/video.mjpg"],
    )
    reader = FrameReader(f"http://cam:pa55@127.0.0.1:{port}/video.mjpg", reconnect_max_s=1.0, name="m").start()
    try:
        deadline = time.monotonic() + 10
        while reader.frames_in < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reader.frames_in >= 20 and reader.connected and 7 <= reader.fps_in <= 13
        assert reader.kind == "http" and reader.latest().rgb().shape == (240, 320, 3)
        sender.wait(15)  # the clip ends: the sender closes the connection
        deadline = time.monotonic() + 5
        while reader.connected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not reader.connected and not reader.ended and reader.last_error
        assert "pa55" not in reader.last_error
    finally:
        reader.stop()
        if sender.poll() is None:
            sender.kill()
            sender.wait()
