"""When a server may serve without API keys (issue 19, finding 1): decided once at start, loopback only,
closed for good by the first key. The end-to-end tests are in tests/api/test_api_auth.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from facegate.security.exposure import OpenMode, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "example.com", "localhost.example.com", ""])
def test_other_hosts_are_public(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_open_only_without_keys_and_only_on_loopback(host):
    assert OpenMode.decide(keys_exist=False, host="127.0.0.1").is_open
    assert not OpenMode.decide(keys_exist=True, host="127.0.0.1").is_open
    # No way to be open beyond loopback (there was --allow-no-auth): the decision takes no such option.
    assert not OpenMode.decide(keys_exist=False, host=host).is_open


def test_the_first_key_closes_for_good():
    mode = OpenMode.decide(keys_exist=False, host="127.0.0.1")
    keys: list[str] = []
    assert mode.allows(lambda: bool(keys))
    keys.append("k")
    assert not mode.allows(lambda: bool(keys))
    keys.clear()  # the last key revoked
    assert not mode.allows(lambda: bool(keys)) and not mode.is_open


def _serve(data, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")} | (env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "facegate.cli", "serve", "--data", str(data), "--port", "0", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


def test_allow_no_auth_no_longer_opens_a_public_bind(tmp_path):
    """`serve --host 0.0.0.0 --allow-no-auth` used to serve every route to the network without a key."""
    r = _serve(tmp_path / "d", "--host", "0.0.0.0", "--allow-no-auth")
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode != 0 and "serving on" not in said.lower()
    assert "allow-no-auth" in said  # named as the unknown option


def test_the_setting_cannot_open_a_public_bind_either(tmp_path):
    """Through the environment (ignored: no such setting) the refusal still holds."""
    r = _serve(tmp_path / "d", "--host", "0.0.0.0", env_extra={"FACEGATE_ALLOW_NO_AUTH": "true"})
    assert r.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in " ".join(r.stderr.split())
    assert "allow-no-auth" not in r.stderr


def test_a_config_file_asking_for_it_is_refused(tmp_path):
    """A config file still holding ``allow_no_auth = true`` does not start a server (the setting is unknown)."""
    cfg = tmp_path / "facegate.toml"
    cfg.write_text('host = "0.0.0.0"\nallow_no_auth = true\n')
    r = _serve(tmp_path / "d", "--config", str(cfg))
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode != 0 and "allow_no_auth" in said and "serving on" not in said.lower()
