"""The gallery outlives the server: restarts, a deleted or damaged index file, a different model.

Restarts and the model refusal run on both backends (``store``); the index file is the embedded one's.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import b64


def _enrol_two(http, astronaut_payloads, other_face) -> None:
    register, _ = astronaut_payloads
    assert http.post("/register", json=register).status_code == 200
    other = np.ascontiguousarray(other_face)
    r = http.post("/v1/people", json={"name": "Other Person", "images": [b64(other), b64(other[:, ::-1])]})
    assert r.status_code == 201, r.text


def _answers(http, probes: list[dict]) -> list[dict]:
    out = []
    for p in probes:
        r = http.post("/predict", json=p)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


@pytest.fixture
def probes(astronaut_payloads, other_face, astronaut):
    _, predict = astronaut_payloads
    return [
        predict,
        {"file_name": "other.jpg", "image": b64(np.ascontiguousarray(other_face))},
        {"file_name": "full.jpg", "image": b64(np.ascontiguousarray(astronaut))},
    ]


def test_gallery_survives_restart(start_server, store, astronaut_payloads, other_face, probes):
    data = store.data_dir
    s = start_server(data, env=store.env)
    with s.client() as http:
        _enrol_two(http, astronaut_payloads, other_face)
        first = _answers(http, probes)
        assert first[0]["user_name"] == "Eileen Collins"
        assert first[1]["user_name"] == "Other Person"
    s.stop()
    s2 = start_server(data, env=store.env)
    with s2.client() as http:
        assert http.get("/healthz").json()["gallery"]["people"] == 2
        assert _answers(http, probes) == first


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "stale-stamp"])
def test_index_is_rebuilt_with_identical_answers(start_server, tmp_path, astronaut_payloads, other_face, probes, damage):
    data = tmp_path / "gallery"
    hnsw = {"FACEGATE_EXACT_SEARCH_MAX": "0", "FACEGATE_ANN_INDEX": "hnsw"}
    s = start_server(data, env=hnsw)  # force HNSW so the index file is what answers
    with s.client() as http:
        _enrol_two(http, astronaut_payloads, other_face)
        assert http.get("/healthz").json()["gallery"]["search"] == "hnsw"
        before = _answers(http, probes)
    s.stop()
    index, stamp = data / "faces.hnsw", data / "faces.hnsw.json"
    assert index.is_file() and stamp.is_file()
    if damage == "delete":
        index.unlink()
        stamp.unlink()
    elif damage == "truncate":
        index.write_bytes(index.read_bytes()[:100])
    elif damage == "garbage":
        index.write_bytes(np.random.default_rng(0).bytes(index.stat().st_size))
    else:
        stamp.write_text(stamp.read_text().replace('"generation": ', '"generation": 1000'))
    s2 = start_server(data, env=hnsw)
    with s2.client() as http:
        assert _answers(http, probes) == before
    assert "rebuilding" in s2.read_log() or "building it" in s2.read_log()
    assert index.is_file() and stamp.is_file()


def test_other_model_refuses_to_serve_an_existing_gallery(start_server, store, astronaut_payloads, other_face):
    data = store.data_dir
    s = start_server(data, env=store.env)
    with s.client() as http:
        _enrol_two(http, astronaut_payloads, other_face)
    s.stop()
    # concat TTA makes 256-d vectors in another space: mixing them must be refused, loudly.
    proc = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "serve", "--port", "0", "--data", str(data), "--tta", "concat", *store.serve_args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "sface-2021dec/tta-sum" in proc.stdout + proc.stderr
    assert "tta-concat" in proc.stdout + proc.stderr
    # ... and the gallery is untouched: the original model still serves it.
    s3 = start_server(data, env=store.env)
    with s3.client() as http:
        assert http.get("/healthz").json()["gallery"]["people"] == 2
