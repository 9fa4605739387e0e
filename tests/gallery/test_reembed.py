"""Switching the embedding model of a gallery: refused when mixed, re-computed from kept crops."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from conftest import b64
from conftest import facegate, said


@pytest.fixture
def enrolled(start_server, tmp_path, astronaut_payloads, other_face):
    data = tmp_path / "gallery"
    s = start_server(data)
    with s.client() as http:
        register, _ = astronaut_payloads
        assert http.post("/register", json=register).status_code == 200
        other = np.ascontiguousarray(other_face)
        assert http.post("/v1/people", json={"name": "Other Person", "images": [b64(other)]}).status_code == 201
    s.stop()
    return data


def stored_vectors(data) -> dict[int, np.ndarray]:
    con = sqlite3.connect(data / "gallery.sqlite3")
    try:
        return {fid: np.frombuffer(blob, np.float32) for fid, blob in con.execute("SELECT id, embedding FROM faces")}
    finally:
        con.close()


def test_reembed_switches_the_gallery_to_another_model(enrolled, start_server, astronaut_payloads):
    before = stored_vectors(enrolled)
    proc = facegate("gallery", "reembed", "--model", "sface", "--tta", "none", "--data", enrolled)
    assert proc.returncode == 0, said(proc)
    assert "re-embedded 4 faces" in said(proc) and "sface-2021dec/tta-sum -> sface-2021dec/tta-none" in said(proc)
    after = stored_vectors(enrolled)
    assert after.keys() == before.keys()
    for fid in before:  # other vectors (no flip fusion), but the same faces: close, not equal
        assert np.linalg.norm(after[fid]) == pytest.approx(1.0, abs=1e-5)
        assert 0.9 < float(before[fid] @ after[fid]) < 0.99999

    # The old setting is now refused, with the way out in the message ...
    refused = facegate("serve", "--port", "0", "--data", enrolled, timeout=120)
    assert refused.returncode != 0
    assert "sface-2021dec/tta-none" in said(refused) and "--tta" in said(refused)
    # ... and the new one serves and recognises.
    s = start_server(enrolled, "--tta", "none")
    with s.client() as http:
        assert http.get("/healthz").json()["model"] == "sface-2021dec/tta-none"
        _, predict = astronaut_payloads
        assert http.post("/predict", json=predict).json()["user_name"] == "Eileen Collins"

    again = facegate("gallery", "reembed", "--model", "sface", "--tta", "none", "--data", enrolled)
    assert again.returncode == 0 and "nothing to do" in said(again)


def test_reembed_refused_without_crops(start_server, tmp_path, astronaut_payloads):
    data = tmp_path / "nocrops"
    s = start_server(data, env={"FACEGATE_KEEP_CROPS": "false"})
    with s.client() as http:
        register, _ = astronaut_payloads
        body = http.post("/register", json=register).json()
        person = http.get(f"/v1/people/{body['person_id']}").json()
        assert all(f["crop_url"] is None for f in person["faces"])
    s.stop()
    before = stored_vectors(data)
    proc = facegate("gallery", "reembed", "--model", "sface", "--tta", "none", "--data", data)
    assert proc.returncode != 0
    assert "no stored crop" in said(proc)
    after = stored_vectors(data)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing changed


def test_unknown_model_is_a_clear_error(tmp_path):
    proc = facegate("serve", "--port", "0", "--data", tmp_path / "d", "--model", "adaface-ir50", timeout=120)
    assert proc.returncode != 0
    assert "unknown model 'adaface-ir50'" in said(proc) and "facegate models import" in said(proc)
