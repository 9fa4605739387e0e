"""Two FaceGate servers, one PostgreSQL: stateless servers behind a load balancer.

Each server has its own (empty) data directory, so whatever one knows of the other's writes came
through the database. One enrols, the other names at once; keys made by the CLI count on both;
one is SIGKILLed in the middle of a stream and the other goes on answering, and holds every
write the dead one acknowledged.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from conftest import b64


def _register(c: httpx.Client, name: str, images: list[str], allow_duplicate: bool | None = None) -> httpx.Response:
    body = {"user_name": name, "first_img": images[0], "sec_img": images[1], "third_img": images[2]}
    return c.post("/register", json=body if allow_duplicate is None else {**body, "allow_duplicate": allow_duplicate})


def test_two_servers_share_one_gallery_and_survive_the_loss_of_one(two_servers, tmp_path, astronaut_payloads, other_face):
    url, (a, b) = two_servers
    register, predict = astronaut_payloads
    other = np.ascontiguousarray(other_face)
    other_imgs = [b64(other), b64(other[:, ::-1]), b64(np.clip(other.astype(np.int16) + 10, 0, 255).astype(np.uint8))]
    stranger_probe = {"image": b64(other)}

    with a.client() as ca, b.client() as cb:
        assert cb.post("/predict", json=predict).json()["user_name"] == "unknown"
        r = ca.post("/register", json=register)
        assert r.status_code == 200, r.text
        # enrolled on A, named by B at once: no cache to go stale
        got = cb.post("/predict", json=predict).json()
        assert (got["user_name"], got["person_id"]) == ("Eileen Collins", r.json()["person_id"])
        assert ca.get("/healthz").json()["gallery"] == cb.get("/healthz").json()["gallery"]
        # a name taken through A is taken for B too
        assert _register(cb, "eileen collins", other_imgs).status_code == 409
        assert cb.post("/predict", json=stranger_probe).json()["user_name"] == "unknown"

    # A key made by the CLI (in the database) switches both servers to keys at once.
    env = {"PATH": "/usr/bin:/bin", "FACEGATE_GALLERY": url}
    made = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "keys", "create", "--role", "admin", "--data", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {key}"}
    for s in (a, b):
        with s.client() as c:
            assert c.get("/v1/people").status_code == 401
            assert c.get("/v1/people", headers=auth).status_code == 200

    # Stream registrations to A and predictions to both; SIGKILL A in the middle.
    acked: list[str] = []
    b_answers: list[tuple[float, int, str]] = []
    a_failures: list[str] = []
    stop = threading.Event()

    def write_to_a() -> None:
        with a.client(headers=auth) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = _register(c, f"stream-{i}", other_imgs, allow_duplicate=True)  # one face, many names: on purpose
                except httpx.TransportError:
                    return  # killed
                if r.status_code == 200:
                    acked.append(f"stream-{i}")
                elif r.status_code not in (429, 503):
                    a_failures.append(r.text)
                i += 1

    def read_from_b() -> None:
        with b.client(headers=auth) as c:
            while not stop.is_set():
                r = c.post("/predict", json=predict)
                b_answers.append((time.monotonic(), r.status_code, r.json().get("user_name", "")))

    threads = [threading.Thread(target=write_to_a), threading.Thread(target=read_from_b)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    a.proc.kill()  # SIGKILL: mid-stream, no shutdown
    a.proc.wait()
    killed_at = time.monotonic()
    deadline = killed_at + 60  # B keeps answering: wait for three of its answers after the kill
    while sum(x[0] > killed_at for x in b_answers) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(60)
    assert not a_failures, a_failures[:2]
    assert len(acked) >= 3
    after = [x for x in b_answers if x[0] > killed_at]
    assert len(after) >= 3, "B stopped answering when A died"
    assert all(status == 200 and name == "Eileen Collins" for _, status, name in b_answers)

    with b.client(headers=auth) as c:
        people = {p["name"]: p["face_count"] for p in c.get("/v1/people").json()["people"]}
        assert all(people.get(n) == 3 for n in acked), "a write acknowledged by A is missing on B"
        assert all(count == 3 for count in people.values()), f"half-written enrolment: {people}"
        exported = c.get("/v1/export").json()
        assert sorted(p["name"] for p in exported["people"]) == sorted(people)
        actions = [e["action"] for e in c.get("/v1/audit", params={"limit": 500}).json()["entries"]]
        assert actions.count("enroll") == len(people) and "key_create" in actions
        # B goes on writing alone
        gone = c.delete(f"/v1/people/{got['person_id']}")
        assert gone.status_code == 200
        assert c.post("/predict", json=predict).json()["user_name"] == "unknown"
