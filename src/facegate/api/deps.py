"""Dependencies shared by the routers: the pipeline, and running blocking work off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request

from ..pipeline import Pipeline

T = TypeVar("T")


class Worker:
    """Runs model and database work in threads, at most ``threads`` at a time, so the event loop stays free."""

    def __init__(self, threads: int) -> None:
        self.limiter = anyio.CapacityLimiter(threads)

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)


def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def get_worker(request: Request) -> Worker:
    return request.app.state.worker


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
