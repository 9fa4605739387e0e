"""Challenge nonces for the active liveness check: random actions, single use, short life, no replays.

A challenge is a random id (128 bits) with two distinct random actions and an expiry. It can be
answered once: the first answer takes it (whatever the verdict), a second is refused, an expired one is
refused. The frames of every answer are remembered by their SHA-256 for ``replay_window_s``, so the
same frames sent again with a new challenge are refused; re-encoded frames are not caught by that, but
they must still show the new challenge's random actions within its life.

Stored in the gallery's database (``facegate.gallery.challenges``: SQLite or PostgreSQL), so every
process on one gallery shares them: ``facegate serve --workers N`` or several servers may each answer
a challenge another asked, and single use holds across them (the database decides who spent it).
Bounded: at most ``max_open`` unexpired challenges in all and ``max_open_per_key`` per API key
(503 busy beyond); answered challenges and frame hashes are forgotten after ``replay_window_s``
(and beyond ``10 * max_open`` rows, the oldest first).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facegate.errors import BusyError, ChallengeExpiredError, ChallengeNotFoundError, ChallengeRequiredError, ChallengeUsedError

from facegate.vision.challenge import ACTIONS


@dataclass(frozen=True)
class Challenge:
    id: str
    actions: tuple[str, ...]
    expires_at: float  # Unix seconds
    #: Who asked for it (the request's audit actor: API key and address): only they may answer it.
    owner: str


class ChallengeBackend(Protocol):
    """Where challenges are kept: ``facegate.gallery.challenges.SqliteChallengeStore`` or ``PgChallengeStore``."""

    def add(self, c, bucket: str, *, now: float, forget_at: float, max_open: int, max_open_per_key: int) -> str | None: ...
    def take(self, challenge_id: str, owner: str, *, now: float, forget_at: float) -> tuple[str, object]: ...
    def mark_passed(self, challenge_id: str, owner: str, vector: bytes, until: float) -> None: ...
    def spend_passed(self, challenge_id: str, owner: str) -> tuple[bytes, float] | None: ...
    def remember_frames(self, hashes: list[str], now: float) -> set[str]: ...
    def purge(self, *, now: float, frames_before: float, keep_max: int) -> int: ...
    def close(self) -> None: ...


def bucket_of(owner: str) -> str:
    """The API key part of an audit actor (``key:<id>@<address>``, ``open@<address>``): what the per-key bound counts."""
    return owner.partition("@")[0]


class ChallengeStore:
    """The challenge rules over a ``ChallengeBackend``; without one, a private in-memory SQLite database
    (one process's challenges: unit tests and embedding)."""

    def __init__(
        self,
        ttl_s: float = 10.0,
        *,
        backend: ChallengeBackend | None = None,
        max_open: int = 10_000,
        max_open_per_key: int = 1_000,
        replay_window_s: float = 600.0,
        purge_every_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        actions: Sequence[str] = ACTIONS,
    ) -> None:
        """``actions``: those a challenge asks two of (``challenge_actions``)."""
        if len(set(actions)) < 2 or not set(actions) <= set(ACTIONS):
            raise ValueError(f"challenge actions must be at least two of {ACTIONS}, got {tuple(actions)}")
        self.actions = tuple(dict.fromkeys(actions))
        if backend is None:
            from facegate.gallery.challenges import SqliteChallengeStore

            backend = SqliteChallengeStore(":memory:")
        self.backend = backend
        self.ttl_s = ttl_s
        self.max_open = max_open
        self.max_open_per_key = max_open_per_key
        self.replay_window_s = replay_window_s
        self.purge_every_s = purge_every_s
        self._clock = clock
        self._next_purge = 0.0

    def new(self, owner: str, count: int = 2) -> Challenge:
        """A fresh challenge of ``count`` distinct random actions; 503 busy when a bound is reached."""
        rng = secrets.SystemRandom()
        now = self._clock()
        self._purge(now)
        c = Challenge(secrets.token_urlsafe(16), tuple(rng.sample(self.actions, count)), now + self.ttl_s, owner)
        full = self.backend.add(
            c, bucket_of(owner), now=now, forget_at=c.expires_at + self.replay_window_s,
            max_open=self.max_open, max_open_per_key=self.max_open_per_key,
        )
        if full == "total":
            raise BusyError(f"{self.max_open} challenges are open; try again in {self.ttl_s:.0f} s")
        if full == "key":
            raise BusyError(f"this API key has {self.max_open_per_key} challenges open; answer them or try again in {self.ttl_s:.0f} s")
        return c

    def take(self, challenge_id: str, owner: str) -> Challenge:
        """Spend a challenge for an answer: 404 unknown (or another client's), 409 answered, 410 expired."""
        now = self._clock()
        status, c = self.backend.take(challenge_id, owner, now=now, forget_at=now + self.replay_window_s)
        if status == "taken":
            return Challenge(c.id, c.actions, c.expires_at, c.owner)
        if status == "expired":
            raise ChallengeExpiredError(f"challenge {challenge_id} expired; ask for a new one", field="challenge_id")
        if status == "used":
            raise ChallengeUsedError(f"challenge {challenge_id} was already answered; ask for a new one", field="challenge_id")
        raise ChallengeNotFoundError(f"no open challenge {challenge_id}", field="challenge_id")

    def replayed(self, frames: Iterable[bytes]) -> list[int]:
        """Remember these frames; the indexes of those already sent in an earlier answer (to any process)."""
        now = self._clock()
        self._purge(now)
        hashes = [hashlib.sha256(f).hexdigest() for f in frames]
        old = self.backend.remember_frames(hashes, now)
        return [i for i, h in enumerate(hashes) if h in old]

    def passed(self, challenge_id: str, owner: str, vector: np.ndarray) -> None:
        """Record a passed challenge, spendable once by an enrolment until ``ttl_s`` from now."""
        v = np.ascontiguousarray(vector, dtype=np.float32)
        self.backend.mark_passed(challenge_id, owner, v.tobytes(), self._clock() + self.ttl_s)

    def spend_passed(self, challenge_id: str, owner: str) -> np.ndarray:
        """The first-frame face vector of a passed challenge, spent; ChallengeRequiredError otherwise."""
        got = self.backend.spend_passed(challenge_id, owner)
        if got is None:
            raise ChallengeRequiredError(
                f"challenge {challenge_id} is not a passed, unspent challenge of this client", field="challenge_id"
            )
        vector, until = got
        if self._clock() > until:
            raise ChallengeExpiredError(f"challenge {challenge_id} passed too long ago; answer a new one", field="challenge_id")
        return np.frombuffer(vector, dtype=np.float32).copy()

    def close(self) -> None:
        self.backend.close()

    def _purge(self, now: float) -> None:
        """Forget what is past its time, at most every ``purge_every_s`` in this process."""
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_every_s
        self.backend.purge(now=now, frames_before=now - self.replay_window_s, keep_max=10 * self.max_open)
