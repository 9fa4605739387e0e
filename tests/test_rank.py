"""facegate.rank: the reference ranking rule (top-k, threshold, majority vote, tie to the nearest face)."""

from __future__ import annotations

import random

import pytest

from facegate.rank import Decision, Neighbour, rank

NAMES = {1: "alice", 2: "bob", 3: "carol", 4: "dave", 5: "erin", 6: "frank"}


def nb(face_id: int, person_id: int, similarity: float) -> Neighbour:
    return Neighbour(face_id, person_id, NAMES[person_id], similarity)


def test_single_match_above_threshold():
    d = rank([nb(10, 1, 0.8)], threshold=0.5)
    assert d == Decision(1, "alice", 0.8, 1, 1)
    assert d.known


def test_majority_vote_beats_single_nearest_face():
    # bob owns the nearest face, but alice has more faces among the top 5.
    ns = [nb(1, 2, 0.95), nb(2, 1, 0.90), nb(3, 1, 0.85), nb(4, 1, 0.80), nb(5, 2, 0.60)]
    d = rank(ns, threshold=0.5, k=5)
    assert (d.person_id, d.name, d.votes, d.considered) == (1, "alice", 3, 5)
    assert d.similarity == pytest.approx(0.90)  # the winner's own nearest face, not the overall nearest


def test_below_threshold_faces_do_not_vote():
    # alice would win 3-2 on raw counts, but two of her faces are below the threshold.
    ns = [nb(1, 2, 0.90), nb(2, 2, 0.85), nb(3, 1, 0.80), nb(4, 1, 0.45), nb(5, 1, 0.40)]
    d = rank(ns, threshold=0.5, k=5)
    assert (d.person_id, d.votes, d.considered) == (2, 2, 5)
    assert d.similarity == pytest.approx(0.90)


def test_threshold_is_inclusive():
    d = rank([nb(1, 3, 0.5)], threshold=0.5)
    assert d.person_id == 3 and d.votes == 1


def test_tie_goes_to_identity_with_nearest_face():
    ns = [nb(1, 1, 0.70), nb(2, 2, 0.90), nb(3, 1, 0.65), nb(4, 2, 0.60)]
    d = rank(ns, threshold=0.5)
    assert (d.person_id, d.votes) == (2, 2)
    assert d.similarity == pytest.approx(0.90)


@pytest.mark.parametrize("seed", range(20))
def test_tie_break_does_not_depend_on_input_order(seed):
    ns = [nb(1, 1, 0.70), nb(2, 2, 0.90), nb(3, 1, 0.65), nb(4, 2, 0.60), nb(5, 3, 0.62)]
    random.Random(seed).shuffle(ns)
    d = rank(ns, threshold=0.5)
    assert (d.person_id, d.name, d.votes, d.considered) == (2, "bob", 2, 5)


def test_three_way_tie_single_votes():
    ns = [nb(1, 1, 0.61), nb(2, 2, 0.63), nb(3, 3, 0.62)]
    d = rank(ns, threshold=0.6)
    assert (d.person_id, d.votes) == (2, 1)


def test_nothing_above_threshold_is_unknown_with_nearest_similarity():
    ns = [nb(1, 1, 0.30), nb(2, 2, 0.42), nb(3, 1, 0.10)]
    d = rank(ns, threshold=0.5)
    assert d.person_id is None and d.name is None
    assert not d.known
    assert d.similarity == pytest.approx(0.42)
    assert (d.votes, d.considered) == (0, 3)


def test_unknown_with_negative_similarities():
    d = rank([nb(1, 1, -0.3), nb(2, 2, -0.1)], threshold=0.4)
    assert not d.known
    assert d.similarity == pytest.approx(-0.1)


def test_empty_is_unknown_with_zero_similarity():
    d = rank([], threshold=0.5)
    assert d == Decision(None, None, 0.0, 0, 0)
    assert not d.known
    assert isinstance(d.similarity, float)


def test_only_first_k_considered_sixth_neighbour_cannot_vote():
    # bob has 3 faces but his third is 6th-nearest: with k=5 it is 2-2 and the tie goes to alice
    # (nearest face 0.95); if the 6th voted, bob would win 3-2.
    ns = [nb(1, 1, 0.95), nb(2, 2, 0.90), nb(3, 1, 0.85), nb(4, 2, 0.80), nb(5, 3, 0.75), nb(6, 2, 0.70)]
    d = rank(ns, threshold=0.5, k=5)
    assert (d.person_id, d.votes, d.considered) == (1, 2, 5)
    d6 = rank(ns, threshold=0.5, k=6)
    assert (d6.person_id, d6.votes, d6.considered) == (2, 3, 6)


def test_top_k_is_by_similarity_not_input_order():
    # Unsorted input: the nearest 3 must be chosen by similarity.
    ns = [nb(1, 2, 0.55), nb(2, 2, 0.56), nb(3, 1, 0.90), nb(4, 1, 0.88), nb(5, 2, 0.57), nb(6, 1, 0.87)]
    d = rank(ns, threshold=0.5, k=3)
    assert (d.person_id, d.votes, d.considered) == (1, 3, 3)


def test_unknown_similarity_is_from_top_k_only():
    ns = [nb(1, 1, 0.2), nb(2, 2, 0.1), nb(3, 3, 0.05)]
    d = rank(list(reversed(ns)), threshold=0.5, k=1)
    assert not d.known
    assert d.similarity == pytest.approx(0.2)
    assert d.considered == 1


def test_k_one_is_nearest_neighbour():
    ns = [nb(1, 1, 0.70), nb(2, 2, 0.71), nb(3, 1, 0.69)]
    d = rank(ns, threshold=0.5, k=1)
    assert (d.person_id, d.votes, d.considered) == (2, 1, 1)


def test_fewer_neighbours_than_k():
    d = rank([nb(1, 4, 0.9), nb(2, 4, 0.8)], threshold=0.5, k=5)
    assert (d.person_id, d.name, d.votes, d.considered) == (4, "dave", 2, 2)


def test_winner_similarity_is_its_nearest_face_even_when_listed_later():
    ns = [nb(1, 1, 0.60), nb(2, 1, 0.92), nb(3, 1, 0.75)]
    d = rank(ns, threshold=0.5)
    assert d.similarity == pytest.approx(0.92)


def test_input_not_mutated():
    ns = [nb(1, 1, 0.3), nb(2, 2, 0.9), nb(3, 1, 0.6)]
    before = list(ns)
    rank(ns, threshold=0.5)
    assert ns == before


def test_similarity_is_plain_float():
    import numpy as np

    d = rank([Neighbour(1, 1, "alice", np.float32(0.75))], threshold=0.5)
    assert type(d.similarity) is float
    assert d.similarity == pytest.approx(0.75)
