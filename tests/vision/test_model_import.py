"""AdaFace checkpoint import: IResNet layout, Lightning checkpoints, ONNX export checked against PyTorch,
refusals that leave nothing behind.

Real AdaFace weights cannot be downloaded here, so each architecture is built with random weights
(BatchNorm running statistics and PReLU slopes randomised too, so no layer is an identity) and
saved the way AdaFace's Lightning training saves it: ``state_dict`` with ``model.*`` backbone keys
and ``head.*`` keys, beside Lightning's own entries and objects of Lightning classes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import types
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import facegate
from facegate.errors import FaceGateError
from facegate.vision.iresnet import build_backbone
from facegate.vision.model_import import ARCHS, ModelImportError, import_checkpoint, load_backbone

#: Blocks in ``body``: AdaFace's get_blocks for 18, 50 and 100 layers ([2,2,2,2], [3,4,14,3], [3,13,30,3]).
BODY_BLOCKS = {"ir18": 8, "ir50": 24, "ir101": 49}
#: Blocks whose shortcut is a 1x1 conv + BN: the first block of stages 2, 3 and 4 (channels change).
CONV_SHORTCUTS = {"ir18": {2, 4, 6}, "ir50": {3, 7, 21}, "ir101": {3, 16, 46}}


# ---------------------------------------------------------------------------------------------
# Checkpoints like AdaFace's


def random_backbone(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_backbone(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123456)
                if m.affine:
                    m.weight.uniform_(0.6, 1.4)
                    m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    return model.eval()


@contextmanager
def lightning_classes():
    """Classes living under Lightning's module names, so pickles name them as a real checkpoint does.

    Lightning is not installed; these exist only while the checkpoint is written, and the importer
    must read the file without them (and without running anything from it).
    """
    names = [
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
        "pytorch_lightning.utilities",
        "pytorch_lightning.utilities.parsing",
    ]
    mods = {n: types.ModuleType(n) for n in names}

    class ModelCheckpoint:
        pass

    class AttributeDict(dict):
        pass

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"
    ModelCheckpoint.__qualname__, AttributeDict.__qualname__ = "ModelCheckpoint", "AttributeDict"
    mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = ModelCheckpoint
    mods["pytorch_lightning.utilities.parsing"].AttributeDict = AttributeDict
    sys.modules.update(mods)
    try:
        yield ModelCheckpoint, AttributeDict
    finally:
        for n in names:
            sys.modules.pop(n, None)


def save_lightning_ckpt(path: Path, backbone_state: dict, arch: str = "ir_50") -> Path:
    sd = {"model." + k: v for k, v in backbone_state.items()}
    sd["head.kernel"] = torch.randn(512, 10)
    sd["head.t"] = torch.zeros(1)
    sd["head.batch_mean"] = torch.ones(1) * 20
    sd["head.batch_std"] = torch.ones(1) * 100
    with lightning_classes() as (ModelCheckpoint, AttributeDict):
        ckpt = {
            "epoch": 25,
            "global_step": 123456,
            "pytorch-lightning_version": "1.8.6",
            "state_dict": sd,
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.97), "best_model_path": "x.ckpt"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}],
            "lr_schedulers": [{"milestones": {12: 1, 20: 1}, "last_epoch": 25}],
            "hparams_name": "kwargs",
            "hyper_parameters": AttributeDict(arch=arch, head="adaface", m=0.4, h=0.333, lr_milestones=[12, 20, 24]),
        }
        torch.save(ckpt, path)
    return path


def leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir()) if models_dir.exists() else []


@pytest.fixture(scope="module")
def imports(tmp_path_factory):
    """``imports(arch)``: that architecture with random weights, saved like AdaFace, imported once."""
    done: dict[str, types.SimpleNamespace] = {}

    def get(arch: str) -> types.SimpleNamespace:
        if arch not in done:
            tmp = tmp_path_factory.mktemp(arch)
            model = random_backbone(arch, seed=BODY_BLOCKS[arch])
            ckpt = save_lightning_ckpt(tmp / f"adaface_{arch}_random.ckpt", model.state_dict())
            models_dir = tmp / "models"
            # The default number of check samples for IR-18; fewer for the big ones, to keep the suite quick.
            card = import_checkpoint(ckpt, arch, models_dir, **({} if arch == "ir18" else {"check_samples": 4}))
            onnx_file = models_dir / f"{card['name']}.onnx"
            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            done[arch] = types.SimpleNamespace(
                arch=arch, model=model, ckpt=ckpt, models_dir=models_dir, card=card, session=session
            )
        return done[arch]

    return get


@pytest.fixture(scope="module", params=sorted(ARCHS, key=lambda a: BODY_BLOCKS[a]))
def imported(request, imports):
    return imports(request.param)


@pytest.fixture(scope="module")
def ir18_state():
    return random_backbone("ir18", seed=1).state_dict()


def crops(n: int, seed: int) -> np.ndarray:
    """Inputs as AdaFace sees them: BGR pixels scaled to [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 112, 112)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The architecture


@pytest.mark.parametrize("arch", sorted(BODY_BLOCKS))
def test_backbone_layout_matches_adaface_net(arch):
    sd = build_backbone(arch).state_dict()
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    assert blocks == set(range(BODY_BLOCKS[arch]))
    convs = {int(k.split(".")[1]) for k in sd if k.startswith("body.") and ".shortcut_layer.0.weight" in k}
    assert convs == CONV_SHORTCUTS[arch]
    assert sd["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert sd["input_layer.2.weight"].shape == (64,)  # PReLU(64)
    assert sd["body.0.res_layer.1.weight"].shape == (64, 64, 3, 3)
    assert sd["body.0.res_layer.3.weight"].shape == (64,)  # PReLU between the two convs
    assert sd[f"body.{BODY_BLOCKS[arch] - 1}.res_layer.5.running_var"].shape == (512,)
    assert sd["output_layer.0.weight"].shape == (512,)
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert "output_layer.4.weight" not in sd and sd["output_layer.4.running_mean"].shape == (512,)  # affine=False
    bns = [m for m in build_backbone(arch).modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert {(m.eps, m.momentum) for m in bns} == {(1e-5, 0.1)}


def test_forward_returns_unit_embedding_and_norm():
    model = random_backbone("ir18", seed=3)
    with torch.no_grad():
        x = torch.from_numpy(crops(3, 3))
        emb, norm = model(x)
        feat = model.output_layer(model.body(model.input_layer(x)))
    assert emb.shape == (3, 512) and norm.shape == (3, 1)
    assert torch.allclose(emb * norm, feat, atol=1e-4)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_module_imports_without_torch():
    code = (
        "import sys, facegate.vision.model_import as m; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(m.ARCHS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['ir101', 'ir18', 'ir50']"


# ---------------------------------------------------------------------------------------------
# Each architecture, imported


def test_card(imported):
    card, models_dir, arch = imported.card, imported.models_dir, imported.arch
    name = f"adaface-{arch}"
    assert leftovers(models_dir) == [f"{name}.json", f"{name}.onnx"]
    assert json.loads((models_dir / f"{name}.json").read_text()) == card
    assert card["format"] == 1
    assert (card["name"], card["arch"], card["family"]) == (name, arch, "adaface")
    assert (card["embedding_size"], card["input_size"]) == (512, 112)
    assert card["preprocessing"] == {"channel_order": "BGR", "mean": 127.5, "std": 127.5}
    assert card["outputs"] == ["embedding", "norm"]
    assert card["source_file"] == imported.ckpt.name
    assert card["source_sha256"] == hashlib.sha256(imported.ckpt.read_bytes()).hexdigest()
    assert card["onnx_sha256"] == hashlib.sha256((models_dir / f"{name}.onnx").read_bytes()).hexdigest()
    assert 0 <= card["max_abs_diff"] < 1e-3
    assert card["check_samples"] == (8 if arch == "ir18" else 4)
    assert isinstance(card["opset"], int)
    assert datetime.fromisoformat(card["created_at"]).tzinfo is not None
    assert card["facegate_version"] == facegate.__version__


def test_onnx_graph(imported):
    model = onnx.load(str(imported.models_dir / f"{imported.card['name']}.onnx"), load_external_data=False)
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}.get("", None) == imported.card["opset"]

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    (inp,) = model.graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch = dims(inp)[0]
    assert isinstance(batch, str) and dims(inp)[1:] == [3, 112, 112]
    assert [(o.name, dims(o)) for o in model.graph.output] == [("embedding", [batch, 512]), ("norm", [batch, 1])]


def test_onnx_equals_pytorch_on_new_inputs(imported):
    x = crops(4, seed=100)
    emb, norm = imported.session.run(None, {"input": x})
    with torch.no_grad():
        ref_emb, ref_norm = (t.numpy() for t in imported.model(torch.from_numpy(x)))
    assert emb.shape == (4, 512) and norm.shape == (4, 1)
    assert np.abs(emb - ref_emb).max() < 1e-3
    assert np.abs(norm - ref_norm).max() < 1e-3
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert (norm > 0).all()
    # Different faces, different vectors: the weights were really loaded, not left at zero.
    assert np.abs(emb[0] @ emb[1]) < 0.999


def test_batch_one_and_batch_five_agree(imported):
    x = crops(5, seed=200)
    emb5, norm5 = imported.session.run(None, {"input": x})
    singles = [imported.session.run(None, {"input": x[i : i + 1]}) for i in range(5)]
    emb1 = np.concatenate([s[0] for s in singles])
    norm1 = np.concatenate([s[1] for s in singles])
    assert np.abs(emb1 - emb5).max() < 1e-4
    assert np.abs(norm1 - norm5).max() < 1e-4 * max(1.0, float(norm5.max()))


def test_load_backbone_gives_the_saved_weights(imports):
    imported = imports("ir18")
    loaded = load_backbone(imported.ckpt, "ir18")
    assert not loaded.training
    want = imported.model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


# ---------------------------------------------------------------------------------------------
# Preprocessing: the card says what AdaFace's own inference code does


def test_card_preprocessing_is_adafaces(imported):
    card = imported.card
    pre = card["preprocessing"]
    rgb = np.random.default_rng(5).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    # AdaFace inference.to_input: BGR, then ((x / 255) - 0.5) / 0.5, channels first.
    adaface = (((rgb[:, :, ::-1] / 255.0) - 0.5) / 0.5).transpose(2, 0, 1)
    assert pre["channel_order"] == "BGR"
    ours = ((rgb[:, :, ::-1].astype(np.float64) - pre["mean"]) / pre["std"]).transpose(2, 0, 1)
    assert np.abs(ours - adaface).max() < 1e-12


def test_served_embedding_equals_adaface_on_a_crop(imports):
    """FaceGate's embedder, configured from the card, gives what AdaFace's own code gives on an RGB crop."""
    imported = imports("ir18")
    import onnx

    from facegate.vision.embed import fast_onnx, load_embedder

    # The file keeps PyTorch's PRelu layers; the served graph has them rewritten (facegate.vision.embed._prelu_as_relu).
    on_disk = (imported.models_dir / f"{imported.card['name']}.onnx").read_bytes()
    assert sum(n.op_type == "PRelu" for n in onnx.load_from_string(on_disk).graph.node) > 0
    assert not any(n.op_type == "PRelu" for n in onnx.load_from_string(fast_onnx(on_disk)).graph.node)
    emb = load_embedder(imported.card["name"], models_dir=imported.models_dir, threads=1)
    rgb = np.random.default_rng(6).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    x = torch.tensor((((rgb[..., ::-1] / 255.0) - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()).float()
    with torch.no_grad():
        ref, _ = imported.model(x)
    assert np.abs(emb.embed(rgb) - ref.numpy()).max() < 1e-3


# ---------------------------------------------------------------------------------------------
# Lightning checkpoints are read without Lightning and without running code from the file


def test_lightning_checkpoint_needs_the_fallback_and_gets_it(imports):
    imported = imports("ir18")
    with pytest.raises(Exception, match="pytorch_lightning"):
        torch.load(imported.ckpt, map_location="cpu", weights_only=True)
    load_backbone(imported.ckpt, "ir18")
    assert not any(n.startswith("pytorch_lightning") for n in sys.modules)


class _Payload:
    """Unpickling this runs a command, as a hostile checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.check_call, (["touch", str(self.marker)],))


def test_code_in_a_checkpoint_is_never_run(tmp_path, ir18_state):
    marker = tmp_path / "pwned"
    sd = {"model." + k: v for k, v in ir18_state.items()}
    torch.save({"state_dict": sd, "callbacks": {"x": _Payload(marker)}}, tmp_path / "hostile.ckpt")
    load_backbone(tmp_path / "hostile.ckpt", "ir18")  # the weights are fine: they load
    assert not marker.exists()


def test_os_globals_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelImportError, match="not a PyTorch checkpoint FaceGate can read safely"):
        load_backbone(tmp_path / "evil.ckpt", "ir18")


def test_bare_state_dict_and_old_batchnorm_buffers(tmp_path, ir18_state):
    bare = {k: v for k, v in ir18_state.items() if not k.endswith("num_batches_tracked")}
    torch.save(bare, tmp_path / "bare.pt")
    model = load_backbone(tmp_path / "bare.pt", "ir18")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in bare.items())


# ---------------------------------------------------------------------------------------------
# Refusals: a clear error, and nothing written


def refuse(ckpt: Path, arch: str, models_dir: Path, match: str, **kw) -> ModelImportError:
    with pytest.raises(ModelImportError, match=match) as info:
        import_checkpoint(ckpt, arch, models_dir, **kw)
    assert leftovers(models_dir) == []
    assert info.value.code == "model_import" and isinstance(info.value, FaceGateError)
    return info.value


def test_missing_key(tmp_path, ir18_state):
    state = dict(ir18_state)
    del state["body.3.res_layer.1.weight"]
    ckpt = save_lightning_ckpt(tmp_path / "missing.ckpt", state)
    err = refuse(ckpt, "ir18", tmp_path / "models", "missing key")
    assert "body.3.res_layer.1.weight" in err.message


def test_misshapen_key(tmp_path, ir18_state):
    state = dict(ir18_state)
    state["output_layer.3.weight"] = torch.randn(512, 100)
    ckpt = save_lightning_ckpt(tmp_path / "misshapen.ckpt", state)
    err = refuse(ckpt, "ir18", tmp_path / "models", "misshapen key")
    assert "output_layer.3.weight" in err.message
    assert "(512, 25088)" in err.message and "(512, 100)" in err.message


def test_unexpected_key(tmp_path, ir18_state):
    state = dict(ir18_state)
    state["body.0.res_layer.6.weight"] = torch.ones(64)
    ckpt = save_lightning_ckpt(tmp_path / "extra.ckpt", state)
    err = refuse(ckpt, "ir18", tmp_path / "models", "unexpected key")
    assert "body.0.res_layer.6.weight" in err.message


@pytest.mark.parametrize("wrong", ["ir50", "ir101"])
def test_wrong_architecture(tmp_path, ir18_state, wrong):
    ckpt = save_lightning_ckpt(tmp_path / "ir18.ckpt", ir18_state)
    err = refuse(ckpt, wrong, tmp_path / "models", f"does not match {wrong}")
    assert "looks like an ir18 checkpoint" in err.message


def test_ir50_checkpoint_as_ir18(tmp_path, imports):
    err = refuse(imports("ir50").ckpt, "ir18", tmp_path / "models", "does not match ir18")
    assert "looks like an ir50 checkpoint" in err.message


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(4096), b"", b'{"state_dict": {}}', b"PK\x03\x04 not really a zip"],
    ids=["random", "empty", "json", "fake-zip"],
)
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "adaface_ir18.ckpt"
    path.write_bytes(content)
    refuse(path, "ir18", tmp_path / "models", "not a PyTorch checkpoint")


def test_checkpoint_without_weights(tmp_path):
    torch.save({"epoch": 3, "global_step": 10}, tmp_path / "empty.ckpt")
    refuse(tmp_path / "empty.ckpt", "ir18", tmp_path / "models", "no state dict")


def test_non_finite_weights(tmp_path, ir18_state):
    state = dict(ir18_state)
    w = state["body.5.res_layer.4.weight"].clone()
    w[0, 0, 0, 0] = float("nan")
    state["body.5.res_layer.4.weight"] = w
    ckpt = save_lightning_ckpt(tmp_path / "nan.ckpt", state)
    err = refuse(ckpt, "ir18", tmp_path / "models", "non-finite")
    assert "body.5.res_layer.4.weight" in err.message


def test_network_that_overflows_is_refused(tmp_path, ir18_state):
    """Finite weights whose outputs are not: the check against PyTorch refuses, and writes nothing."""
    state = dict(ir18_state)
    state["output_layer.3.weight"] = torch.full((512, 25088), 1e30)
    ckpt = save_lightning_ckpt(tmp_path / "overflow.ckpt", state)
    refuse(ckpt, "ir18", tmp_path / "models", "non-finite outputs")


def test_missing_file_and_unknown_arch(tmp_path):
    refuse(tmp_path / "nope.ckpt", "ir18", tmp_path / "models", "no checkpoint file")
    refuse(tmp_path / "nope.ckpt", "ir34", tmp_path / "models", "unknown architecture")


@pytest.mark.parametrize("name", ["../evil", "Ada", "", ".hidden", "a" * 65, "a b", "x/y", "-dash", "ok\n", "sface"])
def test_unsafe_names(tmp_path, name):
    ckpt = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    err = refuse(ckpt, "ir18", tmp_path / "models", "bundled model" if name == "sface" else "not allowed", name=name)
    assert err.field == "name"


def test_existing_model_is_not_replaced_unless_asked(tmp_path, imports):
    imported = imports("ir18")
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for p in imported.models_dir.iterdir():
        (models_dir / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in models_dir.iterdir()}
    with pytest.raises(ModelImportError, match="already exists"):
        import_checkpoint(imported.ckpt, "ir18", models_dir)
    assert {p.name: p.read_bytes() for p in models_dir.iterdir()} == before
    card = import_checkpoint(imported.ckpt, "ir18", models_dir, "second.copy-1", check_samples=1)
    assert card["name"] == "second.copy-1" and card["check_samples"] == 1
    assert card["onnx_sha256"] == imported.card["onnx_sha256"]  # the export is deterministic
    again = import_checkpoint(imported.ckpt, "ir18", models_dir, "second.copy-1", overwrite=True, check_samples=1)
    assert again["onnx_sha256"] == card["onnx_sha256"]
    assert sorted(p.name for p in models_dir.iterdir()) == sorted([*before, "second.copy-1.json", "second.copy-1.onnx"])
