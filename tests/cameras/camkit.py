"""Camera test helpers and fixtures (imported by the camera tests; not a conftest: the top one holds that name).

H.264 videos made by Debian's ffmpeg from real lfw-dev photos, at test time: an enrolled person appears and stays a few seconds, then a stranger; the photos stay in ../shared
(never copied into the repository), the videos in the test's temporary folder.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

FFMPEG = "/usr/bin/ffmpeg"
#: The enrolled person (photos 1-3 enrolled, photo 4 in the video) and the stranger (never enrolled).
PERSON, STRANGER = "Arnold_Schwarzenegger", "Dick_Cheney"
VIDEO_FPS = 10
SIZE = (640, 480)


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    if not Path(FFMPEG).is_file():
        pytest.skip(f"{FFMPEG} not found: apt-get install ffmpeg (the camera tests build their H.264 videos with it)")
    return FFMPEG


def photos(lfw: Path, person: str) -> list[Path]:
    return sorted((lfw / person).glob("*.jpg"))


def make_video(path: Path, segments: list[tuple[Path | None, float]], fps: int = VIDEO_FPS, *, whole: bool = False) -> Path:
    """An H.264 MP4: each segment shows a photo (enlarged 1.2x, drifting slowly sideways, as someone
    walking up to a door) or an empty grey scene (None) for its seconds. ``whole``: each photo fills
    the frame, unscaled and still (all photos of one size), as a camera close to a face sees it."""
    frames = path.parent / f"{path.stem}-frames"
    frames.mkdir(exist_ok=True)
    n = 0
    photos_in = [Image.open(p).convert("RGB") for p, _ in segments if p is not None]
    size = photos_in[0].size if whole else SIZE
    for photo, seconds in segments:
        face = Image.open(photo).convert("RGB") if photo is not None else None
        if face is not None and not whole:
            face = face.resize((300, 300))
        for i in range(int(round(seconds * fps))):
            canvas = Image.new("RGB", size, (118, 121, 125))
            if face is not None:
                canvas.paste(face, (0, 0) if whole else (120 + 3 * i, 90))
            canvas.save(frames / f"f{n:05d}.png")
            n += 1
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-y", "-framerate", str(fps), "-i", str(frames / "f%05d.png"),
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-g", str(fps), str(path)],
        check=True, timeout=120,
    )
    shutil.rmtree(frames)
    return path


@pytest.fixture(scope="session")
def door_video(tmp_path_factory, lfw_dir, ffmpeg) -> Path:
    """1 s empty, the enrolled person 3 s, 1.5 s empty, the stranger 3 s, 1 s empty (9.5 s at 10 fps)."""
    d = tmp_path_factory.mktemp("video")
    return make_video(
        d / "door.mp4",
        [(None, 1.0), (photos(lfw_dir, PERSON)[3], 3.0), (None, 1.5), (photos(lfw_dir, STRANGER)[0], 3.0), (None, 1.0)],
    )


def enrol(client: httpx.Client, lfw: Path) -> int:
    """Enrol PERSON through the server's /register (three photos other than the video's)."""
    imgs = [base64.b64encode(p.read_bytes()).decode() for p in photos(lfw, PERSON)[:3]]
    r = client.post("/register", json={"user_name": PERSON.replace("_", " "), "first_img": imgs[0], "sec_img": imgs[1], "third_img": imgs[2]})
    assert r.status_code == 200, r.text
    return r.json()["person_id"]


def camera(client: httpx.Client, name: str) -> dict:
    r = client.get("/v1/cameras")
    assert r.status_code == 200, r.text
    return next(c for c in r.json()["cameras"] if c["name"] == name)


def wait_for(client: httpx.Client, name: str, ok, timeout: float = 60.0, what: str = "") -> dict:
    """Poll the camera's state until ``ok(state)``; fail with the last state seen."""
    deadline = time.monotonic() + timeout
    st = camera(client, name)
    while not ok(st):
        if time.monotonic() > deadline:
            pytest.fail(f"camera {name}: {what or 'condition'} not met within {timeout} s; last state {st}")
        time.sleep(0.25)
        st = camera(client, name)
    return st


def events_of(st: dict) -> list[dict]:
    """The camera's events, oldest first."""
    return list(reversed(st["recent"]))


def gray_frame() -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), 120, np.uint8)
