"""Crash and concurrency safety of the gallery, proved against a real server process.

- SIGKILL in the middle of a stream of registrations and deletions from several clients, several
  times over: after each restart every acknowledged write is there, nothing unacknowledged is
  half-there, and the answers equal those of a fresh rebuild of the index.
- Registrations, deletions and predictions at once from many clients: the final gallery is exactly
  what the acknowledged operations say.

Both run on the embedded gallery and on PostgreSQL (``store``): there the server killed is the
FaceGate process, whose open transactions PostgreSQL rolls back.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import ServerProcess, b64

# The hnswlib index even for a small gallery, so its file (the derived data a crash can tear) is what
# answers; the default PQ index keeps no file (PostgreSQL ignores both settings).
ENV = {"FACEGATE_EXACT_SEARCH_MAX": "0", "FACEGATE_ANN_INDEX": "hnsw"}


def _variants(astronaut, other_face) -> list[np.ndarray]:
    """Photos of two real people in several lightings and crops."""
    out = []
    for base in (np.ascontiguousarray(astronaut), np.ascontiguousarray(other_face)):
        h, w = base.shape[:2]
        for gain in (0.7, 1.0, 1.3):
            img = np.clip(base.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            out += [img, np.ascontiguousarray(img[h // 16 :, w // 16 :])]
    return out


@pytest.fixture(scope="module")
def face_sources(astronaut, other_face) -> list[np.ndarray]:
    return _variants(astronaut, other_face)


@pytest.fixture(scope="module")
def face_images(face_sources) -> list[str]:
    """The probes (and, tweaked, the enrolment photos), base64."""
    return [b64(img) for img in face_sources]


_SERIALS = itertools.count(1)


def unique_photo(img: np.ndarray) -> str:
    """A photo no other enrolment uses (faint noise of its own): no two people ever share a vector
    exactly, so every search has one right order, which a rebuilt index must give too."""
    noise = np.random.default_rng(next(_SERIALS)).integers(-4, 5, img.shape)
    return b64(np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))


class Writer(threading.Thread):
    """One client streaming registrations and deletions, keeping a ledger of what was acknowledged."""

    def __init__(self, url: str, tag: str, images: list[np.ndarray], owned: dict[str, int], seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.tag, self.images, self.owned = url, tag, images, owned
        self.rng = random.Random(seed)
        self.acked: list[tuple[str, str]] = []  # (op, name)
        self.in_flight: tuple[str, str] | None = None
        self.stop = threading.Event()
        self.failure: str | None = None

    def _wait(self, r: httpx.Response) -> None:
        self.in_flight = None
        time.sleep(min(2.0, float(r.headers.get("retry-after", "1")) / 4))

    def run(self) -> None:
        i = 0
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                try:
                    if self.owned and self.rng.random() < 0.35:
                        name = self.rng.choice(sorted(self.owned))
                        self.in_flight = ("delete", name)
                        r = c.delete(f"/v1/people/{self.owned[name]}")
                        if r.status_code in (429, 503):  # busy or throttled: nothing was done; try again
                            self._wait(r)
                            continue
                        if r.status_code != 200:
                            self.failure = f"delete {name}: {r.status_code} {r.text}"
                            return
                        del self.owned[name]
                    else:
                        name = f"{self.tag}-{i}"
                        i += 1
                        imgs = [unique_photo(img) for img in self.rng.sample(self.images, 3)]
                        self.in_flight = ("register", name)
                        # The same few faces under many names, on purpose (allow_duplicate): this tests writes, not the duplicate check.
                        body = {"user_name": name, "first_img": imgs[0], "sec_img": imgs[1], "third_img": imgs[2], "allow_duplicate": True}
                        r = c.post("/register", json=body)
                        if r.status_code in (429, 503):  # busy or throttled: nothing was written; try again
                            self._wait(r)
                            continue
                        if r.status_code == 422 and r.json().get("code") == "poor_quality":
                            self.in_flight = None  # refused by the quality gate: nothing written, as acknowledged
                            continue
                        if r.status_code != 200:
                            self.failure = f"register {name}: {r.status_code} {r.text}"
                            return
                        self.owned[name] = r.json()["person_id"]
                    self.acked.append(self.in_flight)
                    self.in_flight = None
                except httpx.TransportError:  # the server was killed under us
                    return


def _gallery(url: str) -> dict[str, int]:
    with httpx.Client(base_url=url, timeout=30) as c:
        return {p["name"]: p["face_count"] for p in c.get("/v1/people").json()["people"]}


def _answers(url: str, probes: list[str]) -> list[tuple]:
    with httpx.Client(base_url=url, timeout=60) as c:
        out = []
        for p in probes:
            r = c.post("/predict", json={"image": p}).json()
            out.append((r["user_name"], r["person_id"], round(r["similarity"], 4)))
        return out


def test_sigkill_mid_stream_loses_nothing_acknowledged(store, face_images, face_sources):
    data = store.data_dir
    env = ENV | store.env
    rng = random.Random(7)
    present: dict[str, int] = {}  # what the gallery holds, as established after each restart
    ids: dict[str, int] = {}
    ops = kills = 0
    for rnd in range(4):
        server = ServerProcess(data, env=env).start()
        assert _gallery(server.url) == {n: 3 for n in present}
        writers = [Writer(server.url, f"r{rnd}w{k}", face_sources, {}, seed=rnd * 10 + k) for k in range(3)]
        # Hand the people enrolled so far to the writers, so they delete old ones too.
        for j, name in enumerate(sorted(present)):
            writers[j % 3].owned[name] = ids[name]
        for w in writers:
            w.start()
        time.sleep(rng.uniform(2.5, 5.0))
        server.proc.kill()  # SIGKILL: no shutdown, no flush
        server.proc.wait()
        kills += 1
        for w in writers:
            w.stop.set()
            w.join(30)
            assert w.failure is None, w.failure
        server.log.close()

        server = ServerProcess(data, env=env).start()
        found = _gallery(server.url)
        must, maybe = dict(present), set()
        for w in writers:
            ops += len(w.acked)
            for op, name in w.acked:
                if op == "register":
                    must[name] = 3
                else:
                    must.pop(name, None)
            if w.in_flight:
                maybe.add(w.in_flight[1])
        for name in maybe:
            must.pop(name, None)
        assert all(n in found for n in must), f"acknowledged but lost: {set(must) - set(found)}"
        assert set(found) <= set(must) | maybe, f"never acknowledged yet present: {set(found) - set(must) - maybe}"
        assert all(c == 3 for c in found.values()), f"half-registered: {found}"
        with httpx.Client(base_url=server.url, timeout=30) as c:
            ids = {p["name"]: p["id"] for p in c.get("/v1/people").json()["people"]}
        present = found
        before = _answers(server.url, face_images)
        server.stop()

    # The index as the crashes left it (loaded or rebuilt at start) answers like one rebuilt from scratch.
    for f in ("faces.hnsw", "faces.hnsw.json"):
        (data / f).unlink(missing_ok=True)
    fresh = ServerProcess(data, env=env).start()
    try:
        assert _gallery(fresh.url) == present
        assert _answers(fresh.url, face_images) == before
    finally:
        fresh.stop()
    print(f"\ncrash test ({store.kind}): {ops} acknowledged operations, {kills} SIGKILLs survived, {len(present)} people at the end")
    assert ops >= 8 and kills == 4


def test_concurrent_writes_and_reads_end_as_acknowledged(store, face_images, face_sources):
    # A generous latency budget: requests queue (bounded) rather than being refused, so all kinds overlap.
    server = ServerProcess(store.data_dir, env=ENV | store.env | {"FACEGATE_LATENCY_BUDGET_S": "5"}).start()
    try:
        stop = threading.Event()
        errors: list[str] = []

        def reader() -> int:
            n = 0
            with httpx.Client(base_url=server.url, timeout=60) as c:
                while not stop.is_set():
                    r = c.post("/predict", json={"image": face_images[n % len(face_images)]})
                    if r.status_code in (429, 503):  # as a well-behaved client: wait, then retry
                        time.sleep(float(r.headers["retry-after"]) / 4)
                        continue
                    if r.status_code != 200:
                        errors.append(r.text)
                    n += 1
            return n

        writers = [Writer(server.url, f"w{k}", face_sources, {}, seed=k) for k in range(6)]
        with ThreadPoolExecutor(4) as pool:
            reads = [pool.submit(reader) for _ in range(4)]
            try:
                for w in writers:
                    w.start()
                time.sleep(12)
                for w in writers:
                    w.stop.set()
                for w in writers:
                    w.join(60)
            finally:
                stop.set()
            n_reads = sum(f.result() for f in reads)
        for w in writers:
            assert not w.is_alive() and w.failure is None, w.failure
        assert not errors, errors[:3]
        expected: dict[str, int] = {}
        for w in writers:
            assert w.in_flight is None
            expected |= {name: 3 for name in w.owned}
        assert _gallery(server.url) == expected
        n_ops = sum(len(w.acked) for w in writers)
        assert n_ops >= 6 and any(op == "delete" for w in writers for op, _ in w.acked)
        assert n_reads >= 10
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/healthz").json()["gallery"]["faces"] == 3 * len(expected)
        print(f"\nconcurrency test: {n_ops} writes and {n_reads} predictions at once; gallery as acknowledged")
    finally:
        server.stop()
