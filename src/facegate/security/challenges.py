"""Challenge nonces for the active liveness check: random actions, single use, short life, no replays.

A challenge is a random id (128 bits) with two distinct random actions and an expiry. It can be
answered once: the first answer takes it (whatever the verdict), a second is refused, an expired one is
refused. The frames of every answer are remembered by their SHA-256 for ``replay_window_s``, so the
same frames sent again with a new challenge are refused; re-encoded frames are not caught by that, but
they must still show the new challenge's random actions within its life.

In memory, per server process: a challenge must be answered by the process that gave it (``facegate
serve`` with one worker process, the default). Bounded: at most ``max_open`` unexpired challenges.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from facegate.errors import BusyError, ChallengeExpiredError, ChallengeNotFoundError, ChallengeRequiredError, ChallengeUsedError

from facegate.vision.challenge import ACTIONS


@dataclass(frozen=True)
class Challenge:
    id: str
    actions: tuple[str, ...]
    expires_at: float  # Unix seconds
    #: Who asked for it (the API key's name, "unknown" without keys): only they may answer it.
    owner: str


class ChallengeStore:
    """Open challenges, answered ones (until they would have expired), and the hashes of answered frames."""

    def __init__(
        self,
        ttl_s: float = 10.0,
        *,
        max_open: int = 10_000,
        replay_window_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_open = max_open
        self.replay_window_s = replay_window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Challenge] = OrderedDict()
        self._closed: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> ("answered" | "expired", forget at)
        self._seen: OrderedDict[str, float] = OrderedDict()  # frame sha256 -> when it was answered
        #: Passed challenges an enrolment may still spend (id -> (owner, expiry, faces' first-frame vector)).
        self._passed: OrderedDict[str, tuple[str, float, object]] = OrderedDict()

    def new(self, owner: str, count: int = 2) -> Challenge:
        """A fresh challenge of ``count`` distinct random actions; 503 busy when ``max_open`` are open."""
        rng = secrets.SystemRandom()
        now = self._clock()
        with self._lock:
            self._purge(now)
            if len(self._open) >= self.max_open:
                raise BusyError(f"{self.max_open} challenges are open; try again in {self.ttl_s:.0f} s")
            c = Challenge(secrets.token_urlsafe(16), tuple(rng.sample(ACTIONS, count)), now + self.ttl_s, owner)
            self._open[c.id] = c
        return c

    def take(self, challenge_id: str, owner: str) -> Challenge:
        """Spend a challenge for an answer: 404 unknown (or another client's), 409 answered, 410 expired."""
        now = self._clock()
        with self._lock:
            c = self._open.get(challenge_id)
            if c is not None and c.owner != owner:
                c = None
            closed = self._closed.get(challenge_id)
            if c is None and closed is not None and closed[0] == "expired":
                raise ChallengeExpiredError(f"challenge {challenge_id} expired; ask for a new one", field="challenge_id")
            if c is None:
                if closed is not None:
                    raise ChallengeUsedError(f"challenge {challenge_id} was already answered; ask for a new one", field="challenge_id")
                raise ChallengeNotFoundError(f"no open challenge {challenge_id}", field="challenge_id")
            del self._open[challenge_id]
            self._closed[challenge_id] = ("answered", now + self.replay_window_s)
            if now > c.expires_at:
                raise ChallengeExpiredError(
                    f"challenge {challenge_id} expired {now - c.expires_at:.1f} s before its answer came; ask for a new one",
                    field="challenge_id",
                )
            return c

    def replayed(self, frames: Iterable[bytes]) -> list[int]:
        """Remember these frames; the indexes of those already sent in an earlier answer."""
        now = self._clock()
        hashes = [hashlib.sha256(f).hexdigest() for f in frames]
        with self._lock:
            self._purge(now)
            old = [i for i, h in enumerate(hashes) if h in self._seen]
            for h in hashes:
                self._seen[h] = now
                self._seen.move_to_end(h)
        return old

    def passed(self, challenge_id: str, owner: str, vector: object) -> None:
        """Record a passed challenge, spendable once by an enrolment until ``ttl_s`` from now."""
        with self._lock:
            self._passed[challenge_id] = (owner, self._clock() + self.ttl_s, vector)

    def spend_passed(self, challenge_id: str, owner: str) -> object:
        """The first-frame face vector of a passed challenge, spent; ChallengeRequiredError otherwise."""
        now = self._clock()
        with self._lock:
            got = self._passed.pop(challenge_id, None)
        if got is None or got[0] != owner:
            raise ChallengeRequiredError(
                f"challenge {challenge_id} is not a passed, unspent challenge of this client", field="challenge_id"
            )
        if now > got[1]:
            raise ChallengeExpiredError(f"challenge {challenge_id} passed too long ago; answer a new one", field="challenge_id")
        return got[2]

    def _purge(self, now: float) -> None:
        """Forget expired open challenges, used ids past their window and old frame hashes (lock held)."""
        while self._open:
            k, c = next(iter(self._open.items()))
            if c.expires_at >= now:
                break
            del self._open[k]
            self._closed[k] = ("expired", now + self.replay_window_s)  # a late answer still hears "expired"
        for d, stamp_of in ((self._closed, lambda v: v[1]), (self._passed, lambda v: v[1])):
            while d:
                k, v = next(iter(d.items()))
                if stamp_of(v) >= now:
                    break
                del d[k]
        for d in (self._closed, self._seen):  # bounded whatever the rate
            while len(d) > 10 * self.max_open:
                d.popitem(last=False)
        while self._seen:
            k, t = next(iter(self._seen.items()))
            if t + self.replay_window_s >= now:
                break
            del self._seen[k]
