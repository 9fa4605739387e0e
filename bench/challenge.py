"""The active liveness challenge: false refusals on live-like sequences built from real photos, still
photos that would pass (none should), and the time each check adds to an answer.

Data (``../shared``; limits are NOT tuned on them: EAR 0.2 and 0.7x, 20 degrees, the verification threshold):

- pose set (AFLW2000-3D, labelled yaw): each photo labelled |yaw| >= 30 (a deliberate turn) as the
  turn frame to its labelled side, a frontal reading as the neutral frames: refused when the mesh finds
  no face, reads the turn under 20 degrees, or the wrong way. Photos labelled 20-30 reported apart.
- lfw-dev turn sequences: for each person, the two photos the mesh reads most frontal as neutral frames,
  each other photo of theirs read |yaw| >= 25 as the turn to that side: the whole check
  (``Pipeline.challenge_frames``), so a refusal here is the same-face check (different photos, often
  years apart: harder than live frames a second apart) or the turn measured from the neutral frames.
- lfw-dev blink sequences: the photos with eyes shut checked by eye (tests/vision/test_challenge.py).
- still photos: every lfw-dev photo as every frame, for each pair of actions: passes are false accepts.

Times: per frame, on one thread of this process (median over the photos): the face mesh (``FaceMesh.find``),
EAR and head pose on its points, locating and embedding the face (the pipeline's own path), and a
whole 3-frame answer (``challenge_frames`` on the turn sequences: 2 neutral frames and 1 action frame).

    python bench/challenge.py [--shared ../shared] [--json bench/results/challenge.json] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from facegate.config import Settings
from facegate.pipeline import Pipeline
from facegate.vision.challenge import ACTIONS, FrameReading, ear, judge, pose_points, read
from facegate.vision.headpose import HeadPose, head_pose

BLINKS = {"Tung_Chee-hwa": ("Tung_Chee-hwa_0003",), "Yasser_Arafat": ("Yasser_Arafat_0002",)}


def rgb(p: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=0, help="people of lfw-dev to use (0: all)")
    a = ap.parse_args()
    lfw, pose_dir = a.shared / "faces" / "lfw-dev", a.shared / "faces" / "pose"
    p = Pipeline.from_settings(Settings(data_dir=Path(tempfile.mkdtemp(prefix="fg-bench-challenge-"))))
    mesh = p.landmarks
    out: dict = {}

    # ---- pose set: deliberate turns
    front = FrameReading(0.3, HeadPose(0.0, 0.0, 0.0))
    bins = {"|yaw| >= 30": [0, 0, 0, 0], "20 <= |yaw| < 30": [0, 0, 0, 0]}  # photos, no face, too little, wrong way
    for r in csv.DictReader(open(pose_dir / "labels.csv")):
        y = float(r["yaw_deg"])
        key = "|yaw| >= 30" if abs(y) >= 30 else "20 <= |yaw| < 30" if abs(y) >= 20 else None
        if key is None:
            continue
        got = read(mesh.find(rgb(pose_dir / r["file"])))
        b = bins[key]
        b[0] += 1
        action = "turn_right" if y > 0 else "turn_left"
        if not got.found or got.pose is None:
            b[1] += 1
        elif not judge([action], [front], {action: got}, [1.0], p.threshold).passed:
            b[3 if (got.pose.yaw > 0) != (y > 0) else 2] += 1
    out["pose_turns"] = {k: dict(zip(("photos", "no_face", "too_little", "wrong_way"), v)) for k, v in bins.items()}

    # ---- lfw-dev
    people = sorted(d for d in lfw.iterdir() if d.is_dir())
    if a.limit:
        people = people[: a.limit]
    reads: dict[str, tuple[FrameReading, np.ndarray]] = {}
    times = {"face mesh": [], "EAR + head pose": [], "locate": [], "embed": []}
    for d in people:
        for f in sorted(d.glob("*.jpg")):
            img = rgb(f)
            t0 = time.perf_counter()
            lf = p.locate(img)
            t1 = time.perf_counter()
            p.embed([lf.aligned])
            t2 = time.perf_counter()
            m = mesh.find(img, near=lf.box)
            t3 = time.perf_counter()
            if m is not None:
                ear(m.points), head_pose(pose_points(m.points))
            t4 = time.perf_counter()
            reads[f.stem] = (read(m), img)
            times["locate"].append(t1 - t0), times["embed"].append(t2 - t1)
            times["face mesh"].append(t3 - t2), times["EAR + head pose"].append(t4 - t3)
    out["ms_per_frame"] = {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}

    seq = {"sequences": 0, "passed": 0, "reasons": {}}
    answer_ms = []
    for d in people:
        mine = [(n, r) for n, (r, _) in reads.items() if n.rsplit("_", 1)[0] == d.name and r.found and r.pose is not None]
        if len(mine) < 3:
            continue
        mine.sort(key=lambda t: abs(t[1].pose.yaw))
        neutral = [n for n, _ in mine[:2]]
        for n, r in mine[2:]:
            if abs(r.pose.yaw) < 25:
                continue
            action = "turn_right" if r.pose.yaw > 0 else "turn_left"
            t = time.perf_counter()
            got = p.challenge_frames([action], [reads[x][1] for x in neutral], {action: reads[n][1]})
            answer_ms.append(1000 * (time.perf_counter() - t))
            seq["sequences"] += 1
            seq["passed"] += got.outcome.passed
            for why in got.outcome.reasons:
                kind = why.split(": ", 1)[1].split(" (")[0]
                seq["reasons"][kind] = seq["reasons"].get(kind, 0) + 1
    out["lfw_turn_sequences"] = seq
    blink = {"sequences": 0, "passed": 0, "reasons": []}
    for person, shut in BLINKS.items():
        mine = sorted(((n, r) for n, (r, _) in reads.items() if n.rsplit("_", 1)[0] == person and n not in shut and r.found), key=lambda t: abs(t[1].pose.yaw))
        if not mine or shut[0] not in reads:
            continue
        neutral = [n for n, _ in mine[:2]]
        got = p.challenge_frames(["blink"], [reads[x][1] for x in neutral], {"blink": reads[shut[0]][1]})
        blink["sequences"] += 1
        blink["passed"] += got.outcome.passed
        blink["reasons"] += list(got.outcome.reasons)
    out["lfw_blink_sequences"] = blink

    # ---- still photos: the same reading in every frame (no re-run of the models: it is the same frame)
    pairs = list(itertools.permutations(ACTIONS, 2))
    still = {"photos": 0, "challenges": 0, "passed": 0}
    for n, (r, _) in reads.items():
        if not r.found:
            continue
        still["photos"] += 1
        for pair in pairs:
            still["challenges"] += 1
            still["passed"] += judge(pair, [r, r], {x: r for x in pair}, [1.0] * 3, p.threshold, p.challenge_limits).passed
    out["still_photos"] = still
    out["ms_per_answer_3_frames"] = round(statistics.median(answer_ms), 1) if answer_ms else None

    print("Pose set, deliberate turns (labelled yaw), refused / photos:")
    for k, v in out["pose_turns"].items():
        print(f"  {k:18} {v['no_face'] + v['too_little'] + v['wrong_way']:3d} / {v['photos']:3d}  (no face {v['no_face']}, under 20 deg {v['too_little']}, wrong way {v['wrong_way']})")
    print(f"lfw-dev turn sequences: {seq['passed']} of {seq['sequences']} pass; refusals: {seq['reasons']}")
    print(f"lfw-dev blink sequences (eyes shut checked by eye): {blink['passed']} of {blink['sequences']} pass {blink['reasons']}")
    print(f"still photos: {still['passed']} of {still['challenges']} challenges passed ({still['photos']} photos x {len(pairs)} action pairs)")
    print("ms per frame (median, one thread): " + ", ".join(f"{k} {v}" for k, v in out["ms_per_frame"].items()))
    print(f"ms per answer (2 neutral + 1 action frame, whole check + identification): {out['ms_per_answer_3_frames']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    p.close()


if __name__ == "__main__":
    main()
