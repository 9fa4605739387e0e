"""Identification accuracy on real photos through the real HTTP API (../shared/faces/lfw-dev).

Runs bench/lfw_http.py, which starts `facegate serve`, enrols 2 photos each of half the people,
keeps the other half as strangers and probes every other photo as the reference client does.
Bounds sit a few points under the measured figures (README, "Accuracy") to catch regressions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(lfw_dir: Path, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "lfw_http.py"), str(lfw_dir), "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.lfw
def test_identification_with_margin_crops(lfw_dir, tmp_path):
    """FaceGate's own clients send the face box with a 25% margin."""
    r = run_bench(lfw_dir, tmp_path, "--margin", "0.25")
    assert r["people_enrolled"] == 60 and r["known_probes"] > 200 and r["stranger_probes"] > 300
    assert r["correct_rate"] >= 0.93
    assert r["wrong_name_rate"] <= 0.01
    assert r["stranger_accept_rate"] <= 0.01


@pytest.mark.lfw
def test_identification_with_reference_tight_crops(lfw_dir, tmp_path):
    """The reference Android client sends the bare BlazeFace box: less context, lower similarity."""
    r = run_bench(lfw_dir, tmp_path, "--margin", "0", "--enroll-crops")
    assert r["correct_rate"] >= 0.85
    assert r["wrong_name_rate"] <= 0.01
    assert r["stranger_accept_rate"] <= 0.01
