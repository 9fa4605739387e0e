"""A camera's frames: one reader thread per stream that always holds only the newest decoded frame.

Decoding is PyAV (FFmpeg): RTSP, http(s) MJPEG, V4L2 devices and video files alike. A live stream is
read as fast as it comes and older frames are dropped, so the analyser never falls behind live; a
dropped stream is reopened with exponential backoff (0.5 s doubling up to ``reconnect_max_s``). A video
file is played once at its own frame rate (tests, replays) and then the source has *ended*.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import av

log = logging.getLogger(__name__)

#: Seconds to open a stream, and to wait for its next packet, before the attempt counts as failed.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
FIRST_BACKOFF_S = 0.5

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")


def mask_url(url: str) -> str:
    """The URL with any user and password replaced by ``***`` (answers and logs never show credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _CREDENTIALS.sub(r"\g<scheme>***@", url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def mask_text(text: str, url: str) -> str:
    """An error message with the camera's URL, or any URL's credentials, masked."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text.replace(url, mask_url(url)))


def kind_of(url: str) -> str:
    """"rtsp", "http", "device" or "file": what the URL names (a file plays once at its own rate)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("rtsp", "rtsps", "rtmp", "srt", "udp", "tcp"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "http"
    if url.startswith("/dev/video"):
        return "device"
    return "file"


@dataclass
class Frame:
    """One decoded frame (converted to RGB only when someone uses it), its sequence number and arrival time."""

    seq: int
    frame: av.VideoFrame
    #: Wall-clock time (Unix seconds) the frame was decoded.
    at: float

    def rgb(self):
        return self.frame.to_ndarray(format="rgb24")


class FrameReader:
    """Reads one stream in a daemon thread; ``latest()`` is the newest frame, older ones are dropped."""

    def __init__(self, url: str, *, fmt: str | None = None, reconnect_max_s: float = 30.0, name: str = "camera") -> None:
        self.url = url
        self.kind = kind_of(url)
        self.fmt = fmt or ("v4l2" if self.kind == "device" else None)
        self.reconnect_max_s = reconnect_max_s
        self.name = name
        self._lock = threading.Lock()
        self._newest: Frame | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"facegate-camera-read-{name}", daemon=True)
        self.connected = False
        #: The file was played to its end (file sources only): nothing more will come.
        self.ended = False
        self.last_error: str | None = None
        self.frames_in = 0
        self.fps_in = 0.0
        self.reconnects = 0
        self._window: list[float] = []

    # ------------------------------------------------------------------ control
    def start(self) -> FrameReader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def latest(self) -> Frame | None:
        with self._lock:
            return self._newest

    # ------------------------------------------------------------------ the reader thread
    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stop.is_set():
            got_frames = False
            try:
                for _ in self._play():
                    got_frames = True
                    backoff = FIRST_BACKOFF_S  # a working connection resets the backoff
                if self.kind == "file" and got_frames:
                    self.ended = True
                    self.connected = False
                    log.info("camera %s: %s played to its end", self.name, mask_url(self.url))
                    return
                if not self._stop.is_set():
                    raise ConnectionError("the stream ended")
            except Exception as exc:  # any decode or network failure: record it and try again
                self.connected = False
                self.fps_in = 0.0
                self.last_error = mask_text(f"{type(exc).__name__}: {exc}", self.url)
                log.warning("camera %s: %s; reconnecting in %.1f s", self.name, self.last_error, backoff)
            if self._stop.wait(backoff):
                return
            self.reconnects += 1
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _play(self):
        options = {"rtsp_transport": "tcp"} if self.kind == "rtsp" else {}
        if self.kind == "file" and not Path(self.url).is_file():
            raise FileNotFoundError(f"no such video file: {self.url}")
        with av.open(self.url, format=self.fmt, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S)) as container:
            # FFmpeg's default (slice) threading: its frame threads ("AUTO") hung a reader at the end of a file in a
            # server with two cameras, until a signal came (PyAV's callbacks and the interpreter lock, most likely).
            stream = container.streams.video[0]
            self.connected = True
            self.last_error = None
            log.info("camera %s: connected to %s", self.name, mask_url(self.url))
            start_wall = time.monotonic()
            start_pts: float | None = None
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return
                if self.kind == "file" and frame.time is not None:  # a file plays at its own rate, not as fast as it decodes
                    if start_pts is None:
                        start_pts = frame.time
                    wait = start_wall + (frame.time - start_pts) - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                self._arrived(frame)
                yield frame

    def _arrived(self, frame: av.VideoFrame) -> None:
        now = time.monotonic()
        self._window.append(now)
        while self._window and self._window[0] < now - 2.0:
            self._window.pop(0)
        self.fps_in = (len(self._window) - 1) / max(1e-6, self._window[-1] - self._window[0]) if len(self._window) > 1 else 0.0
        self.frames_in += 1
        with self._lock:
            self._newest = Frame(self.frames_in, frame, time.time())
