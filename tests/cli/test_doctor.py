"""`facegate doctor`: one line per check, exit 0 when every required one passes, 1 otherwise."""

from __future__ import annotations

import numpy as np

from conftest import facegate

from facegate.cli import doctor
from facegate.config import load_settings
from facegate.gallery.sqlite import Gallery, NewFace
from facegate.security.keys import KeyStore


def _lines(out: str) -> dict[str, str]:
    """{check name: its line}, from 'STATUS name: detail'."""
    found = {}
    for line in out.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "FAIL", "warn", "info"):
            found[rest.strip().split(":", 1)[0]] = line
    return found


def test_a_healthy_install_passes(tmp_path):
    data = tmp_path / "data"
    made = facegate("keys", "create", "--role", "admin", "--data", data)
    assert made.returncode == 0, made.stderr
    proc = facegate("doctor", "--data", data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines(proc.stdout)
    for name in ("model BlazeFace", "model YuNet", "model sface", "web assets", "data directory", "gallery", "API keys"):
        assert lines[name].startswith("ok "), lines
    assert str(data) in lines["data directory"] and "writable" in lines["data directory"]
    assert "1 active (1 admin)" in lines["API keys"]
    assert {"hnswlib", "PyTorch", "liveness models"} <= set(lines)
    assert not any(line.startswith("FAIL") for line in proc.stdout.splitlines())
    assert proc.stdout.rstrip().endswith("every required check passed")
    assert proc.stderr.strip() == ""  # the models load quietly too


def test_an_unwritable_data_directory_fails_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = blocker / "data"  # mkdir fails under a regular file, root or not
    proc = facegate("doctor", "--data", data)
    assert proc.returncode == 1, proc.stdout
    line = _lines(proc.stdout)["data directory"]
    assert line.startswith("FAIL ") and str(data) in line and "fix:" in line
    assert _lines(proc.stdout)["model sface"].startswith("ok ")  # the other checks still ran
    assert "required check(s) failed" in proc.stdout
    assert not data.exists()


def test_a_gallery_of_another_model_fails_with_the_fix(tmp_path):
    data = tmp_path / "data"
    g = Gallery(data, "other-model/v1", 4)
    g.add_person("Ada", [NewFace(np.array([1, 0, 0, 0], np.float32))], "other-model/v1")
    g.close()
    proc = facegate("doctor", "--data", data)
    assert proc.returncode == 1, proc.stdout
    line = _lines(proc.stdout)["gallery"]
    assert line.startswith("FAIL ") and "other-model/v1" in line and "facegate gallery reembed" in line


def test_missing_web_assets_fail(tmp_path, monkeypatch):
    from facegate import web

    monkeypatch.setattr(web, "MEDIAPIPE_DIR", tmp_path / "node_modules")
    check = doctor._web_assets(doctor._Context(load_settings(None, data_dir=tmp_path / "d")))
    assert check.status == "FAIL" and "npm ci" in check.fix and str(tmp_path) in check.detail


def test_key_states(tmp_path):
    s = load_settings(None, data_dir=tmp_path / "d")
    ctx = doctor._Context(s)
    assert doctor._keys(ctx).status == "warn" and "none" in doctor._keys(ctx).detail
    assert not (tmp_path / "d").exists()  # looking made no database
    store = KeyStore(s.data_dir / "gallery.sqlite3")
    store.create("client", "door")
    assert "no admin key" in doctor._keys(ctx).detail
    store.create("admin")
    store.close()
    c = doctor._keys(ctx)
    assert c.status == "ok" and "2 active (1 admin)" in c.detail
