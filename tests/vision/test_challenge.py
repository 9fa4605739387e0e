"""The active challenge's numerics on real photos: eye aspect ratio (blink), yaw (turns, and their sign),
the verdict's reasons, and the nonce store (single use, expiry, replays).

lfw-dev photos named here were looked at by eye: Tung_Chee-hwa_0003 and Yasser_Arafat_0002 show the eyes
shut or all but shut, _0004/_0005 and _0006/_0004 open; Paul_Bremer_0002 is turned toward the image's
left (his own right), _0003 toward the image's right (his own left), _0004 and _0007 face the camera.
The pose set's labels give turned heads of known yaw. Skipped without ../shared.
"""

from __future__ import annotations

import csv
import time

import cv2
import numpy as np
import pytest

from conftest import LFW, SHARED
from facegate.errors import ChallengeExpiredError, ChallengeNotFoundError, ChallengeUsedError
from facegate.security.challenges import ChallengeStore
from facegate.vision.challenge import ACTIONS, FrameReading, Limits, judge, read
from facegate.vision.headpose import HeadPose
from facegate.vision.landmarks import FaceMesh

POSE = SHARED / "faces" / "pose"
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"lfw-dev photos not found at {LFW}")


def photo(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(LFW / name.rsplit("_", 1)[0] / f"{name}.jpg")), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def mesh():
    m = FaceMesh()
    yield m
    m.close()


def reading(mesh: FaceMesh, img: np.ndarray) -> FrameReading:
    h, w = img.shape[:2]
    return read(mesh.find(img, near=(w * 0.3, h * 0.3, w * 0.7, h * 0.7)))  # LFW: the labelled face is central


@needs_lfw
@pytest.mark.parametrize(
    "opened, shut", [(("Tung_Chee-hwa_0004", "Tung_Chee-hwa_0005"), "Tung_Chee-hwa_0003"), (("Yasser_Arafat_0006", "Yasser_Arafat_0004"), "Yasser_Arafat_0002")]
)
def test_blink_from_real_photos(mesh, opened, shut):
    """Open eyes read above the literature's closed level (0.2), shut ones below it and under 0.7x the open."""
    neutral = [reading(mesh, photo(n)) for n in opened]
    closed = reading(mesh, photo(shut))
    assert all(r.ear >= 0.2 for r in neutral), [r.ear for r in neutral]
    assert closed.ear < 0.2, closed.ear
    out = judge(["blink"], neutral, {"blink": closed}, [0.9, 0.9], 0.48)
    assert out.passed, out.reasons
    # A still photo: the "blink" frame is a neutral one again.
    still = judge(["blink"], neutral[:1], {"blink": neutral[0]}, [1.0], 0.48)
    assert not still.passed and still.reasons[0].startswith("blink: eyes not closed"), still.reasons


@needs_lfw
def test_turn_sign_is_the_persons_own_side(mesh):
    """Paul_Bremer_0002 turns to his own right (the image's left); mirrored as a selfie preview shows it,
    the same photo reads as a turn to his left: the server judges frames as the camera took them."""
    neutral = [reading(mesh, photo(n)) for n in ("Paul_Bremer_0004", "Paul_Bremer_0007")]
    right = photo("Paul_Bremer_0002")
    r = reading(mesh, right)
    assert r.pose.yaw >= 20, r.pose
    assert judge(["turn_right"], neutral, {"turn_right": r}, [0.9] * 2, 0.48).passed
    wrong = judge(["turn_left"], neutral, {"turn_left": r}, [0.9] * 2, 0.48)
    assert not wrong.passed and "turned the other way (to the person's right" in wrong.reasons[0], wrong.reasons
    mirrored = reading(mesh, np.ascontiguousarray(right[:, ::-1]))
    assert mirrored.pose.yaw <= -20, mirrored.pose
    assert judge(["turn_left"], neutral, {"turn_left": mirrored}, [0.9] * 2, 0.48).passed
    left = reading(mesh, photo("Paul_Bremer_0003"))
    assert judge(["turn_left"], neutral, {"turn_left": left}, [0.9] * 2, 0.48).passed


@pytest.mark.skipif(not (POSE / "labels.csv").is_file(), reason=f"pose set not found at {POSE}")
def test_turns_on_the_labelled_pose_set(mesh):
    """Deliberate turns (labelled |yaw| >= 30) are read as turns to the right side; none the wrong way.

    Measured when written: 127 of 148 such photos have a mesh (the face mesh's detector misses the
    others, 19 of them turned beyond 60 degrees), and all 127 read beyond 20 degrees on the right side.
    A frontal reading stands for the neutral frames."""
    rows = [r for r in csv.DictReader(open(POSE / "labels.csv")) if abs(float(r["yaw_deg"])) >= 30]
    front = FrameReading(0.3, HeadPose(0.0, 0.0, 0.0))
    found = passed = wrong = 0
    for r in rows:
        img = cv2.cvtColor(cv2.imread(str(POSE / r["file"])), cv2.COLOR_BGR2RGB)
        got = read(mesh.find(img))
        if not got.found:
            continue
        found += 1
        action = "turn_right" if float(r["yaw_deg"]) > 0 else "turn_left"  # yaw > 0: the person's own right
        other = "turn_left" if action == "turn_right" else "turn_right"
        passed += judge([action], [front], {action: got}, [0.9], 0.48).passed
        wrong += judge([other], [front], {other: got}, [0.9], 0.48).passed
    assert found >= 0.8 * len(rows), (found, len(rows))
    assert passed >= 0.97 * found, (passed, found)
    assert wrong == 0


def test_judge_reasons():
    """Each failure is said: the missing frame, no face, another person."""
    n = FrameReading(0.3, HeadPose(0.0, 0.0, 0.0))
    out = judge(["blink", "turn_left"], [n, n], {"blink": FrameReading(None, None)}, [0.9, None], 0.48)
    assert not out.passed
    assert out.reasons == ("blink: no face found in its frame", "turn_left: no frame sent for this action"), out.reasons
    turned = FrameReading(0.3, HeadPose(-30.0, 0.0, 0.0))
    other = judge(["turn_left"], [n], {"turn_left": turned}, [0.2], 0.48)
    assert other.reasons == ("frames.turn_left: not the same person as in neutral[0] (similarity 0.20, at least 0.48 needed)",)
    # Already turned in the neutral frames: the turn must be made, not held.
    held = judge(["turn_left"], [FrameReading(0.3, HeadPose(-25.0, 0.0, 0.0))], {"turn_left": turned}, [0.9], 0.48, Limits())
    assert not held.passed and "turned only 5 degrees from the neutral frames" in held.reasons[0]


def test_store_single_use_expiry_and_replays():
    s = ChallengeStore(ttl_s=0.5)
    c = s.new("key-a")
    assert len(set(c.actions)) == 2 and set(c.actions) <= set(ACTIONS)
    with pytest.raises(ChallengeNotFoundError):
        s.take(c.id, "key-b")  # another client's challenge is not theirs to answer
    assert s.take(c.id, "key-a") == c
    with pytest.raises(ChallengeUsedError):
        s.take(c.id, "key-a")
    late = s.new("key-a")
    time.sleep(0.7)
    with pytest.raises(ChallengeExpiredError):
        s.take(late.id, "key-a")
    with pytest.raises(ChallengeNotFoundError):
        s.take("no-such-id", "key-a")
    assert s.replayed([b"frame one", b"frame two"]) == []
    assert s.replayed([b"frame three", b"frame one"]) == [1]
    many = {s.new("k").actions for _ in range(200)}
    assert len(many) == 6  # every ordered pair of distinct actions comes up
