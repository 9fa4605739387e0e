"""Tracks, not frames: follow each face across analysed frames (norfair) and decide once per track.

A track is identified a few times, its best-quality faces first, and decided by a vote in which each
identification counts by its face's quality and its similarity. Knows nothing of streams or HTTP:
``Tracks.step`` takes one frame's located faces and a function that identifies one of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from norfair import Detection, Tracker

from facegate.pipeline import Identification
from facegate.vision.locate import LocatedFace

#: Analysed frames between two identifications of one track: each takes the best face seen since the last.
IDENTIFY_GAP = 2
#: A track with some usable identifications is decided after this many tries per identification wanted
#: (poor faces are answered "retry" and do not count).
MAX_TRIES_PER_DECISION = 3

IdentifyFn = Callable[[np.ndarray, LocatedFace], Identification]


def face_weight(lf: LocatedFace) -> float:
    """How much one face's identification counts, 0..1: its size (full at 112 px, the model's input),
    the detector's confidence and how frontal it is (none beyond 60 degrees of yaw)."""
    q = lf.quality
    if q is None:
        return 0.1
    size = min(1.0, q.face_px / 112.0)
    det = q.det_score if q.det_score is not None else 0.5
    yaw = 1.0 - min(1.0, abs(q.yaw) / 60.0) if q.yaw is not None else 0.7
    return max(1e-3, size * det * (0.25 + 0.75 * yaw))


@dataclass
class Look:
    """One identification of a track's face, with the weight of that face."""

    ident: Identification
    weight: float


@dataclass(frozen=True)
class Verdict:
    """A track's decision: the event's status, person and similarity, and its best shot."""

    status: str
    person_id: int | None
    name: str | None
    similarity: float | None
    best: Look | None
    liveness: float | None


def vote(looks: list[Look], threshold: float) -> Verdict:
    """Decide a track from its usable identifications.

    Spoof wins when the faces judged spoof outweigh those judged live (liveness on). Otherwise each
    look votes for its person with weight x similarity, and for "unknown" with weight x threshold (a
    look that named nobody counts as a face at the threshold); the heaviest pile wins. The reported
    similarity is the winner's best; the best shot is the heaviest look of the winning pile.
    """
    usable = [lk for lk in looks if lk.ident.status != "retry"]
    if not usable:
        return Verdict("unknown", None, None, None, max(looks, key=lambda lk: lk.weight, default=None), None)
    checked = [lk for lk in usable if lk.ident.liveness is not None]
    spoof_w = sum(lk.weight for lk in checked if not lk.ident.liveness.live)
    live_w = sum(lk.weight for lk in checked if lk.ident.liveness.live)
    if checked and spoof_w > live_w:
        spoofs = [lk for lk in checked if not lk.ident.liveness.live]
        best = max(spoofs, key=lambda lk: lk.weight)
        return Verdict("spoof", None, None, None, best, float(best.ident.liveness.score))
    piles: dict[int | None, float] = {}
    for lk in usable:
        d = lk.ident.decision
        if lk.ident.spoof or not d.known:
            piles[None] = piles.get(None, 0.0) + lk.weight * threshold
        else:
            piles[d.person_id] = piles.get(d.person_id, 0.0) + lk.weight * max(0.0, d.similarity)
    winner = max(piles, key=lambda k: (piles[k], k is not None))
    pile = [lk for lk in usable if (lk.ident.decision.person_id if not lk.ident.spoof else None) == winner]
    best = max(pile, key=lambda lk: lk.weight)
    live = best.ident.liveness.score if best.ident.liveness is not None else None
    if winner is None:
        sims = [lk.ident.decision.similarity for lk in usable if lk.ident.decision.similarity]
        return Verdict("unknown", None, None, float(max(sims)) if sims else None, best, live)
    top = max(pile, key=lambda lk: lk.ident.decision.similarity)
    return Verdict("recognized", winner, top.ident.decision.name, float(top.ident.decision.similarity), best, live)


@dataclass
class Track:
    #: Numbered from 1 per camera watch (the tracker's own ids may come back after a stream gap).
    id: int
    started_at: float
    last_seen: float
    frames: int = 0
    looks: list[Look] = field(default_factory=list)
    tries: int = 0
    since_look: int = 0
    #: The best face seen since the last identification: (weight, face, frame).
    pending: tuple[float, LocatedFace, np.ndarray] | None = None
    decided: bool = False

    @property
    def usable(self) -> int:
        return sum(lk.ident.status != "retry" for lk in self.looks)


@dataclass
class Decided:
    """A track decided now, and why (``"identified"``: it had its identifications; ``"ended"``: it left first)."""

    track: Track
    verdict: Verdict
    reason: str
    decided_at: float


class Tracks:
    """The tracks of one camera. ``step`` once per analysed frame; ``finish`` when the stream ends."""

    def __init__(self, identify: IdentifyFn, threshold: float, *, per_track: int = 3, lost_s: float = 1.0, fps: float = 5.0) -> None:
        self.identify = identify
        self.threshold = threshold
        self.per_track = per_track
        self.lost_s = lost_s
        # IoU distance (1 - IoU) between a face's box and a track's prediction; a face that moved more than
        # that between analysed frames starts a new track. Kept for ``lost_s`` worth of frames unseen.
        self.tracker = Tracker(
            distance_function="iou",
            distance_threshold=0.8,
            hit_counter_max=max(2, math.ceil(lost_s * fps)),
            initialization_delay=0,
        )
        self.live: dict[int, Track] = {}
        self.count = 0
        self.frame = 0

    def step(self, image: np.ndarray, located: list[LocatedFace], now: float | None = None) -> list[Decided]:
        now = time.time() if now is None else now
        self.frame += 1
        dets = [
            Detection(points=np.array([[f.box[0], f.box[1]], [f.box[2], f.box[3]]], dtype=float), data=(self.frame, i))
            for i, f in enumerate(located)
            if f.box is not None
        ]
        out: list[Decided] = []
        for obj in self.tracker.update(detections=dets):
            det = obj.last_detection
            if obj.id is None or det is None or det.data[0] != self.frame:
                continue  # not seen in this frame
            lf = located[det.data[1]]
            t = self.live.get(obj.id)
            if t is None:  # a new face, or one the tracker kept while no frame came (a stream gap): a new track
                self.count += 1
                t = self.live[obj.id] = Track(self.count, now, now)
            t.last_seen, t.frames = now, t.frames + 1
            if t.decided:
                continue
            w = face_weight(lf)
            if t.pending is None or w > t.pending[0]:
                t.pending = (w, lf, image)
            t.since_look += 1
            if not t.looks or t.since_look >= IDENTIFY_GAP:
                self._look(t)
            # Decided at its identifications; or, after many poor faces, on the usable ones it has. A face
            # never good enough is looked at again (it may come closer) and gives no event if it never is.
            if t.usable >= self.per_track or (t.usable and t.tries >= self.per_track * MAX_TRIES_PER_DECISION):
                out.append(self._decide(t, "identified", now))
        return out + self.expire(now)

    def expire(self, now: float | None = None) -> list[Decided]:
        """End the tracks not seen for ``lost_s`` (also called when no new frame came)."""
        now = time.time() if now is None else now
        out = []
        for tid, t in list(self.live.items()):
            if now - t.last_seen > self.lost_s:
                del self.live[tid]
                if not t.decided and (d := self._end(t, now)):
                    out.append(d)
        return out

    def finish(self, now: float | None = None) -> list[Decided]:
        """End every track (the stream ended): decide those not yet decided."""
        now = time.time() if now is None else now
        out = [d for t in self.live.values() if not t.decided and (d := self._end(t, now))]
        self.live.clear()
        return out

    def _look(self, t: Track) -> None:
        w, lf, image = t.pending
        t.pending, t.since_look = None, 0
        t.tries += 1
        t.looks.append(Look(self.identify(image, lf), w))

    def _end(self, t: Track, now: float) -> Decided | None:
        if t.pending is not None and t.usable < self.per_track:
            self._look(t)  # the best face since the last look
        if not t.usable:
            return None  # every face too poor to judge: no event (a detector's flicker, a face in the dark)
        return self._decide(t, "ended", now)

    def _decide(self, t: Track, reason: str, now: float) -> Decided:
        t.decided = True
        return Decided(t, vote(t.looks, self.threshold), reason, now)
