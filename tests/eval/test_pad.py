"""`facegate eval --pad`: ISO/IEC 30107-3 error rates of the passive liveness check (facegate.eval.pad).

The numerics on hand-made decisions; the command end to end on the reference's samples with the real
models (skipped when ../shared/models/minifasnet is absent).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SHARED, facegate, said
from facegate.eval.pad import PadSample, list_folder, pad_metrics

MINIFAS = SHARED / "models" / "minifasnet"


def _s(label: str, live: bool | None, species: str = "") -> PadSample:
    return PadSample("x.jpg", label, species if label == "spoof" else "", live, None if live is None else (0.9 if live else 0.1))


def test_rates_at_the_decision():
    samples = (
        [_s("live", True)] * 7 + [_s("live", False)] * 3 + [_s("live", None)]  # 3 of 10 refused, 1 no face
        + [_s("spoof", True, "print")] * 1 + [_s("spoof", False, "print")] * 3  # print: 1 of 4 accepted
        + [_s("spoof", True, "replay")] * 1 + [_s("spoof", False, "replay")] * 1  # replay: 1 of 2: the worst
        + [_s("spoof", None, "replay")]
    )
    m = pad_metrics(samples)
    assert m["bona_fide"] == 10 and m["bona_fide_refused"] == 3 and m["bpcer"] == pytest.approx(0.3)
    assert m["apcer_species"]["print"]["apcer"] == pytest.approx(0.25)
    assert m["apcer_species"]["replay"]["apcer"] == pytest.approx(0.5)
    assert m["apcer"] == pytest.approx(0.5)  # the worst species, as the standard reports it
    assert m["acer"] == pytest.approx(0.4)
    assert m["attacks"] == 6 and m["attacks_accepted"] == 2
    assert m["no_face"] == {"live": 1, "spoof": 1}


def test_bona_fide_only_has_no_apcer():
    m = pad_metrics([_s("live", True), _s("live", False)])
    assert m["bpcer"] == pytest.approx(0.5) and m["apcer"] is None and m["acer"] is None


def test_folder_layout(tmp_path):
    (tmp_path / "live" / "ann").mkdir(parents=True)
    (tmp_path / "spoof" / "print").mkdir(parents=True)
    for p in ("live/ann/1.jpg", "live/2.png", "spoof/print/3.jpg", "spoof/4.jpg", "spoof/notes.txt"):
        (tmp_path / p).write_bytes(b"x")
    got = [(p.relative_to(tmp_path).as_posix(), label, species) for p, label, species in list_folder(tmp_path)]
    assert got == [
        ("live/2.png", "live", ""),
        ("live/ann/1.jpg", "live", ""),
        ("spoof/4.jpg", "spoof", "spoof"),
        ("spoof/print/3.jpg", "spoof", "print"),
    ]
    with pytest.raises(ValueError, match="holds no photo"):
        list_folder(tmp_path / "live")
    with pytest.raises(ValueError, match="not a folder"):
        list_folder(tmp_path / "nothing")


@pytest.mark.skipif(not (MINIFAS / "samples").is_dir(), reason=f"MiniFASNet checkpoints and samples not found in {MINIFAS}")
def test_eval_pad_command_on_the_samples(tmp_path):
    data = tmp_path / "data"
    for f, arch in (("2.7_80x80_MiniFASNetV2.pth", "minifasnet-v2"), ("4_0_0_80x80_MiniFASNetV1SE.pth", "minifasnet-v1se")):
        r = facegate("models", "import-liveness", MINIFAS / f, "--arch", arch, "--data", data)
        assert r.returncode == 0, said(r)
    pad = tmp_path / "pad"
    for rel, src in (("live/image_T1.jpg", "image_T1.jpg"), ("spoof/print/image_F1.jpg", "image_F1.jpg"), ("spoof/replay/image_F2.jpg", "image_F2.jpg")):
        (pad / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MINIFAS / "samples" / src, pad / rel)
    config = tmp_path / "facegate.toml"
    config.write_text(f'data_dir = "{data}"\n')
    plots = tmp_path / "plots"
    r = facegate("eval", "--pad", pad, "--config", config, "--plots", plots, "--json")
    assert r.returncode == 0, said(r)
    doc = json.loads(r.stdout)
    assert doc["bona_fide"] == 1 and doc["attacks"] == 2
    assert doc["apcer"] == 0 and doc["bpcer"] == 0 and doc["acer"] == 0
    assert set(doc["apcer_species"]) == {"print", "replay"}
    assert doc["plots"] == [str(plots / "pad-scores.png")] and Path(doc["plots"][0]).stat().st_size > 5000
    scores = {Path(s["path"]).name: s["score"] for s in doc["samples"]}
    assert scores["image_T1.jpg"] > 0.9 and scores["image_F1.jpg"] < 0.3 and scores["image_F2.jpg"] < 0.3
    text = said(r)
    assert "APCER 0.00%" in text and "BPCER 0.00%" in text and "ACER 0.00%" in text
    # Without a liveness model: one clear error, exit 1.
    (tmp_path / "empty.toml").write_text(f'data_dir = "{tmp_path / "none"}"\n')
    r = facegate("eval", "--pad", pad, "--config", tmp_path / "empty.toml", "--no-plots")
    assert r.returncode == 1 and "no liveness model is imported" in said(r)
