"""The passive liveness check: MiniFASNet checkpoints imported (strict load, ONNX parity, card), refused
when they do not match, the reference's crop, and the fused decision on the reference's three samples.

Real checkpoints and photos from ../shared/models/minifasnet (skipped when absent); no mocks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED

MINIFAS = SHARED / "models" / "minifasnet"
V2 = MINIFAS / "2.7_80x80_MiniFASNetV2.pth"
V1SE = MINIFAS / "4_0_0_80x80_MiniFASNetV1SE.pth"
#: From SOURCE.md beside the checkpoints.
SHA256 = {
    V2.name: "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
    V1SE.name: "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
}
SAMPLES = {"image_F1.jpg": False, "image_F2.jpg": False, "image_T1.jpg": True}  # print, tablet replay, live person

pytestmark = pytest.mark.skipif(
    not (V2.is_file() and V1SE.is_file()), reason=f"MiniFASNet checkpoints not found in {MINIFAS} (../shared beside the repository)"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data directory with both checkpoints imported (the models folder, as `facegate models import-liveness` does)."""
    from facegate.vision.liveness_import import import_liveness

    d = tmp_path_factory.mktemp("liveness") / "data"
    for path, arch in ((V2, "minifasnet-v2"), (V1SE, "minifasnet-v1se")):
        import_liveness(path, arch, d / "models")
    return d


@pytest.fixture(scope="module")
def cards(data_dir) -> dict[str, dict]:
    from facegate.vision.liveness import liveness_cards

    return liveness_cards(data_dir / "models")


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    from facegate.vision.imageio import read_image_file

    return {n: read_image_file(str(MINIFAS / "samples" / n)) for n in SAMPLES}


@pytest.fixture(scope="module")
def pipe(data_dir):
    """The server's pipeline on that data directory, liveness "passive"."""
    from facegate.config import Settings
    from facegate.pipeline import Pipeline

    p = Pipeline.from_settings(Settings(data_dir=data_dir, liveness="passive"))
    yield p
    p.close()


# ---------------------------------------------------------------- import


def test_both_checkpoints_import_with_parity(data_dir, cards):
    assert sorted(cards) == ["minifasnet-v1se-4x", "minifasnet-v2-2.7x"]
    for name, src, arch, scale in (("minifasnet-v2-2.7x", V2, "minifasnet-v2", 2.7), ("minifasnet-v1se-4x", V1SE, "minifasnet-v1se", 4.0)):
        card = cards[name]
        assert card["task"] == "liveness" and card["arch"] == arch and card["family"] == "minifasnet"
        assert card["crop_scale"] == scale and card["input_size"] == [80, 80]
        assert card["preprocessing"] == {"channel_order": "BGR", "mean": 0.0, "std": 1.0, "layout": "NCHW"}
        assert 0 <= card["max_abs_diff"] <= 1e-4, card["max_abs_diff"]  # softmax, ONNX vs PyTorch
        assert card["source_file"] == src.name and card["source_sha256"] == SHA256[src.name]
        onnx = (data_dir / "models" / f"{name}.onnx").read_bytes()
        assert card["onnx_sha256"] == hashlib.sha256(onnx).hexdigest()
        assert json.loads((data_dir / "models" / f"{name}.json").read_text()) == card


def test_file_name_convention():
    from facegate.vision.liveness_import import parse_file_name
    from facegate.vision.model_import import ModelImportError

    assert parse_file_name("2.7_80x80_MiniFASNetV2.pth") == (2.7, 80, 80)
    assert parse_file_name("/x/4_0_0_80x80_MiniFASNetV1SE.pth") == (4.0, 80, 80)
    assert parse_file_name("org_1_80x60_MiniFASNetV1SE.pth") == (None, 80, 60)
    for bad in ("MiniFASNetV2.pth", "weights.pth", "2.7_MiniFASNetV2.pth"):
        with pytest.raises(ModelImportError, match="file name"):
            parse_file_name(bad)


def _refused(tmp_path: Path, path: Path, arch: str, match: str, **kw) -> None:
    from facegate.vision.liveness_import import import_liveness
    from facegate.vision.model_import import ModelImportError

    out = tmp_path / "models"
    with pytest.raises(ModelImportError, match=match):
        import_liveness(path, arch, out, **kw)
    assert not out.exists() or not any(out.iterdir()), "a refused import wrote something"


def _saved(tmp_path: Path, state: dict, name: str = V2.name) -> Path:
    import torch

    p = tmp_path / "bad" / name
    p.parent.mkdir(exist_ok=True)
    torch.save(state, p)
    return p


@pytest.fixture(scope="module")
def v2_state() -> dict:
    import torch

    return torch.load(V2, map_location="cpu", weights_only=True)


def test_the_other_architecture_is_refused(tmp_path):
    _refused(tmp_path, V2, "minifasnet-v1se", r"does not match minifasnet-v1se: missing key\(s\): conv_3\.model\.3\.se_module.*looks like a minifasnet-v2")
    _refused(tmp_path, V1SE, "minifasnet-v2", r"unexpected key\(s\): conv_3\.model\.3\.se_module.*looks like a minifasnet-v1se")


def test_mismatched_and_corrupted_state_dicts_are_refused(tmp_path, v2_state):
    import torch

    missing = {k: v for k, v in v2_state.items() if k != "module.conv_6_dw.bn.running_var"}
    _refused(tmp_path, _saved(tmp_path, missing), "minifasnet-v2", r"missing key\(s\): conv_6_dw\.bn\.running_var")

    extra = {**v2_state, "module.head.weight": torch.zeros(3)}
    _refused(tmp_path, _saved(tmp_path, extra), "minifasnet-v2", r"unexpected key\(s\): head\.weight")

    reshaped = dict(v2_state)
    reshaped["module.prob.weight"] = torch.zeros(2, 128)
    _refused(tmp_path, _saved(tmp_path, reshaped), "minifasnet-v2", r"misshapen key\(s\): prob\.weight \(expected \(3, 128\), found \(2, 128\)\)")

    mixed = {k.removeprefix("module.") if "conv1." in k else k: v for k, v in v2_state.items()}
    _refused(tmp_path, _saved(tmp_path, mixed), "minifasnet-v2", "mixes keys with and without the 'module.' prefix")

    nan = dict(v2_state)
    nan["module.linear.weight"] = torch.full_like(v2_state["module.linear.weight"], float("nan"))
    _refused(tmp_path, _saved(tmp_path, nan), "minifasnet-v2", r"non-finite values in linear\.weight")

    truncated = tmp_path / "bad" / V2.name
    truncated.write_bytes(V2.read_bytes()[:50_000])
    _refused(tmp_path, truncated, "minifasnet-v2", "not a PyTorch checkpoint")

    _refused(tmp_path, V2, "minifasnet-v3", "unknown liveness architecture")
    _refused(tmp_path, _saved(tmp_path, v2_state, "MiniFASNetV2.pth"), "minifasnet-v2", "file name")


def test_an_export_that_disagrees_is_refused(tmp_path, data_dir):
    """The parity check tells networks apart (V2 against V1SE's export), and an import over the limit writes nothing."""
    from facegate.vision.liveness_import import check_inputs, load_network, parity

    x = check_inputs(6, (80, 80))
    v2 = load_network(V2, "minifasnet-v2")
    own = parity(v2, (data_dir / "models" / "minifasnet-v2-2.7x.onnx").read_bytes(), x)
    other = parity(v2, (data_dir / "models" / "minifasnet-v1se-4x.onnx").read_bytes(), x)
    assert own["probs"] <= 1e-4 and other["probs"] > 0.05, (own, other)
    assert own["probs"] > 0  # so a zero limit refuses the real export below
    _refused(tmp_path, V2, "minifasnet-v2", r"softmax differs from PyTorch's by .* \(limit 0\); nothing was written", max_prob_diff=0.0)


def test_embedding_loader_leaves_liveness_models_alone(data_dir):
    from facegate.errors import ModelUnavailableError
    from facegate.vision.embed import load_embedder

    with pytest.raises(ModelUnavailableError, match="unknown model 'minifasnet-v2-2.7x'"):
        load_embedder("minifasnet-v2-2.7x", models_dir=data_dir / "models")


def test_a_model_file_that_does_not_match_its_card_is_refused(tmp_path, data_dir):
    import shutil

    from facegate.vision.liveness import LivenessUnavailableError, load_liveness

    models = tmp_path / "models"
    shutil.copytree(data_dir / "models", models)
    onnx = models / "minifasnet-v2-2.7x.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(LivenessUnavailableError, match="does not match its card"):
        load_liveness(models)
    left = load_liveness(models, required=False)  # a server with liveness "off" starts without it
    assert left is not None and left.names == ["minifasnet-v1se-4x"]
    assert load_liveness(tmp_path / "nothing-here") is None


# ---------------------------------------------------------------- crop


def test_crop_region_is_the_references():
    from facegate.vision.liveness import crop_region

    # Inside: 2x a 100x120 box around its centre (200, 260).
    assert crop_region((640, 480, 3), (150, 200, 250, 320), 2.0) == (100, 140, 300, 380)
    # Sticking out left and top: shifted back inside, same size.
    assert crop_region((640, 480, 3), (0, 10, 100, 130), 2.0) == (0, 0, 200, 240)
    # Sticking out right and bottom: shifted back inside.
    assert crop_region((640, 480, 3), (400, 540, 460, 620), 2.0) == (359, 479, 479, 639)
    # Too large for the image: the scale drops until it fits ((480 - 1) / 200 = 2.395 instead of 4).
    left, top, right, bottom = crop_region((640, 480, 3), (140, 200, 340, 400), 4.0)
    assert (left, right) == (0, 479) and (top, bottom) == (60, 539)


def test_served_models_agree_with_pytorch_on_real_crops(data_dir, samples, pipe):
    """onnxruntime as served (with the PRelu rewrite) against the PyTorch network on the samples' own crops."""
    import torch

    from facegate.vision.liveness import crop, load_liveness
    from facegate.vision.liveness_import import load_network

    served = {m.name: m for m in load_liveness(data_dir / "models").models}
    for name, src, arch, scale in (("minifasnet-v2-2.7x", V2, "minifasnet-v2", 2.7), ("minifasnet-v1se-4x", V1SE, "minifasnet-v1se", 4.0)):
        net = load_network(src, arch)
        for img in samples.values():
            box = pipe.locate(img).box
            bgr = np.ascontiguousarray(img[..., ::-1])
            x = crop(bgr, box, scale, (80, 80)).astype(np.float32).transpose(2, 0, 1)[None]
            with torch.no_grad():
                ref = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(x))), 1).numpy()
            got = served[name].probs(bgr, [box])
            assert np.max(np.abs(got - ref)) <= 1e-4


# ---------------------------------------------------------------- decision


def test_fused_decision_on_the_reference_samples(samples, pipe):
    """The print and the tablet replay are spoofs, the live person live (read upright: EXIF orientation 6)."""
    for name, live in SAMPLES.items():
        img = samples[name]
        assert img.shape == (640, 480, 3), "the samples are portrait once their EXIF orientation is applied"
        lf = pipe.locate(img)
        res = pipe.passive_check(img, [lf])[0]
        assert res.live is live, (name, res)
        assert [m.name for m in res.models] == ["minifasnet-v1se-4x", "minifasnet-v2-2.7x"]
        assert res.score == pytest.approx(np.mean([m.score for m in res.models]))
        assert (res.score > 0.9) if live else (res.score < 0.3), (name, res.score)
        assert int(np.argmax(res.fused)) == (1 if live else 2)  # both attacks: class 2 wins


def test_sideways_sample_is_not_what_is_judged(samples, pipe):
    """Read without its EXIF rotation the live person lies on her side; the decoder must rotate her."""
    from PIL import Image

    raw = np.asarray(Image.open(MINIFAS / "samples" / "image_T1.jpg").convert("RGB"))
    assert raw.shape == (480, 640, 3)
    assert np.array_equal(np.rot90(raw, -1), samples["image_T1.jpg"])  # orientation 6: 90 degrees clockwise


def test_passive_identify_never_names_a_spoof(tmp_path, data_dir, samples, pipe):
    """With liveness "passive", the print's face enrolled as a person is answered "spoof", nobody; the same
    gallery with liveness "off" names it (so the name is hidden by the check, not missed). The quality gate
    is off in both (the print's SFace feature norm is just under the retry floor)."""
    from facegate.config import Settings
    from facegate.pipeline import Pipeline

    own = tmp_path / "data"
    (own / "models").mkdir(parents=True)
    for f in (data_dir / "models").iterdir():
        (own / "models" / f.name).write_bytes(f.read_bytes())
    off = Pipeline.from_settings(Settings(data_dir=own, quality_gate=False))
    try:
        off.enroll("Printed Person", [samples["image_F1.jpg"]])
        named = off.identify_all(samples["image_F1.jpg"])
        assert [(i.decision.name, i.spoof, i.liveness) for i in named] == [("Printed Person", False, None)]
    finally:
        off.close()
    on = Pipeline.from_settings(Settings(data_dir=own, liveness="passive", quality_gate=False))
    try:
        (spoof,) = on.identify_all(samples["image_F1.jpg"])
        assert spoof.spoof and spoof.decision.name is None and spoof.decision.person_id is None and spoof.decision.similarity == 0
        assert spoof.liveness is not None and not spoof.liveness.live
        crop = on.identify_face(samples["image_F1.jpg"])
        assert crop.spoof and crop.decision.name is None
        (live,) = on.identify_all(samples["image_T1.jpg"])
        assert live.liveness.live and not live.spoof and live.decision.name is None  # not the person enrolled
    finally:
        on.close()


def test_passive_without_a_model_refuses_to_start(tmp_path):
    from facegate.config import Settings
    from facegate.pipeline import Pipeline
    from facegate.vision.liveness import LivenessUnavailableError

    with pytest.raises(LivenessUnavailableError, match="no liveness model is imported.*import-liveness"):
        Pipeline.from_settings(Settings(data_dir=tmp_path / "data", liveness="passive"))
