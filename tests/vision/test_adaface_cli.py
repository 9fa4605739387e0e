"""AdaFace end to end: a checkpoint in the official layout imported by `facegate models import`,
a gallery re-embedded with it, and the server answering with it.

The weights are random (no AdaFace weights may ship): the network, its import and the serving
path are what is tested; the same crop still maps to the same vector, so identity holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="AdaFace import needs the [import] extra (PyTorch)")

from conftest import facegate, said  # noqa: E402
from test_model_import import random_backbone, save_lightning_ckpt  # noqa: E402

from conftest import b64  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "adaface_ir18_random.ckpt"
    return save_lightning_ckpt(path, random_backbone("ir18", seed=7).state_dict(), arch="ir_18")


def test_import_reembed_and_serve(checkpoint, tmp_path, start_server, astronaut_payloads, other_face):
    data = tmp_path / "gallery"
    proc = facegate("models", "import", checkpoint, "--arch", "ir18", "--data", data, timeout=600)
    assert proc.returncode == 0, said(proc)
    assert "imported adaface-ir18" in said(proc) and "max abs difference" in said(proc)
    card = json.loads((data / "models" / "adaface-ir18.json").read_text())
    assert card["arch"] == "ir18" and card["embedding_size"] == 512
    assert card["preprocessing"] == {"channel_order": "BGR", "mean": 127.5, "std": 127.5}

    listed = facegate("models", "list", "--data", data)
    assert "adaface-ir18" in said(listed) and "sface" in said(listed)
    again = facegate("models", "import", checkpoint, "--arch", "ir18", "--data", data, timeout=600)
    assert again.returncode != 0 and "already exists" in said(again)
    wrong = facegate("models", "import", checkpoint, "--arch", "ir50", "--name", "x", "--data", data, timeout=600)
    assert wrong.returncode != 0 and "ir18" in said(wrong)

    # Enrol with the default model, then move the gallery to AdaFace.
    s = start_server(data)
    register, predict = astronaut_payloads
    with s.client() as http:
        assert http.post("/register", json=register).status_code == 200
        other = np.ascontiguousarray(other_face)
        assert http.post("/v1/people", json={"name": "Other Person", "images": [b64(other)]}).status_code == 201
    s.stop()
    proc = facegate("gallery", "reembed", "--model", "adaface-ir18", "--tta", "normsum", "--data", data, timeout=600)
    assert proc.returncode == 0, said(proc)
    assert "re-embedded 4 faces" in said(proc)

    s2 = start_server(data, "--model", "adaface-ir18", "--tta", "normsum", "--threshold", "0.9")
    with s2.client() as http:
        h = http.get("/healthz").json()
        assert h["model"].startswith("adaface-ir18-") and h["model"].endswith("/tta-normsum")
        assert h["tta"] == "normsum" and h["gallery"]["faces"] == 4
        # The enrolled crop itself comes back through the same alignment: near-identical vector.
        r = http.post("/predict", json={"file_name": "x.jpg", "image": register["first_img"]})
        assert r.status_code == 200, r.text
        assert r.json()["user_name"] == "Eileen Collins" and r.json()["similarity"] > 0.9


@pytest.mark.parametrize("arch,layout", [("ir18", "ir_18"), ("ir50", "ir_50"), ("ir101", "ir_101")])
def test_cli_imports_each_backbone(arch, layout, tmp_path):
    """Each backbone, random weights in the official checkpoint layout, through `facegate models import`."""
    import onnxruntime as ort
    import torch

    backbone = random_backbone(arch, seed=3).eval()
    ckpt = save_lightning_ckpt(tmp_path / f"adaface_{arch}.ckpt", backbone.state_dict(), arch=layout)
    data = tmp_path / "data"
    proc = facegate("models", "import", ckpt, "--arch", arch, "--data", data, timeout=600)
    assert proc.returncode == 0, said(proc)
    card = json.loads((data / "models" / f"adaface-{arch}.json").read_text())
    assert card["arch"] == arch and card["max_abs_diff"] < 1e-3
    x = np.random.default_rng(0).standard_normal((3, 3, 112, 112)).astype(np.float32)
    sess = ort.InferenceSession(str(data / "models" / f"adaface-{arch}.onnx"), providers=["CPUExecutionProvider"])
    emb, norm = sess.run(["embedding", "norm"], {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        t_emb, t_norm = backbone(torch.from_numpy(x))
    assert np.abs(emb - t_emb.numpy()).max() < 1e-3 and np.abs(norm - t_norm.numpy()).max() < 1e-3 * float(norm.max())
