"""The micro-batcher: same answers as direct calls, batches under load, bounded queue, deadlines."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from facegate.batching import MicroBatcher
from facegate.embed import FlipTTA
from facegate.errors import BusyError, DeadlineError


@pytest.fixture(scope="module")
def tta(sface):
    return FlipTTA(sface, "sum")


def crops(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, 112, 112, 3), dtype=np.uint8)


def test_concurrent_requests_get_their_own_answers_batched(tta):
    seen: list[tuple[int, int]] = []
    b = MicroBatcher(tta.embed_with_norm, max_batch=16, on_batch=lambda f, r, s: seen.append((f, r)))
    try:
        inputs = [crops(1 + i % 3, i) for i in range(24)]
        with ThreadPoolExecutor(12) as pool:
            outs = list(pool.map(lambda x: b(x), inputs))
        for x, (vecs, norms) in zip(inputs, outs):
            direct, direct_norms = tta.embed_with_norm(x)
            np.testing.assert_allclose(vecs, direct, atol=1e-4)
            np.testing.assert_allclose(norms, direct_norms, rtol=1e-4)
        assert sum(f for f, _ in seen) == sum(len(x) for x in inputs)
        assert max(r for _, r in seen) > 1, "concurrent requests were never batched together"
        assert max(f for f, _ in seen) <= 16 + 2  # a batch closes once it holds max_batch faces
    finally:
        b.close()


def _slow(x: np.ndarray):
    time.sleep(0.2)
    return np.zeros((len(x), 4), np.float32), np.ones(len(x), np.float32)


def test_full_queue_refuses_at_once():
    b = MicroBatcher(_slow, max_batch=1, max_queue=2)
    try:
        first = b.submit(crops(1, 0))  # taken by the inference thread
        time.sleep(0.05)
        queued = [b.submit(crops(1, i)) for i in (1, 2)]
        t0 = time.monotonic()
        with pytest.raises(BusyError):
            b.submit(crops(1, 3))
        assert time.monotonic() - t0 < 0.1  # refused, not queued
        for f in [first, *queued]:
            assert f.result(timeout=5)[0].shape == (1, 4)
    finally:
        b.close()


def test_expired_requests_are_dropped_not_run():
    calls = []

    def fn(x):
        calls.append(len(x))
        return _slow(x)

    b = MicroBatcher(fn, max_batch=1, max_queue=8)
    try:
        blocker = b.submit(crops(1, 0), timeout_s=5)
        time.sleep(0.05)
        late = b.submit(crops(1, 1), timeout_s=0.05)  # expires while the first one runs
        with pytest.raises(DeadlineError):
            late.result(timeout=5)
        blocker.result(timeout=5)
        assert calls == [1]
    finally:
        b.close()


def test_a_failing_batch_fails_its_requests_and_the_batcher_survives():
    state = {"fail": True}

    def fn(x):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("boom")
        return np.zeros((len(x), 2), np.float32), np.ones(len(x), np.float32)

    b = MicroBatcher(fn)
    try:
        with pytest.raises(RuntimeError):
            b(crops(1, 0))
        assert b(crops(2, 1))[0].shape == (2, 2)
    finally:
        b.close()


def test_close_stops_the_thread():
    b = MicroBatcher(_slow)
    b.close()
    assert not b._thread.is_alive()


def test_a_server_pipeline_keeps_helper_libraries_on_one_thread_and_the_model_quiet_under_load(tmp_path):
    """The server's thread settings (README, "Many requests at once"): BLAS and OpenCV single-threaded,
    onnxruntime's workers not busy-waiting in batches (a busy server); a CLI pipeline keeps onnxruntime's default."""
    import cv2
    from threadpoolctl import threadpool_info

    from facegate.config import Settings
    from facegate.pipeline import Pipeline

    def spinning(session) -> str:
        opts = session.get_session_options()
        try:
            return opts.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default (spinning)
            return "default"

    cli = Pipeline.from_settings(Settings(data_dir=tmp_path / "cli"))
    try:
        assert spinning(cli.embedder.base._session) == "default" and cli.embedder.base._quiet is None
    finally:
        cli.close()
    server = Pipeline.from_settings(Settings(data_dir=tmp_path / "server"), batching=True)
    try:
        model = server.embedder.base
        # A lone request (face + mirror) on the spinning session, batches of more on the quiet one.
        assert spinning(model._session) == "default" and spinning(model._quiet) == "0" and model.quiet_from == 3
        x = crops(4, 7)
        np.testing.assert_allclose(model.raw(x), np.concatenate([model.raw(x[:2]), model.raw(x[2:])]), rtol=1e-4, atol=1e-4)
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
        assert cv2.getNumThreads() == 1
    finally:
        server.close()
