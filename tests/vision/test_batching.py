"""The micro-batcher: same answers as direct calls, batches under load, bounded queue, deadlines."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from facegate.vision.batching import MicroBatcher
from facegate.vision.embed import FlipTTA
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


def test_close_stops_every_thread():
    b = MicroBatcher(_slow, workers=3)
    assert sum(t.is_alive() for t in b._threads) == 3
    b.close()
    assert not any(t.is_alive() for t in b._threads)


def test_several_model_threads_run_batches_side_by_side():
    """Two workers, two requests at once: each call waits at a barrier the other must reach too."""
    meet = threading.Barrier(2, timeout=5)  # broken (and both requests failed) unless the two calls overlap

    def fn(x):
        meet.wait()
        return _slow(x)

    b = MicroBatcher(fn, max_batch=1, workers=2)
    try:
        futures = [b.submit(crops(1, i)) for i in range(2)]
        assert all(f.result(timeout=10)[0].shape == (1, 4) for f in futures)
    finally:
        b.close()


class _Gated:
    """Model functions that record where each call ran and hold it until the gate opens."""

    def __init__(self) -> None:
        self.used: list[str] = []
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def fn(self, name: str):
        def run(x):
            self.used.append(name)
            self.entered.release()
            assert self.gate.wait(5)
            return np.zeros((len(x), 4), np.float32), np.ones(len(x), np.float32)

        return run

    def running(self) -> None:
        """Wait until one more call has entered the model."""
        assert self.entered.acquire(timeout=5)


def test_a_call_alone_gets_all_the_cores_and_calls_beside_others_a_lane():
    """``fn`` (the model on every core) only when no other call runs and nothing else waits; else ``lane_fn``."""
    g = _Gated()
    b = MicroBatcher(g.fn("all"), lane_fn=g.fn("lane"), max_batch=1, workers=2)
    try:
        first = b.submit(crops(1, 0))  # an idle server
        g.running()
        beside = b.submit(crops(1, 1))  # taken by the other thread while the first call runs
        g.running()
        g.gate.set()
        for f in (first, beside):
            f.result(timeout=5)
        assert g.used == ["all", "lane"]
    finally:
        b.close()
    g = _Gated()
    b = MicroBatcher(g.fn("all"), lane_fn=g.fn("lane"), max_batch=1, workers=1)
    try:
        futures = [b.submit(crops(1, 0))]
        g.running()
        futures += [b.submit(crops(1, i)) for i in (1, 2)]  # queued behind it
        g.gate.set()
        for f in futures:
            f.result(timeout=5)
        assert g.used == ["all", "lane", "all"]  # the second still had one queued behind it; the third none
    finally:
        b.close()


def test_a_lone_call_on_an_idle_batcher_runs_in_the_callers_own_thread():
    """The idle path hands nothing to an inference thread (two thread wake-ups less)."""
    where: list[str] = []

    def fn(x):
        where.append(threading.current_thread().name)
        return np.zeros((len(x), 4), np.float32), np.ones(len(x), np.float32)

    seen: list[tuple[int, int]] = []
    b = MicroBatcher(fn, lane_fn=lambda x: pytest.fail("a lone call ran on a lane"), workers=2, on_batch=lambda f, r, s: seen.append((f, r)))
    try:
        assert b(crops(2, 0))[0].shape == (2, 4)
        assert where == [threading.current_thread().name] and seen == [(2, 1)]
    finally:
        b.close()


def test_a_callers_own_call_holds_a_model_slot():
    """At most ``workers`` model calls at once, counting a call run in its caller's thread."""
    g = _Gated()
    b = MicroBatcher(g.fn("all"), lane_fn=g.fn("lane"), max_batch=1, workers=1)
    try:
        with ThreadPoolExecutor(1) as pool:
            inline = pool.submit(b, crops(1, 0))  # idle: runs in the pool's thread
            g.running()
            queued = b.submit(crops(1, 1))  # the inference thread takes it, then waits for the slot
            assert not g.entered.acquire(timeout=0.3), "a second model call ran beside the first with one worker"
            g.gate.set()
            inline.result(timeout=5)
            queued.result(timeout=5)
        assert g.used == ["all", "all"]  # each ran alone
    finally:
        b.close()


def test_admission_counts_the_model_threads():
    """The queue a request joins drains at (model threads / seconds per request of one thread)."""
    from facegate.api.deps import Worker

    one, two = Worker(8, 100, latency_budget_s=1.0), Worker(8, 100, latency_budget_s=1.0, model_threads=2)
    for w in (one, two):
        w.observe_batch(4, 2, 0.2)  # 0.1 s a request on one model thread
    one.pending = two.pending = 12  # 1.3 s of work on one thread, 0.65 s on two
    assert one.admission_error() is not None and two.admission_error() is None


def test_a_server_pipeline_keeps_helper_libraries_on_one_thread_and_runs_the_model_in_lanes(tmp_path):
    """The server's thread settings (README, "Many requests at once"): BLAS and OpenCV single-threaded,
    the interpreter's short switch interval;
    the model on all its threads for a call alone, on a single-threaded lane beside other calls, one
    model thread per lane, the same vectors either way; a CLI pipeline has the one session."""
    import sys

    import cv2
    from threadpoolctl import threadpool_info

    from facegate.config import Settings
    from facegate.pipeline import SERVER_SWITCH_INTERVAL_S, Pipeline

    cli = Pipeline.from_settings(Settings(data_dir=tmp_path / "cli"))
    try:
        assert cli.embedder.base._lane is None and cli.batcher is None
    finally:
        cli.close()
    # batch_scheduling off: this test process keeps its policy (the server's is tested in test_api_concurrency)
    settings = Settings(data_dir=tmp_path / "server", inference_threads=2, batch_scheduling=False)
    server = Pipeline.from_settings(settings, batching=True)
    try:
        model = server.embedder.base
        assert model._session.get_session_options().intra_op_num_threads == 2
        assert model._lane.get_session_options().intra_op_num_threads == 1
        assert server.batcher.workers == 2 and server.batcher.lane_fn is not server.batcher.fn
        x = crops(4, 7)
        np.testing.assert_allclose(model.raw(x, lane=True), model.raw(x), rtol=1e-4, atol=1e-4)
        vecs, norms = server.batcher.lane_fn(x)
        ref_vecs, ref_norms = server.embedder.embed_with_norm(x)
        full, model._session = model._session, None  # each way on its own session: without the full one,
        try:  # the lane still runs and the call alone cannot
            np.testing.assert_allclose(server.batcher.lane_fn(x)[0], vecs, atol=1e-6)
            with pytest.raises(AttributeError):
                server.batcher.fn(x)
        finally:
            model._session = full
        np.testing.assert_allclose(vecs, ref_vecs, atol=1e-5)
        np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
        assert cv2.getNumThreads() == 1
        assert sys.getswitchinterval() == pytest.approx(SERVER_SWITCH_INTERVAL_S) and SERVER_SWITCH_INTERVAL_S < 0.005
        if hasattr(os, "SCHED_BATCH"):
            assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        server.close()
        sys.setswitchinterval(0.005)
