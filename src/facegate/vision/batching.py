"""Dynamic micro-batching of embedding calls, with a bounded queue and per-request deadlines.

A few inference threads (``workers``, one per core the model may use) take requests from one
queue. Requests that arrive while they are busy are embedded together in the next free thread's
call (up to ``max_batch`` faces), so under load every core runs the model. A lone request on an
idle server is run at once, in the caller's own thread (no hand-off to an inference thread and
back: two thread wake-ups less on the idle path). A call made while another call runs, or with more
requests still queued, goes to ``lane_fn`` (the model on one core) rather than ``fn`` (all cores);
at most ``workers`` calls run at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from facegate.errors import BusyError, DeadlineError

log = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: Called after each model call with (batch size in faces, requests in it, seconds the call took).
BatchHook = Callable[[int, int, float], None]


@dataclass
class _Job:
    crops: np.ndarray
    deadline: float
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Embeds crops from many threads through one model call at a time.

    ``submit`` never blocks: a full queue raises ``BusyError`` at once (the API answers 503).
    A request whose deadline has passed before its turn is dropped with ``DeadlineError``.
    """

    def __init__(
        self,
        fn: EmbedFn,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        max_wait_s: float = 0.0,
        on_batch: BatchHook | None = None,
        workers: int = 1,
        lane_fn: EmbedFn | None = None,
    ) -> None:
        self.fn = fn
        self.lane_fn = lane_fn or fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self.workers = workers
        self._busy = 0  # model calls running now, at most ``workers``
        self._slots = threading.Condition()
        self._threads = [threading.Thread(target=self._loop, name=f"facegate-embed-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, crops: np.ndarray, timeout_s: float = 10.0) -> Future:
        job = _Job(np.asarray(crops), time.monotonic() + timeout_s)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise BusyError("the server is at capacity; retry shortly") from None
        return job.future

    def __call__(self, crops: np.ndarray, timeout_s: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
        """Embed and wait, at most ``timeout_s`` seconds in all (a call run at once, on an idle
        batcher, has no queue to wait in and runs to its end)."""
        crops = np.asarray(crops)
        with self._slots:
            alone = self._busy == 0 and self._queue.empty()
            if alone:
                self._busy += 1
        if alone:
            return self._run(self.fn, crops, 1)
        fut = self.submit(crops, timeout_s)
        try:
            return fut.result(timeout=timeout_s + 1.0)
        except TimeoutError:
            raise DeadlineError(f"no answer within {timeout_s:.1f} s; retry shortly") from None

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)

    # ------------------------------------------------------------------ the inference threads
    def _take(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs, faces = [first], len(first.crops)
        deadline = time.monotonic() + self.max_wait_s
        while faces < self.max_batch:
            try:
                left = deadline - time.monotonic()
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # let the loop see the stop after this batch
                break
            jobs.append(job)
            faces += len(job.crops)
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            now = time.monotonic()
            live = []
            for j in jobs:
                if j.deadline < now:
                    j.future.set_exception(DeadlineError("the request waited too long for the model; retry shortly"))
                elif j.future.set_running_or_notify_cancel():
                    live.append(j)
            if not live:
                continue
            sizes = [len(j.crops) for j in live]
            with self._slots:
                while self._busy >= self.workers:  # a caller's own call (idle path) holds a slot
                    self._slots.wait()
                fn = self.fn if self._busy == 0 and self._queue.empty() else self.lane_fn  # alone: all the cores
                self._busy += 1
            try:
                vecs, norms = self._run(fn, np.concatenate([j.crops for j in live]), len(live))
            except Exception as exc:  # hand the failure to every waiting request, keep serving
                log.exception("embedding batch failed")
                for j in live:
                    j.future.set_exception(exc)
                continue
            start = 0
            for j, n in zip(live, sizes):
                j.future.set_result((vecs[start : start + n], norms[start : start + n]))
                start += n

    def _run(self, fn: EmbedFn, crops: np.ndarray, requests: int) -> tuple[np.ndarray, np.ndarray]:
        """One model call on a slot already taken (``_busy``), which it gives back."""
        t0 = time.perf_counter()
        try:
            out = fn(crops)
        finally:
            with self._slots:
                self._busy -= 1
                self._slots.notify()
        if self.on_batch:
            self.on_batch(len(crops), requests, time.perf_counter() - t0)
        return out
