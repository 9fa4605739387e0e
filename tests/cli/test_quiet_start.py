"""`facegate --version`, and a quiet start: the native libraries' start-up lines (TensorFlow Lite,
absl, MediaPipe's feedback manager, faiss's loader) reach the terminal only with --log-level debug."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from conftest import b64, facegate

import facegate as facegate_pkg

#: What the libraries print when nothing holds them back (each seen on `facegate serve` before).
NOISE = ("XNNPACK", "inference_feedback_manager", "absl::InitializeLog", "faiss.loader", "Loading faiss", "W0000 ")


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def test_version_prints_the_package_version():
    proc = facegate("--version")
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"facegate \d+\.\d+\.\d+\n", proc.stdout), proc.stdout
    assert proc.stdout.split()[1] == facegate_pkg.__version__ == metadata.version("facegate")


def test_serve_prints_no_third_party_start_up_lines(start_server, astronaut):
    srv = start_server()
    with srv.client() as c:
        r = c.post("/v1/identify", json={"image": b64(astronaut)})  # a detection, as a first request makes
        assert r.status_code == 200, r.text
    srv.stop()
    log = Path(srv.log.name).read_text(errors="replace")
    assert "Uvicorn running" in log and "FaceGate" in log  # the log was captured
    assert _noise(log) == []


def test_serve_with_debug_logging_lets_them_through(start_server, astronaut):
    """The other side: the lines exist and the check above would see them (--log-level debug keeps them)."""
    srv = start_server(None, "--log-level", "debug")
    with srv.client() as c:
        assert c.post("/v1/identify", json={"image": b64(astronaut)}).status_code == 200
    srv.stop()
    seen = _noise(Path(srv.log.name).read_text(errors="replace"))
    assert any("XNNPACK" in line for line in seen) and any("faiss" in line for line in seen), seen


def test_identify_on_a_photo_prints_only_its_answer(tmp_path, astronaut):
    import base64

    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(base64.b64decode(b64(astronaut)))
    proc = facegate("identify", "--data", tmp_path / "data", photo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{photo}: ")
    assert _noise(proc.stderr) == [] and proc.stderr.strip() == "", proc.stderr
