"""The server's cameras: for each, claim it (one watcher among all servers), watch it, report its state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from facegate.config import Settings
from facegate.errors import CameraNotFoundError, NoFrameError
from facegate.events.model import Event, EventSink
from facegate.pipeline import Pipeline
from .claim import claim_for
from .watch import CameraWatcher, describe

log = logging.getLogger(__name__)


class LogSink:
    """Where events go when no event store is set up: the log only."""

    def publish(self, event: Event) -> None:
        log.info("event %s", event.to_json())


class CameraManager:
    """Starts one supervisor thread per configured camera; ``status`` and ``snapshot`` answer the API."""

    def __init__(self, settings: Settings, pipeline: Pipeline, sink: Callable[[], EventSink], busy: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.sink = sink
        self.busy = busy
        self.cameras = {c.name: c for c in settings.cameras}
        self.watchers: dict[str, CameraWatcher] = {}
        self._claims = {name: claim_for(settings, name) for name in self.cameras}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._supervise, args=(name,), name=f"facegate-camera-claim-{name}", daemon=True) for name in self.cameras
        ]

    def start(self) -> CameraManager:
        for t in self._threads:
            t.start()
        if self.cameras:
            log.info("cameras: %s", ", ".join(f"{c['name']} ({c['url']})" for c in map(describe, self.cameras.values())))
            if self.settings.liveness == "challenge":
                log.warning(
                    'cameras: liveness = "challenge" cannot apply to a camera (it cannot ask for an action); their faces '
                    'are named without a liveness check. Set liveness = "both" to check them with the passive model.'
                )
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for w in list(self.watchers.values()):
            w.stop()
        for c in self._claims.values():
            c.release()

    def _supervise(self, name: str) -> None:
        """Take the camera when nobody holds it; give it up when the claim is lost (its connection died)."""
        claim = self._claims[name]
        while not self._stop.is_set():
            w = self.watchers.get(name)
            if w is None:
                if claim.acquire():
                    log.info("camera %s: this server watches it", name)
                    self.watchers[name] = CameraWatcher(self.cameras[name], self.pipeline, self.sink, self.busy).start()
            elif not claim.held():
                log.warning("camera %s: claim lost; stopping to watch it", name)
                self.watchers.pop(name).stop()
            if self._stop.wait(self.settings.camera_claim_s):
                return

    # ------------------------------------------------------------------ answers
    def _get(self, name: str):
        if name not in self.cameras:
            raise CameraNotFoundError(f"no camera named {name!r}")
        return self.cameras[name]

    def state(self, name: str) -> dict:
        cfg = self._get(name)
        w = self.watchers.get(name)
        if w is None:
            return {
                **describe(cfg), "watching": False, "state": "standby", "connected": False, "fps_in": 0.0, "fps_analysed": 0.0,
                "frames": 0, "tracks": 0, "events": 0, "last_error": None, "last_frame_at": None, "recent": [],
            }
        st = w.status()
        word = "ended" if st["ended"] else "connected" if st["connected"] else "disconnected" if st["last_error"] else "connecting"
        return {**describe(cfg), "watching": True, "state": word, **st}

    def status(self) -> list[dict]:
        return [self.state(n) for n in self.cameras]

    def snapshot(self, name: str) -> bytes:
        self._get(name)
        w = self.watchers.get(name)
        if w is None:
            raise NoFrameError(f"camera {name!r} is watched by another server: ask that one for its snapshot")
        jpeg = w.snapshot()
        if jpeg is None:
            raise NoFrameError(f"camera {name!r} has sent no frame yet")
        return jpeg
