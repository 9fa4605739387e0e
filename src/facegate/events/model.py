"""The event record and the one call a producer makes; the contract between ``cameras`` and ``events``."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

#: An event's ``status``: named, seen but not named, or judged a print or a screen (liveness on).
STATUSES = ("recognized", "unknown", "spoof")
#: An event's ``decision`` where the camera has access rules: what a door relay listens to.
DECISIONS = ("granted", "denied")


@dataclass
class Event:
    """One decided track: one person walking past is one event, however many frames showed them."""

    camera: str
    #: Wall-clock seconds (Unix time) of the track's first frame and of its decision.
    started_at: float
    decided_at: float
    status: str
    person_id: int | None
    name: str | None
    #: Cosine similarity of the winning identity (None when nobody came close).
    similarity: float | None
    #: The tracker's id for this face within its camera's run.
    track_id: int
    #: Frames the track was seen in, and how many of them were identified.
    frames: int
    identified: int
    #: The best shot's aligned crop (112x112 JPEG); stored with the row, sent only on request.
    crop_jpeg: bytes | None = None
    #: The passive liveness score of the best shot, where liveness is on.
    liveness: float | None = None
    #: "granted" or "denied" where the camera has access rules; None otherwise.
    decision: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.decision is not None and self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS} or None, not {self.decision!r}")

    def to_json(self) -> dict[str, Any]:
        """The event's JSON, as the API, webhooks and MQTT carry it (the crop goes by URL, never inline)."""
        d = asdict(self)
        d.pop("crop_jpeg")
        d["has_crop"] = self.crop_jpeg is not None
        return d

    @property
    def latency_s(self) -> float:
        """From the face's first frame to its decision."""
        return max(0.0, self.decided_at - self.started_at)


class EventSink(Protocol):
    """Where producers hand events. ``publish`` must return at once: storing and delivering happen elsewhere."""

    def publish(self, event: Event) -> None: ...


def now() -> float:
    return time.time()
