"""The reference ranking rule, as a pure function.

Take the k nearest gallery faces, drop those below the similarity threshold, answer the identity
with the most votes; a tie goes to the identity owning the nearest face. Nothing left: unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Neighbour:
    face_id: int
    person_id: int
    name: str
    similarity: float


@dataclass(frozen=True)
class Decision:
    person_id: int | None
    name: str | None
    #: Similarity of the winner's nearest face; when unknown, of the nearest face at all (0.0 on an empty gallery).
    similarity: float
    votes: int
    considered: int

    @property
    def known(self) -> bool:
        return self.person_id is not None


def rank(neighbours: Sequence[Neighbour], threshold: float, k: int = 5) -> Decision:
    nearest = sorted(neighbours, key=lambda n: n.similarity, reverse=True)[:k]
    kept = [n for n in nearest if n.similarity >= threshold]
    if not kept:
        best = nearest[0].similarity if nearest else 0.0
        return Decision(None, None, float(best), 0, len(nearest))
    votes: dict[int, int] = {}
    best_of: dict[int, Neighbour] = {}
    for n in kept:  # kept is sorted, so the first face seen per person is its nearest
        votes[n.person_id] = votes.get(n.person_id, 0) + 1
        best_of.setdefault(n.person_id, n)
    winner = max(votes, key=lambda pid: (votes[pid], best_of[pid].similarity))
    w = best_of[winner]
    return Decision(winner, w.name, float(w.similarity), votes[winner], len(nearest))
