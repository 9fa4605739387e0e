"""One watched camera: its reader thread, and an analyser thread that takes the newest frame ``fps``
times a second, locates the faces, follows them and publishes one event per decided track.

The analyser runs the server's own pipeline: its detector, and its embedding through the server's
micro-batcher (one model queue for cameras and requests alike). Analyser threads run at a lower
priority (nice 10), and a frame is skipped while the server is near its request capacity, so
``/predict`` keeps being served when cameras and clients compete for the cores.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from facegate.config import CameraConfig
from facegate.events.model import Event, EventSink
from facegate.pipeline import RETRY, Identification, Pipeline
from facegate.vision.imageio import encode_jpeg
from facegate.vision.locate import LocatedFace
from .source import FrameReader, kind_of, mask_text, mask_url
from .tracks import Decided, Tracks

log = logging.getLogger(__name__)

#: Events kept per camera for its status (the Cameras page's "last seen"); the event store keeps them all.
RECENT = 10
#: Niceness of analyser threads: a request's work wins the core over a camera's.
ANALYSER_NICE = 10
CROP_QUALITY = 90


def identify_one(pipeline: Pipeline, image: np.ndarray, lf: LocatedFace) -> Identification:
    """Identify one located face as ``/v1/identify`` does (``Pipeline.identify_located``: quality floor,
    the model through the server's batcher, the gallery and ``rank``), then, with ``liveness = "passive"``
    or ``"both"``, the passive check of a face good enough to judge (a poor one stays "retry" and does
    not count in the track's vote). A camera cannot ask for an action, so ``"challenge"`` alone leaves its
    faces unchecked (the manager says so)."""
    ident = pipeline.identify_located([lf])[0]
    if not ident.retry and pipeline.settings.passive_liveness and lf.box is not None:
        check = pipeline.passive_check(image, [ident.located])[0]
        ident = replace(ident, liveness=check, decision=ident.decision if check.live else RETRY)
    return ident


class CameraWatcher:
    """Watches one camera until ``stop``. ``busy`` says when the server is near capacity (skip a frame)."""

    def __init__(
        self,
        cfg: CameraConfig,
        pipeline: Pipeline,
        sink: Callable[[], EventSink],
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.sink = sink
        self.busy = busy
        self.reader = FrameReader(cfg.url, fmt=cfg.format, reconnect_max_s=cfg.reconnect_max_s, name=cfg.name)
        self.tracks = Tracks(
            lambda img, lf: identify_one(pipeline, img, lf), pipeline.threshold, per_track=cfg.identify, lost_s=cfg.track_lost_s, fps=cfg.fps
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"facegate-camera-{cfg.name}", daemon=True)
        self.frames = 0
        self.skipped = 0
        self.events = 0
        self.last_frame_at: float | None = None
        self.analyser_error: str | None = None
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self._window: deque[float] = deque()
        self._online: bool | None = None  # last connection state passed to the sink (MQTT's retained state)

    def start(self) -> CameraWatcher:
        self.reader.start()
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.reader.stop(timeout)
        self._thread.join(timeout)

    @property
    def fps_analysed(self) -> float:
        w = list(self._window)  # a copy: the analyser thread trims it meanwhile
        return (len(w) - 1) / max(1e-6, w[-1] - w[0]) if len(w) > 1 else 0.0

    def status(self) -> dict:
        r = self.reader
        return {
            "connected": r.connected,
            "ended": r.ended,
            "fps_in": round(r.fps_in, 2),
            "fps_analysed": round(self.fps_analysed, 2) if r.connected else 0.0,
            "frames": self.frames,
            "frames_in": r.frames_in,
            "skipped": self.skipped,
            "reconnects": r.reconnects,
            "tracks": self.tracks.count,
            "tracks_now": len(self.tracks.live),
            "events": self.events,
            "last_error": self.analyser_error or r.last_error,
            "last_frame_at": self.last_frame_at,
            "recent": list(self.recent),
        }

    def snapshot(self) -> bytes | None:
        """The newest frame as JPEG, or None before the first."""
        f = self.reader.latest()
        return encode_jpeg(f.rgb(), 85) if f is not None else None

    # ------------------------------------------------------------------ the analyser thread
    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ANALYSER_NICE)  # this thread only (Linux)
        except (OSError, AttributeError):
            pass
        period = 1.0 / self.cfg.fps
        due = time.monotonic()
        seen = 0
        while not self._stop.is_set():
            self._report_state(self.reader.connected)
            due += period
            wait = due - time.monotonic()
            if wait < 0:
                due = time.monotonic()  # behind: take the newest frame now, never catch up with old ones
            elif self._stop.wait(wait):
                break
            frame = self.reader.latest()
            if frame is None or frame.seq == seen:
                self._publish(self.tracks.expire())
                if self.reader.ended and frame is not None and frame.seq == seen:
                    self._publish(self.tracks.finish())
                    break
                continue
            seen = frame.seq
            if self.busy():
                self.skipped += 1
                continue
            try:
                image = frame.rgb()
                located = self.pipeline.locator.faces(image)
                decided = self.tracks.step(image, located, frame.at)
                self.analyser_error = None
            except Exception as exc:  # a failed frame must not end the watch (a model busy for too long: 503 inside)
                self.analyser_error = mask_text(f"{type(exc).__name__}: {exc}", self.cfg.url)
                log.warning("camera %s: analysing a frame failed: %s", self.cfg.name, self.analyser_error)
                continue
            self.frames += 1
            self.last_frame_at = frame.at
            now = time.monotonic()
            self._window.append(now)
            while self._window and self._window[0] < now - 3.0:
                self._window.popleft()
            self._publish(decided)
        # Stopped (the server shutting down, or the camera's claim lost to another process): the tracks still
        # open are decided now, each on the faces it has, as if its person had left; not dropped unreported.
        try:
            self._publish(self.tracks.finish())
        except Exception:
            log.exception("camera %s: could not decide its open tracks at stop", self.cfg.name)
        log.info("camera %s: analyser stopped (%d frames, %d tracks, %d events)", self.cfg.name, self.frames, self.tracks.count, self.events)
        self._report_state(False)

    def _report_state(self, online: bool) -> None:
        """Tell the sink when the stream comes up or goes away (only changes), where the sink follows states."""
        if online == self._online:
            return
        self._online = online
        report = getattr(self.sink(), "camera_state", None)
        if report is not None:
            try:
                report(self.cfg.name, online)
            except Exception:
                log.exception("camera %s: the event sink refused its state", self.cfg.name)

    def _publish(self, decided: list[Decided]) -> None:
        for d in decided:
            v, t = d.verdict, d.track
            crop = encode_jpeg(v.best.ident.located.aligned, CROP_QUALITY) if v.best is not None else None
            ev = Event(
                camera=self.cfg.name,
                started_at=t.started_at,
                decided_at=time.time(),
                status=v.status,
                person_id=v.person_id,
                name=v.name,
                similarity=round(v.similarity, 4) if v.similarity is not None else None,
                track_id=t.id,
                frames=t.frames,
                identified=t.usable,
                crop_jpeg=crop,
                liveness=v.liveness,
            )
            self.events += 1
            self.recent.appendleft({**ev.to_json(), "decided_by": d.reason})
            log.info(
                "camera %s: track %d %s%s after %d frames (%d identified, %s, %.2f s)",
                self.cfg.name, t.id, ev.status, f" {ev.name}" if ev.name else "", t.frames, t.usable, d.reason, ev.latency_s,
            )
            try:
                self.sink().publish(ev)
            except Exception:
                log.exception("camera %s: the event sink refused event %s", self.cfg.name, ev.id)


def describe(cfg: CameraConfig) -> dict:
    """A camera's settings as the API shows them (credentials masked)."""
    return {"name": cfg.name, "url": mask_url(cfg.url), "kind": kind_of(cfg.url), "fps": cfg.fps}
