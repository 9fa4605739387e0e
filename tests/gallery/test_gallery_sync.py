"""Several processes on one data directory: each catches up with the others' writes from the change
log, in proportion to the change, not to the gallery (two connections here stand for two processes)."""

from __future__ import annotations

import numpy as np

from facegate.gallery.sqlite import CHANGE_LOG_KEEP, Gallery, NewFace

DIM = 16


def _faces(rng: np.random.Generator, n: int) -> list[NewFace]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [NewFace(x) for x in v]


def _open(path, **kw) -> Gallery:
    return Gallery(path, "m", DIM, save_delay_s=0.05, **kw)


def test_other_process_writes_are_applied_incrementally(tmp_path):
    rng = np.random.default_rng(0)
    a, b = _open(tmp_path, exact_search_max=0), _open(tmp_path, exact_search_max=0)
    try:
        people = {}
        for i in range(20):
            faces = _faces(rng, 3)
            people[a.add_person(f"p{i}", faces, "m").id] = faces
        loads = b.full_loads
        probe = people[7][1].embedding
        hit = b.search(probe, 1)[0]  # b catches up: 20 enrolments from the log, no reload
        assert (hit.name, round(hit.similarity, 5)) == ("p6", 1.0)
        assert b.stats()[:2] == (20, 60) and b.full_loads == loads

        gone = a.find_person("p6").id
        a.delete_person(gone)
        a.add_faces(a.find_person("p3").id, _faces(rng, 2), "m")
        assert all(n.person_id != gone for n in b.search(probe, 5))
        assert b.stats()[:2] == (19, 59) and b.full_loads == loads

        # and the other way round, with writes interleaved: a's own write lands after b's
        b.add_person("from b", _faces(rng, 1), "m")
        a.add_person("from a", _faces(rng, 1), "m")
        assert a.stats()[:2] == b.stats()[:2] == (21, 61)
        assert a.full_loads == 1 and b.full_loads == loads
        assert {p.name for p in a.list_people()} == {p.name for p in b.list_people()}
    finally:
        a.close()
        b.close()


def test_a_gap_in_the_log_means_a_full_reload(tmp_path):
    rng = np.random.default_rng(1)
    a, b = _open(tmp_path), _open(tmp_path)
    try:
        a.add_person("first", _faces(rng, 1), "m")
        assert b.stats()[0] == 1
        loads = b.full_loads
        for i in range(CHANGE_LOG_KEEP + 5):  # more writes than the log keeps
            a.add_faces(a.find_person("first").id, _faces(rng, 1), "m")
        assert b.stats()[:2] == (1, CHANGE_LOG_KEEP + 6)
        assert b.full_loads == loads + 1
    finally:
        a.close()
        b.close()


def test_reembedding_elsewhere_is_a_full_reload_not_a_patch(tmp_path):
    rng = np.random.default_rng(2)
    a, b = _open(tmp_path), _open(tmp_path)
    try:
        p = a.add_person("x", _faces(rng, 2), "m")
        assert b.stats()[1] == 2
        loads = b.full_loads
        new = {f.id: v.embedding for f, v in zip(a.get_person(p.id).faces, _faces(rng, 2))}
        a.reembed("m", DIM, new)  # same model id, new vectors: no change-log entry
        hit = b.search(next(iter(new.values())), 1)[0]
        assert round(hit.similarity, 5) == 1.0 and b.full_loads == loads + 1
    finally:
        a.close()
        b.close()
