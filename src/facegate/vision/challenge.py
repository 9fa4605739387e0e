"""The active liveness challenge's numerics: did the person in these frames blink, turn their head, and
stay the same person? Knows nothing of nonces or HTTP (``security.challenges``, ``api.challenges``).

Measurements, from the face mesh (``vision.landmarks``):

- **Eye aspect ratio** (EAR; Soukupova and Cech, "Real-Time Eye Blink Detection using Facial Landmarks",
  CVWW 2016): for each eye ``(|p2-p6| + |p3-p5|) / (2 |p1-p4|)``, the eyelids' opening over the eye's
  width, averaged over both eyes. The paper's open eyes read about 0.25-0.35 and closed ones under 0.15,
  with 0.2 as the usual closed level; the mesh's eyelid points read the same scale (open lfw-dev eyes:
  median 0.28, docs/liveness.md). A blink: the action frame's EAR under ``closed_ear`` and at most
  ``blink_ratio`` of the neutral frames' (the drop, not only the level: narrow eyes and a lowered gaze
  read low without a blink).
- **Yaw** (``vision.headpose``, AFLW2000-3D's convention: yaw > 0 is the face turned toward the image's
  left, the person's own right). The mesh's eye centres, nose tip and mouth corners are the very vertices
  headpose's 3D points are taken from. Frames are judged as the camera took them, NOT mirrored as a
  selfie preview shows them: "turn_left" is the person's own left, a yaw below ``-turn_yaw``.
  A deliberate head turn is 30-45 degrees; 20 is well past the pose fit's error (4.3 degrees mean).
- **Same face**: every frame's face embedding against the first neutral frame's, at the verification
  threshold (the caller passes the similarities: embedding is the pipeline's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .headpose import HeadPose, head_pose
from .landmarks import Mesh

#: The actions a challenge may ask for.
ACTIONS = ("blink", "turn_left", "turn_right")

#: Mesh vertices p1..p6 of each eye in the paper's order (p1, p4 the corners; p2, p3 upper lid; p6, p5 lower).
RIGHT_EYE = (33, 160, 158, 133, 153, 144)  # the person's right eye (image left)
LEFT_EYE = (362, 385, 387, 263, 373, 380)
#: headpose's five points (YuNet order): eye centres (16 eyelid vertices each), nose tip, mouth corners.
_RIGHT_EYE_RING = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
_LEFT_EYE_RING = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
_NOSE_TIP, _MOUTH_RIGHT, _MOUTH_LEFT = 4, 61, 291


@dataclass(frozen=True)
class Limits:
    """What counts as each action (Settings: ``challenge_closed_ear``, ``challenge_blink_ratio``, ``challenge_turn_yaw``)."""

    closed_ear: float = 0.2
    blink_ratio: float = 0.7
    turn_yaw: float = 20.0


@dataclass(frozen=True)
class FrameReading:
    """What one frame shows: None where no face was found."""

    ear: float | None
    pose: HeadPose | None

    @property
    def found(self) -> bool:
        return self.ear is not None


def ear(points: np.ndarray) -> float:
    """Eye aspect ratio of a mesh, both eyes averaged."""

    def one(idx: tuple[int, ...]) -> float:
        p1, p2, p3, p4, p5, p6 = (points[i, :2] for i in idx)
        width = float(np.linalg.norm(p1 - p4))
        if width <= 0:
            return 0.0
        return float(np.linalg.norm(p2 - p6) + np.linalg.norm(p3 - p5)) / (2 * width)

    return (one(RIGHT_EYE) + one(LEFT_EYE)) / 2


def pose_points(points: np.ndarray) -> np.ndarray:
    """The five points ``headpose.head_pose`` takes (person's right eye first, i.e. image left first)."""
    p = points[:, :2]
    return np.stack([p[list(_RIGHT_EYE_RING)].mean(0), p[list(_LEFT_EYE_RING)].mean(0), p[_NOSE_TIP], p[_MOUTH_RIGHT], p[_MOUTH_LEFT]])


def read(mesh: Mesh | None) -> FrameReading:
    """EAR and head pose of a frame's mesh."""
    if mesh is None:
        return FrameReading(None, None)
    return FrameReading(ear(mesh.points), head_pose(pose_points(mesh.points)))


@dataclass(frozen=True)
class Outcome:
    """The challenge's verdict: ``reasons`` says, per failed action or frame, what the frames showed."""

    passed: bool
    actions: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    #: Per action: passed or not (the frame and its reading).
    done: dict[str, bool] = field(default_factory=dict)


def judge(
    actions: Sequence[str],
    neutral: Sequence[FrameReading],
    acted: dict[str, FrameReading],
    similarities: Sequence[float | None],
    threshold: float,
    limits: Limits = Limits(),
    labels: Sequence[str] | None = None,
) -> Outcome:
    """Did the frames show each action, and one person throughout?

    ``neutral``: the frames looking straight with eyes open (before and after the actions); ``acted``:
    the frame taken at each action; ``similarities``: each non-first frame's face against the first
    neutral frame's (None: no face to embed), frames in the order neutral then ``actions``; ``labels``:
    the frames' names in that order, for the reasons."""
    names = list(labels) if labels is not None else [f"neutral[{i}]" for i in range(len(neutral))] + [f"frames.{a}" for a in actions if a in acted]
    reasons: list[str] = []
    done: dict[str, bool] = {}
    for i, r in enumerate(neutral):
        if not r.found:
            reasons.append(f"{names[i]}: no face found")
    base = [r for r in neutral if r.found]
    base_ear = float(np.median([r.ear for r in base])) if base else None
    yaws = [r.pose.yaw for r in base if r.pose is not None]
    base_yaw = float(np.median(yaws)) if yaws else None
    for action in actions:
        r = acted.get(action)
        ok, why = _action(action, r, base_ear, base_yaw, limits)
        done[action] = ok
        if not ok:
            reasons.append(f"{action}: {why}")
    for i, s in enumerate(similarities):
        if s is None:
            continue  # the frame without a face is already said
        if s < threshold:
            reasons.append(f"{names[i + 1]}: not the same person as in {names[0]} (similarity {s:.2f}, at least {threshold:.2f} needed)")
    return Outcome(not reasons, tuple(actions), tuple(reasons), done)


def _action(action: str, r: FrameReading | None, base_ear: float | None, base_yaw: float | None, lim: Limits) -> tuple[bool, str]:
    if r is None:
        return False, "no frame sent for this action"
    if not r.found:
        return False, "no face found in its frame"
    if action == "blink":
        assert r.ear is not None
        if r.ear >= lim.closed_ear:
            return False, f"eyes not closed (eye aspect ratio {r.ear:.2f}, closed is under {lim.closed_ear:.2f})"
        if base_ear is not None and r.ear > lim.blink_ratio * base_ear:
            return False, f"eyes no more closed than in the neutral frames (eye aspect ratio {r.ear:.2f} against {base_ear:.2f})"
        if base_ear is None:
            return False, "no open-eyed neutral frame to compare with"
        return True, ""
    if r.pose is None:
        return False, "head pose could not be read"
    want = -1.0 if action == "turn_left" else 1.0  # yaw < 0: toward the person's own left
    side = "left" if action == "turn_left" else "right"
    turned = want * r.pose.yaw
    if turned < lim.turn_yaw:
        if turned <= -lim.turn_yaw:
            return False, f"head turned the other way (to the person's {'right' if side == 'left' else 'left'}, {abs(r.pose.yaw):.0f} degrees)"
        return False, f"head not turned to the {side} (yaw {abs(r.pose.yaw):.0f} degrees, at least {lim.turn_yaw:.0f} needed)"
    if base_yaw is not None and turned - want * base_yaw < lim.turn_yaw:
        return False, f"head turned only {turned - want * base_yaw:.0f} degrees from the neutral frames (at least {lim.turn_yaw:.0f} needed)"
    if base_yaw is None:
        return False, "no neutral frame to compare with"
    return True, ""


def describe(r: FrameReading) -> dict:
    """A frame's readings for an answer (rounded; None where no face)."""
    if not r.found:
        return {"face": False}
    out: dict = {"face": True, "eye_aspect_ratio": round(float(r.ear or 0.0), 3)}
    if r.pose is not None and all(map(math.isfinite, (r.pose.yaw, r.pose.pitch))):
        out["yaw"] = round(r.pose.yaw, 1)
    return out
