"""Native libraries' start-up chatter kept off the terminal unless debug logging is on.

MediaPipe's graphs print, from C++ and straight to file descriptor 2, when they first run: TensorFlow
Lite's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", absl's "WARNING: All log messages
before absl::InitializeLog() ..." and a "W0000 ... inference_feedback_manager.cc" line per graph. No
environment variable reaches those loggers (GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL: tried, printed all
the same), so the models are built and run once inside ``native_quiet()``, which points descriptor 2
at /dev/null for that time. Debug logging (``--log-level debug``: the ``facegate`` logger enabled for
DEBUG) lets everything through.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Python loggers of third-party libraries that speak at INFO while loading (faiss's loader tries
#: AVX512 and AVX2 builds and says so in six lines).
NOISY_LOGGERS = ("faiss", "faiss.loader", "absl")

_lock = threading.Lock()  # descriptor 2 is the process's: one redirection at a time, nested ones counted
_depth = 0
_saved: int | None = None


def debug_logging() -> bool:
    """True when FaceGate logs at DEBUG: third-party messages are then wanted too."""
    return logging.getLogger("facegate").isEnabledFor(logging.DEBUG)


@contextmanager
def native_quiet(enabled: bool | None = None) -> Iterator[None]:
    """Silence what native code writes to descriptor 2 inside the block (unless debug logging is on).

    For model construction and first runs at start-up only: anything the process writes to stderr
    meanwhile, from any thread, is lost too.
    """
    global _depth, _saved
    if enabled is None:
        enabled = not debug_logging()
    if not enabled:
        yield
        return
    with _lock:
        if _depth == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no descriptor 2 (a daemon): nothing to silence
                saved = None
            if saved is not None:
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, 2)
                finally:
                    os.close(null)
            _saved = saved
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                os.dup2(_saved, 2)
                os.close(_saved)
                _saved = None


def quiet_python_loggers(debug: bool) -> None:
    """Third-party Python loggers that announce their loading at INFO are held to WARNING unless ``debug``."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
