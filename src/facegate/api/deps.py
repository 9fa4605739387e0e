"""Dependencies shared by the routers: the pipeline, and running blocking work off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Path, Request

from facegate import cancel
from facegate.errors import BusyError, DeadlineError
from facegate.pipeline import Pipeline
from .metrics import Metrics

T = TypeVar("T")


class Worker:
    """Runs blocking work (decoding, detection, search, waiting for the model) in a thread pool.

    Admission control: a request is refused at once with ``BusyError`` (503 + Retry-After) when
    ``max_pending`` requests are in progress, or when the work ahead of it would take longer than
    ``latency_budget_s`` at the model's measured pace; so latency stays bounded under any load and
    nothing queues without bound.
    """

    def __init__(
        self, threads: int, max_pending: int, metrics: Metrics | None = None, latency_budget_s: float = 1.0, model_threads: int = 1
    ) -> None:
        """``model_threads``: how many model calls run side by side (the batcher's workers)."""
        self.limiter = anyio.CapacityLimiter(threads)
        self.model_threads = max(1, model_threads)
        self.max_pending = max_pending
        self.latency_budget_s = latency_budget_s
        self.pending = 0
        self.metrics = metrics
        #: Moving average of model seconds per request of one model thread, from the batcher's reports.
        self.seconds_per_request = 0.0

    def observe_batch(self, faces: int, requests: int, seconds: float) -> None:
        per = seconds / max(1, requests)
        a = 0.2
        self.seconds_per_request = per if self.seconds_per_request == 0.0 else (1 - a) * self.seconds_per_request + a * per
        if self.metrics:
            self.metrics.observe_batch(faces, requests, seconds)

    def _refuse(self, why: str) -> BusyError:
        if self.metrics:
            self.metrics.rejected.labels("busy").inc()
        return BusyError(why)

    def admission_error(self) -> BusyError | None:
        """Why a new request would be refused now, or None. Cheap: checked before the body is read."""
        if self.pending >= self.max_pending:
            return self._refuse(f"the server is at capacity ({self.max_pending} requests in progress); retry shortly")
        expected = (self.pending + 1) * self.seconds_per_request / self.model_threads
        # An idle server always takes the request: one slow call (a cold start) must not refuse all after it.
        if self.pending and expected > self.latency_budget_s:
            return self._refuse(
                f"the server is at capacity (about {expected:.1f} s of work queued, budget {self.latency_budget_s:.1f} s); retry shortly"
            )
        return None

    async def run(self, fn: Callable[..., T], *args) -> T:
        refusal = self.admission_error()
        if refusal is not None:
            raise refusal
        self.pending += 1
        if self.metrics:
            self.metrics.inflight.inc()
        def started():
            cancel.check("start")  # it waited for a thread past its request's deadline: never starts
            return fn(*args)

        try:
            return await anyio.to_thread.run_sync(started, limiter=self.limiter)
        except (BusyError, DeadlineError) as exc:
            if self.metrics:
                self.metrics.rejected.labels(exc.code).inc()
            raise
        finally:
            self.pending -= 1
            if self.metrics:
                self.metrics.inflight.dec()


# ``async`` although they do not wait: FastAPI runs a plain ``def`` dependency in its thread pool, two
# thread hand-offs per request for an attribute read (py-spy on the loaded server: a tenth of the event
# loop's time).
async def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


async def get_worker(request: Request) -> Worker:
    return request.app.state.worker


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
#: A database row id in a path: SQLite's integers are 64-bit, so anything larger is a 422, not an overflow.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
