"""A request's deadline, seen by the work it started in other threads (issue 19, finding 5).

The API layer sets one per request (``current``, a context variable: worker threads run in a copy of
the request's context); the pipeline calls ``check(stage)`` between its stages (locate, embed, search,
store), so work whose caller has stopped waiting stops at the next stage instead of running to the
end, holding a thread and the model, and storing what no one is told about. Knows nothing of HTTP;
without a deadline (the CLI, evaluation) every check passes.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from .errors import DeadlineError


class Deadline:
    """When the work of one request must stop; ``cancel()`` stops it at once (the caller gave up)."""

    __slots__ = ("at", "cancelled", "stopped_before")

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.cancelled = False
        #: The stage the work was stopped before, once it was (for logs and tests).
        self.stopped_before: str | None = None

    def cancel(self) -> None:
        self.cancelled = True

    def remaining(self) -> float:
        return 0.0 if self.cancelled else max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.cancelled or time.monotonic() >= self.at


#: The deadline of the request this code runs for, or None.
current: ContextVar[Deadline | None] = ContextVar("facegate_deadline", default=None)


def check(stage: str) -> None:
    """Raise ``DeadlineError`` if the current request's time is up (``stage``: what would run next)."""
    d = current.get()
    if d is not None and d.expired:
        d.stopped_before = stage
        raise DeadlineError(f"stopped before {stage}: the request's time ran out; retry shortly")


def remaining(default: float) -> float:
    """Seconds left to the current request (``default`` at most, and when there is no deadline)."""
    d = current.get()
    return default if d is None else min(default, d.remaining())
