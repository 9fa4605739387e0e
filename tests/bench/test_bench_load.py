"""bench/load.py runs end to end on a real server in a tiny mode and writes the report it promises
(no timing asserts: the figures are for people to read, README "Many requests at once")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def test_bench_load_tiny(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "load.json", tmp_path / "load.md"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--clients", "4", "--seconds", "3", "--rounds", "2",
         "--json", str(out_json), "--markdown", str(out_md)],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(out_json.read_text())
    model = report["model"]
    assert model["best_faces_per_s"] > 0 and model["unmodified_file_batch1_ms"] > 0
    (level,) = report["levels"]
    assert level["clients"] == 4 and level["errors"] == 0 and level["status_counts"].get("200", 0) > 0
    assert len(level["rounds"]) == 2  # each stretch of load right after its own measurement of the model alone
    for r in level["rounds"]:
        assert r["requests_per_s"] > 0 and r["model_alone"]["requests_per_s"] > 0
        assert r["ratio"] == r["requests_per_s"] / r["model_alone"]["requests_per_s"]
    assert level["ratio_min"] <= level["ratio"] <= level["ratio_max"]
    assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
    assert level["server_cpu_ms_per_request"] > 0 and level["generator_cpu_ms_per_request"] > 0
    md = out_md.read_text()
    assert "| clients | requests/s |" in md and f"| 4 | {level['requests_per_s']:.1f} |" in md
    assert f"{level['ratio']:.0%} ({level['ratio_min']:.0%}-{level['ratio_max']:.0%})" in md
