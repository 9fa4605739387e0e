"""bench/search.py runs end to end in a tiny mode and writes the report it promises (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "search.py"


def test_bench_search_tiny(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "search.json", tmp_path / "search.md"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "2000", "--queries", "50", "--exact-queries", "20", "--adds", "20",
         "--M", "16", "--ef-construction", "100,200", "--ef", "32,64",
         "--concurrency-size", "2000", "--concurrency-runs", "1", "--no-progress",
         "--json", str(out_json), "--markdown", str(out_md)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(out_json.read_text())
    for key in ("meta", "results", "rows", "chosen", "chosen_reason", "defaults", "concurrency", "targets"):
        assert key in report
    (res,) = report["results"]
    assert res["size"] == 2000
    assert {"p50_ms", "p99_ms"} <= set(res["exact"])
    assert res["exact"]["agreement_with_ground_truth"] == 1.0
    assert len(res["hnsw"]) == 2
    for b in res["hnsw"]:
        for key in ("build_s", "index_file_bytes", "rss_growth_bytes", "save_s", "add", "replace", "mark_deleted", "queries"):
            assert key in b
        assert [q["ef"] for q in b["queries"]] == [32, 64]
    assert len(report["rows"]) == 4
    for row in report["rows"]:
        for key in ("size", "M", "ef_construction", "ef", "p50_ms", "p99_ms", "recall_at_5"):
            assert key in row
    assert all(row["recall_at_5"] >= 0.95 for row in report["rows"])
    assert len(report["defaults"]) <= 1  # gallery.py's (M, ef_construction, ef), when swept
    assert all(d["recall_at_5"] >= 0.95 for d in report["defaults"])
    assert report["chosen"] is not None and report["chosen"]["recall_at_5"] >= 0.95
    md = out_md.read_text()
    assert "| N | M | efc | ef |" in md and "Chosen setting" in md
