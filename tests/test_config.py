"""facegate.config: overrides > FACEGATE_* environment > TOML file > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from facegate.config import Settings, default_data_dir, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No FACEGATE_* variable from the outside world leaks in; XDG_DATA_HOME points into tmp_path."""
    for key in list(os.environ):
        if key.upper().startswith("FACEGATE_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- defaults
def test_defaults(tmp_path):
    s = load_settings()
    assert s.data_dir == tmp_path / "xdg" / "facegate"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.detector == "short" and s.model == "sface" and s.tta == "sum"
    assert s.threshold is None and s.top_k == 5
    assert s.exact_search_max == 20_000
    assert isinstance(s, Settings)


def test_default_data_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "facegate"


# ----------------------------------------------------------------------------- precedence
def test_toml_overrides_defaults(tmp_path):
    cfg = write_toml(tmp_path / "fg.toml", 'port = 9001\nhost = "0.0.0.0"\ntta = "concat"\nthreshold = 0.33\n')
    s = load_settings(cfg)
    assert (s.port, s.host, s.tta, s.threshold) == (9001, "0.0.0.0", "concat", 0.33)
    assert s.top_k == 5  # untouched keys keep their defaults


def test_env_overrides_toml(tmp_path, monkeypatch):
    cfg = write_toml(tmp_path / "fg.toml", 'port = 9001\ntop_k = 3\ndetector = "full"\n')
    monkeypatch.setenv("FACEGATE_PORT", "9002")
    monkeypatch.setenv("FACEGATE_DETECTOR", "short")
    s = load_settings(cfg)
    assert s.port == 9002 and s.detector == "short"
    assert s.top_k == 3  # only in the file


def test_overrides_beat_env_and_toml(tmp_path, monkeypatch):
    cfg = write_toml(tmp_path / "fg.toml", "port = 9001\ntop_k = 3\nhnsw_ef = 100\n")
    monkeypatch.setenv("FACEGATE_PORT", "9002")
    monkeypatch.setenv("FACEGATE_TOP_K", "4")
    s = load_settings(cfg, port=9003)
    assert (s.port, s.top_k, s.hnsw_ef) == (9003, 4, 100)


def test_none_override_means_not_given(tmp_path, monkeypatch):
    cfg = write_toml(tmp_path / "fg.toml", "port = 9001\n")
    monkeypatch.setenv("FACEGATE_TOP_K", "7")
    s = load_settings(cfg, port=None, top_k=None, host=None)
    assert (s.port, s.top_k, s.host) == (9001, 7, "127.0.0.1")


def test_full_chain_each_level_wins_somewhere(tmp_path, monkeypatch):
    cfg = write_toml(tmp_path / "fg.toml", "port = 1\ntop_k = 1\nhnsw_m = 8\n")
    monkeypatch.setenv("FACEGATE_PORT", "2")
    monkeypatch.setenv("FACEGATE_TOP_K", "2")
    s = load_settings(cfg, port=3)
    assert s.port == 3  # override > env > file
    assert s.top_k == 2  # env > file
    assert s.hnsw_m == 8  # file > default
    assert s.hnsw_ef == Settings.model_fields["hnsw_ef"].default  # default


def test_config_file_from_env(tmp_path, monkeypatch):
    cfg = write_toml(tmp_path / "fg.toml", "port = 9100\n")
    monkeypatch.setenv("FACEGATE_CONFIG", str(cfg))
    assert load_settings().port == 9100


def test_explicit_config_file_beats_env_config(tmp_path, monkeypatch):
    a = write_toml(tmp_path / "a.toml", "port = 9101\n")
    b = write_toml(tmp_path / "b.toml", "port = 9102\n")
    monkeypatch.setenv("FACEGATE_CONFIG", str(a))
    assert load_settings(b).port == 9102
    assert load_settings(str(b)).port == 9102


def test_env_values_are_parsed(monkeypatch):
    monkeypatch.setenv("FACEGATE_THRESHOLD", "0.42")
    monkeypatch.setenv("FACEGATE_EXACT_SEARCH_MAX", "0")
    monkeypatch.setenv("FACEGATE_TTA", "none")
    s = load_settings()
    assert s.threshold == pytest.approx(0.42) and s.exact_search_max == 0 and s.tta == "none"


def test_data_dir_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_settings(data_dir="~/gallery").data_dir == tmp_path / "home" / "gallery"
    monkeypatch.setenv("FACEGATE_DATA_DIR", "~/from-env")
    assert load_settings().data_dir == tmp_path / "home" / "from-env"
    assert isinstance(load_settings().data_dir, Path)


def test_settings_each_call_reads_its_own_file(tmp_path):
    # load_settings builds a fresh file source each time: a second file is not shadowed by the first.
    a = write_toml(tmp_path / "a.toml", "port = 9201\n")
    b = write_toml(tmp_path / "b.toml", "top_k = 9\n")
    sa, sb = load_settings(a), load_settings(b)
    assert (sa.port, sa.top_k) == (9201, 5)
    assert (sb.port, sb.top_k) == (8000, 9)
    assert load_settings().port == 8000


# ----------------------------------------------------------------------------- refusals
def test_unknown_toml_key_refused(tmp_path):
    cfg = write_toml(tmp_path / "fg.toml", "port = 9001\nthreshhold = 0.4\n")
    with pytest.raises(ValidationError) as ei:
        load_settings(cfg)
    assert "threshhold" in str(ei.value)


def test_unknown_toml_table_refused(tmp_path):
    cfg = write_toml(tmp_path / "fg.toml", "[server]\nport = 9001\n")
    with pytest.raises(ValidationError):
        load_settings(cfg)


def test_unknown_override_refused():
    with pytest.raises(ValidationError):
        load_settings(no_such_setting=1)


@pytest.mark.parametrize(
    "text",
    [
        "port = 70000\n",
        'tta = "mean"\n',
        'detector = "medium"\n',
        "threshold = 1.5\n",
        "top_k = 0\n",
        'port = "eighty"\n',
        "det_threshold = 1.0\n",
    ],
)
def test_invalid_toml_values_refused(tmp_path, text):
    with pytest.raises(ValidationError):
        load_settings(write_toml(tmp_path / "fg.toml", text))


def test_invalid_env_value_refused(monkeypatch):
    monkeypatch.setenv("FACEGATE_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        load_settings()


def test_malformed_toml_refused(tmp_path):
    cfg = write_toml(tmp_path / "fg.toml", "port = = 1\n")
    with pytest.raises(ValueError):  # tomllib.TOMLDecodeError
        load_settings(cfg)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        load_settings(tmp_path / "nope.toml")
    assert "nope.toml" in str(ei.value)


def test_missing_config_file_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGATE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(FileNotFoundError):
        load_settings()


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path)


def test_setting_errors_never_echo_a_password(tmp_path):
    """A settings file with two cameras of one name is refused naming the name, not printing the URLs
    (they may hold the camera's password)."""
    cfg = tmp_path / "facegate.toml"
    cfg.write_text(
        '[[cameras]]\nname = "door"\nurl = "rtsp://admin:hunter2@10.0.0.5/s1"\n'
        '[[cameras]]\nname = "door"\nurl = "rtsp://admin:swordfish@10.0.0.6/s1"\n'
    )
    with pytest.raises(ValueError) as err:
        load_settings(cfg)
    text = str(err.value)
    assert "camera names must be unique: door" in text
    assert "hunter2" not in text and "swordfish" not in text


def test_challenge_actions_are_checked_and_normalised(tmp_path):
    from pydantic import ValidationError

    s = Settings(_env_file=None, data_dir=tmp_path, challenge_actions=" Turn_Right, turn_left ,turn_right")
    assert s.challenge_action_list == ("turn_right", "turn_left")
    assert Settings(_env_file=None, data_dir=tmp_path).challenge_action_list == ("blink", "turn_left", "turn_right")
    with pytest.raises(ValidationError, match="unknown challenge actions"):
        Settings(_env_file=None, data_dir=tmp_path, challenge_actions="blink,smile")
    with pytest.raises(ValidationError, match="two distinct actions"):
        Settings(_env_file=None, data_dir=tmp_path, challenge_actions="blink,blink")
