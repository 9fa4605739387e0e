"""Who watches a camera: exactly one server (or worker process) at a time.

With the PostgreSQL gallery the claim is a session-level advisory lock per camera, held on a
dedicated connection: when the holding server dies its connection closes, PostgreSQL frees the lock
and another server takes the camera at its next try (``camera_claim_s``). With the embedded gallery
(one machine) it is an exclusive ``flock`` on a file per camera in the data folder, which the kernel
frees when the holding process dies.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: First key of the two-int advisory lock: FaceGate cameras (the second is the name's hash).
_LOCK_SPACE = "facegate.camera"
#: The dead peer of a claim connection is noticed by TCP keepalive within about idle + interval x count seconds.
_KEEPALIVE = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"


class FileClaim:
    """An exclusive, non-blocking ``flock`` on ``<data_dir>/cameras/<name>.lock``."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = Path(data_dir) / "cameras" / f"{name}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class PgClaim:
    """``pg_try_advisory_lock`` on a connection of its own (session-level: it lasts while the connection does)."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._con = None

    def acquire(self) -> bool:
        import psycopg

        if self._con is not None:
            return True
        try:
            con = psycopg.connect(self.url, autocommit=True, connect_timeout=5, options=_KEEPALIVE, application_name=f"facegate camera {self.name}")
        except psycopg.Error as exc:
            log.warning("camera %s: cannot reach PostgreSQL to claim it: %s", self.name, type(exc).__name__)
            return False
        try:
            got = con.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", (_LOCK_SPACE, self.name)).fetchone()[0]
        except psycopg.Error:
            got = False
        if not got:
            con.close()
            return False
        self._con = con
        return True

    def held(self) -> bool:
        """Whether the lock is still ours: its connection answers (a lost connection has lost the lock)."""
        import psycopg

        if self._con is None:
            return False
        try:
            self._con.execute("SELECT 1")
            return True
        except psycopg.Error:
            log.warning("camera %s: the connection holding its claim was lost", self.name)
            self.release()
            return False

    def release(self) -> None:
        if self._con is not None:
            try:
                self._con.close()  # ends the session: the lock goes with it
            except Exception:
                pass
            self._con = None


def claim_for(settings, name: str):
    """The claim that fits the gallery: PostgreSQL advisory lock, else a lock file in the data folder."""
    return PgClaim(settings.gallery, name) if settings.gallery else FileClaim(settings.data_dir, name)
