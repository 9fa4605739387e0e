"""Rate-limit counters shared in a real Redis (Debian's redis-server on loopback, started here).

Two servers on one Redis count a client's requests together (with ``memory://`` each would count its
own); a Redis that is down lets requests through instead of failing them, and is used again once back.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port
from facegate.api.auth import RateLimits

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server not installed (Debian package redis-server; .ci/run installs it)")


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir, self.port = workdir, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("redis-server did not answer PING within 20 s")

    def dbsize(self) -> int:
        return int(subprocess.run(["redis-cli", "-p", str(self.port), "dbsize"], capture_output=True, text=True, check=True).stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    r = RedisServer(tmp_path).start()
    yield r
    r.stop()


def test_two_servers_count_a_client_together_in_redis(start_server, redis_server, tmp_path):
    env = {"FACEGATE_RATE_LIMIT_STORAGE": redis_server.url, "FACEGATE_RATE_LIMIT_PER_IP": "4/minute"}
    a = start_server(tmp_path / "a", env=env)
    b = start_server(tmp_path / "b", env=env)
    with a.client() as ca, b.client() as cb:
        codes = [c.get("/v1/people").status_code for c in (ca, cb, ca, cb)]
        assert codes == [200] * 4
        r = ca.get("/v1/people")  # the fifth from this address, wherever it lands
        assert r.status_code == 429 and r.json()["code"] == "rate_limited"
        assert cb.get("/v1/people").status_code == 429
        assert ca.get("/healthz").status_code == 200  # never limited


def test_a_server_keeps_answering_while_its_redis_is_down(start_server, redis_server, tmp_path):
    env = {"FACEGATE_RATE_LIMIT_STORAGE": redis_server.url, "FACEGATE_RATE_LIMIT_PER_IP": "2/minute"}
    s = start_server(tmp_path / "a", env=env)
    with s.client() as c:
        assert [c.get("/v1/people").status_code for _ in range(3)] == [200, 200, 429]
        redis_server.stop()
        assert [c.get("/v1/people").status_code for _ in range(3)] == [200, 200, 200]
    assert "rate limits off" in s.read_log() and "counter store failed" in s.read_log()


def test_limits_back_off_from_a_failed_redis_then_come_back(tmp_path):
    """Down: no limit. Back up within ``retry_s`` of the failure: still left alone (nothing written to
    it, so no request waits on a store that just failed). After ``retry_s``: counted again. One event
    loop, as in a server."""
    down = RedisServer(tmp_path)
    limits = RateLimits("", "2/minute", "", down.url, retry_s=3.0)

    async def counts() -> list[float | None]:
        return [await limits.ip("10.0.0.1") for _ in range(3)]

    async def scenario() -> tuple[list, float, int, list, list]:
        while_down = await counts()
        failed_at = time.monotonic()
        down.start()
        backing_off = await counts()
        backed_off_for = time.monotonic() - failed_at
        keys_meanwhile = down.dbsize()
        await asyncio.sleep(max(0.0, failed_at + limits.retry_s + 0.2 - time.monotonic()))
        return while_down, backed_off_for, keys_meanwhile, backing_off, await counts()

    try:
        while_down, backed_off_for, keys_meanwhile, backing_off, back = asyncio.run(scenario())
    finally:
        down.stop()
    assert while_down == [None, None, None]
    assert backed_off_for < limits.retry_s, "redis-server took longer to start than the back-off lasts"
    assert backing_off == [None, None, None] and keys_meanwhile == 0
    assert back[:2] == [None, None] and back[2] is not None and 1.0 <= back[2] <= 60.0
