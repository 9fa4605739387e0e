"""Dependencies shared by the routers: the pipeline, and running blocking work off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request

from ..errors import BusyError, DeadlineError
from ..pipeline import Pipeline
from .metrics import Metrics

T = TypeVar("T")


class Worker:
    """Runs blocking work (decoding, detection, search, waiting for the model) in a thread pool.

    At most ``max_pending`` requests are admitted at once; the next one is refused at once with
    ``BusyError`` (503 + Retry-After) instead of queueing without bound.
    """

    def __init__(self, threads: int, max_pending: int, metrics: Metrics | None = None) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.max_pending = max_pending
        self.pending = 0
        self.metrics = metrics

    async def run(self, fn: Callable[..., T], *args) -> T:
        if self.pending >= self.max_pending:
            if self.metrics:
                self.metrics.rejected.labels("busy").inc()
            raise BusyError(f"the server is at capacity ({self.max_pending} requests in progress); retry shortly")
        self.pending += 1
        if self.metrics:
            self.metrics.inflight.inc()
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except (BusyError, DeadlineError) as exc:
            if self.metrics:
                self.metrics.rejected.labels(exc.code).inc()
            raise
        finally:
            self.pending -= 1
            if self.metrics:
                self.metrics.inflight.dec()


def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def get_worker(request: Request) -> Worker:
    return request.app.state.worker


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
