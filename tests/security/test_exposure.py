"""When a server may serve without API keys (issue 19, finding 1): decided once at start, loopback only,
closed for good by the first key. The end-to-end tests are in tests/api/test_api_auth.py."""

from __future__ import annotations

import pytest

from facegate.security.exposure import OpenMode, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "example.com", "localhost.example.com", ""])
def test_other_hosts_are_public(host):
    assert not is_loopback(host)


def test_open_only_without_keys_and_only_on_loopback():
    assert OpenMode.decide(keys_exist=False, host="127.0.0.1", allow_no_auth=False).is_open
    assert not OpenMode.decide(keys_exist=True, host="127.0.0.1", allow_no_auth=False).is_open
    assert not OpenMode.decide(keys_exist=False, host="0.0.0.0", allow_no_auth=False).is_open
    assert not OpenMode.decide(keys_exist=True, host="0.0.0.0", allow_no_auth=True).is_open
    # The operator's explicit --allow-no-auth (the CLI warns) is the one way to be open beyond loopback.
    assert OpenMode.decide(keys_exist=False, host="0.0.0.0", allow_no_auth=True).is_open


def test_the_first_key_closes_for_good():
    mode = OpenMode.decide(keys_exist=False, host="127.0.0.1", allow_no_auth=False)
    keys: list[str] = []
    assert mode.allows(lambda: bool(keys))
    keys.append("k")
    assert not mode.allows(lambda: bool(keys))
    keys.clear()  # the last key revoked
    assert not mode.allows(lambda: bool(keys)) and not mode.is_open
