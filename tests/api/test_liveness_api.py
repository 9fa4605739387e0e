"""POST /v1/liveness and liveness = "passive" over HTTP, against real `facegate serve` processes on loopback,
with the MiniFASNet checkpoints imported by the real CLI (`facegate models import-liveness`).

Skipped when ../shared/models/minifasnet is absent; no mocks.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED, ServerProcess, facegate, said

MINIFAS = SHARED / "models" / "minifasnet"
CHECKPOINTS = (("2.7_80x80_MiniFASNetV2.pth", "minifasnet-v2"), ("4_0_0_80x80_MiniFASNetV1SE.pth", "minifasnet-v1se"))
SAMPLES = {"image_F1.jpg": "spoof", "image_F2.jpg": "spoof", "image_T1.jpg": "live"}  # print, tablet replay, live person

pytestmark = pytest.mark.skipif(
    not all((MINIFAS / f).is_file() for f, _ in CHECKPOINTS),
    reason=f"MiniFASNet checkpoints not found in {MINIFAS} (../shared beside the repository)",
)


def photo(name: str) -> bytes:
    return (MINIFAS / "samples" / name).read_bytes()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder filled by the CLI, copied into each server's data directory."""
    data = tmp_path_factory.mktemp("lvcli") / "data"
    for f, arch in CHECKPOINTS:
        r = facegate("models", "import-liveness", MINIFAS / f, "--arch", arch, "--data", data)
        assert r.returncode == 0, said(r)
        assert "softmax max abs difference" in said(r)
    again = facegate("models", "import-liveness", MINIFAS / CHECKPOINTS[0][0], "--arch", "minifasnet-v2", "--data", data)
    assert again.returncode == 1 and "already exists" in said(again)
    listed = facegate("models", "list", "--data", data)
    assert "minifasnet-v2-2.7x" in said(listed) and "liveness" in said(listed)
    return data / "models"


def _data_with(models: Path, where: Path) -> Path:
    (where / "models").mkdir(parents=True)
    for f in models.iterdir():
        (where / "models" / f.name).write_bytes(f.read_bytes())
    return where


@pytest.fixture(scope="module")
def plain(tmp_path_factory, models):
    """liveness "off" (the default), models imported: /v1/liveness works, identify carries no check."""
    s = ServerProcess(_data_with(models, tmp_path_factory.mktemp("lvoff") / "data")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def passive(tmp_path_factory, models):
    """liveness "passive" through the environment, as a deployment sets it."""
    s = ServerProcess(_data_with(models, tmp_path_factory.mktemp("lvon") / "data"), env={"FACEGATE_LIVENESS": "passive"}).start()
    yield s
    s.stop()


def test_liveness_on_the_three_samples(plain):
    with plain.client() as c:
        for name, want in SAMPLES.items():
            r = c.post("/v1/liveness", files={"image": (name, photo(name), "image/jpeg")})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == want and body["live"] is (want == "live"), (name, body)
            assert [m["name"] for m in body["models"]] == ["minifasnet-v1se-4x", "minifasnet-v2-2.7x"]
            assert body["score"] == pytest.approx(sum(m["score"] for m in body["models"]) / 2, abs=2e-6)
            assert (body["score"] > 0.9) if want == "live" else (body["score"] < 0.3), (name, body)
            box = body["box"]
            assert 0 <= box["x1"] < box["x2"] <= 480 and 0 <= box["y1"] < box["y2"] <= 640  # upright: 480 wide
        # The same answer from base64 JSON.
        r = c.post("/v1/liveness", json={"image": base64.b64encode(photo("image_F2.jpg")).decode()})
        assert r.status_code == 200 and r.json()["status"] == "spoof"
        # No face: 422, as the other image routes say it.
        import io

        import numpy as np
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(buf, format="PNG")
        r = c.post("/v1/liveness", files={"image": ("grey.png", buf.getvalue(), "image/png")})
        assert r.status_code == 422 and r.json()["code"] == "no_face"
        # With liveness "off", identify answers carry no check.
        r = c.post("/v1/identify", files={"image": ("F1.jpg", photo("image_F1.jpg"), "image/jpeg")})
        assert r.status_code == 200 and r.json()["faces"][0]["liveness"] is None


def test_503_without_a_liveness_model(start_server):
    s = start_server()
    with s.client() as c:
        r = c.post("/v1/liveness", files={"image": ("T1.jpg", photo("image_T1.jpg"), "image/jpeg")})
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "liveness_unavailable"
    assert "no liveness model is imported" in body["detail"] and "facegate models import-liveness" in body["detail"]


def test_passive_without_a_model_does_not_start(tmp_path):
    with pytest.raises(RuntimeError, match="no liveness model is imported"):
        ServerProcess(tmp_path / "data", "--liveness", "passive").start(timeout=60)


def test_a_client_key_may_check_liveness(tmp_path, models):
    data = _data_with(models, tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    made = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "keys", "create", "--role", "client", "--data", str(data)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    s = ServerProcess(data).start()
    try:
        with s.client() as c:
            image = {"image": ("T1.jpg", photo("image_T1.jpg"), "image/jpeg")}
            assert c.post("/v1/liveness", files=image).status_code == 401
            r = c.post("/v1/liveness", files=image, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["status"] == "live", r.text
    finally:
        s.stop()


def test_passive_identify_never_names_a_spoof(plain, passive):
    """The tablet replay's face enrolled as a person: the plain server names it; the passive one answers "spoof",
    no name, on /v1/identify and /predict (the print too); the live person is checked and left to recognition."""
    f2 = base64.b64encode(photo("image_F2.jpg")).decode()
    for s in (plain, passive):
        with s.client() as c:
            r = c.post("/v1/people", json={"name": "Tablet Person", "images": [f2]})
            assert r.status_code == 201, r.text
    with plain.client() as c:
        (face,) = c.post("/v1/identify", json={"image": f2}).json()["faces"]
        assert face["status"] == "recognized" and face["name"] == "Tablet Person", face
    with passive.client() as c:
        for name in ("image_F2.jpg", "image_F1.jpg"):
            b64 = base64.b64encode(photo(name)).decode()
            (face,) = c.post("/v1/identify", json={"image": b64}).json()["faces"]
            assert face["status"] == "spoof", (name, face)
            assert face["name"] is None and face["person_id"] is None and face["similarity"] == 0
            assert face["liveness"]["live"] is False and face["liveness"]["score"] < 0.3
            r = c.post("/predict", json={"image": b64})
            assert r.status_code == 200, r.text
            p = r.json()
            assert p["status"] == "spoof" and p["user_name"] == "unknown" and p["person_id"] is None, p
            assert p["liveness"]["live"] is False
        (live,) = c.post("/v1/identify", files={"image": ("T1.jpg", photo("image_T1.jpg"), "image/jpeg")}).json()["faces"]
        assert live["liveness"]["live"] is True and live["liveness"]["score"] > 0.9
        # Left to recognition: the live sample is most likely the tablet's person (their faces' cosine 0.60).
        assert live["status"] in ("recognized", "unknown"), live
