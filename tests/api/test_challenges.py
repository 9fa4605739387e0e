"""The active liveness challenge over HTTP, against real `facegate serve` processes on loopback.

Sequences are built from real lfw-dev photos of one person, looked at by eye (tests/vision/test_challenge.py
says what each shows): Paul Bremer facing the camera (_0004, _0007), turned to his own left (_0003) and to
his own right (_0002). The challenge's actions are random: a test asks for challenges until it gets the
pair it has frames for (a third of them). The passive check's decision on the three MiniFASNet samples
over HTTP is tests/api/test_liveness_api.py's. Skipped without ../shared.
"""

from __future__ import annotations

import base64
import time

import cv2
import numpy as np
import pytest

from conftest import LFW, ServerProcess

pytestmark = pytest.mark.skipif(not LFW.is_dir(), reason=f"lfw-dev photos not found at {LFW}")

TTL_S = 4.0
NEUTRAL = ("Paul_Bremer_0004", "Paul_Bremer_0007")
TURNS = {"turn_left": "Paul_Bremer_0003", "turn_right": "Paul_Bremer_0002"}
ENROL = ("Paul_Bremer_0001", "Paul_Bremer_0005")


def jpeg(name: str, quality: int | None = None) -> bytes:
    """The photo's own bytes, or re-encoded (fresh bytes: the server remembers frames it was sent)."""
    raw = (LFW / name.rsplit("_", 1)[0] / f"{name}.jpg").read_bytes()
    if quality is None:
        return raw
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def enc(b: bytes) -> str:
    return base64.b64encode(b).decode()


def challenge(c, actions: set[str] | None = None) -> dict:
    """A fresh challenge, with exactly ``actions`` when given (asked again until it comes)."""
    for _ in range(60):
        r = c.post("/v1/challenges")
        assert r.status_code == 201, r.text
        body = r.json()
        if actions is None or set(body["actions"]) == actions:
            return body
    raise AssertionError(f"no challenge with {actions} in 60 tries")


def turns_answer(quality: int | None, **swap: bytes) -> dict:
    """Neutral, turned left, turned right, of Paul Bremer (JSON body); ``swap`` replaces frames."""
    frames = {a: jpeg(n, quality) for a, n in TURNS.items()} | {k: v for k, v in swap.items() if k in TURNS}
    neutral = [swap.get(f"neutral{i}", jpeg(n, quality)) for i, n in enumerate(NEUTRAL)]
    return {"neutral": [enc(b) for b in neutral], "frames": {a: enc(b) for a, b in frames.items()}}


def enrol_paul(c) -> int:
    r = c.post("/v1/people", json={"name": "Paul Bremer", "images": [enc(jpeg(n)) for n in ENROL]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """liveness off (the default): the challenge routes still work; the expiry shortened for the test."""
    s = ServerProcess(tmp_path_factory.mktemp("chal") / "data", env={"FACEGATE_CHALLENGE_TTL_S": str(TTL_S)}).start()
    with s.client() as c:
        enrol_paul(c)
    yield s
    s.stop()


def test_new_challenge(srv):
    with srv.client() as c:
        body = challenge(c)
    assert len(body["actions"]) == 2 and len(set(body["actions"])) == 2
    assert set(body["actions"]) <= {"blink", "turn_left", "turn_right"}
    assert 0 < body["expires_in_s"] <= TTL_S and (body["expires_at"].endswith("Z") or "+00:00" in body["expires_at"])
    assert len(body["id"]) >= 20 and len(body["prompts"]) == 2


def test_real_sequence_passes_and_names_once(srv):
    """Neutral, head turned left, head turned right (real photos of one person): passed, named; the same
    challenge answered again is 409; the same frames with a new challenge are refused as a replay."""
    with srv.client() as c:
        ch = challenge(c, {"turn_left", "turn_right"})
        body = turns_answer(None)
        r = c.post(f"/v1/challenges/{ch['id']}/answer", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["challenge"]["passed"] is True, got["challenge"]
        assert got["challenge"]["reasons"] == [] and got["challenge"]["actions"] == ch["actions"]
        assert [f["frame"] for f in got["challenge"]["frames"]][:2] == ["neutral[0]", "neutral[1]"]
        yaw = {f["frame"]: f["yaw"] for f in got["challenge"]["frames"]}
        assert yaw["frames.turn_left"] <= -20 and yaw["frames.turn_right"] >= 20
        (face,) = got["faces"]
        assert face["status"] == "recognized" and face["name"] == "Paul Bremer", face

        again = c.post(f"/v1/challenges/{ch['id']}/answer", json=body)
        assert again.status_code == 409 and again.json()["code"] == "challenge_used", again.text

        fresh = challenge(c, {"turn_left", "turn_right"})
        replay = c.post(f"/v1/challenges/{fresh['id']}/answer", json=body).json()
        assert replay["challenge"]["passed"] is False and replay["faces"] == []
        assert "neutral[0]: the same frame was sent in an earlier answer (a replay)" in replay["challenge"]["reasons"]


def test_multipart_answer_and_wrong_action(srv):
    """The turn-right photo sent as the turn to the left fails, and says so; multipart works as JSON does."""
    with srv.client() as c:
        ch = challenge(c, {"turn_left", "turn_right"})
        files = [("neutral", ("n0.jpg", jpeg(NEUTRAL[0], 93), "image/jpeg")), ("neutral", ("n1.jpg", jpeg(NEUTRAL[1], 93), "image/jpeg"))]
        files += [("turn_left", ("l.jpg", jpeg(TURNS["turn_right"], 93), "image/jpeg")), ("turn_right", ("r.jpg", jpeg(TURNS["turn_right"], 94), "image/jpeg"))]
        r = c.post(f"/v1/challenges/{ch['id']}/answer", files=files)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["challenge"]["passed"] is False
        assert any(x.startswith("turn_left: head turned the other way (to the person's right") for x in got["challenge"]["reasons"]), got
        assert not any(x.startswith("turn_right") for x in got["challenge"]["reasons"])
        (face,) = got["faces"]
        assert face["status"] == "challenge_failed" and face["name"] is None and face["person_id"] is None


def test_another_person_in_one_frame(srv):
    with srv.client() as c:
        ch = challenge(c, {"turn_left", "turn_right"})
        body = turns_answer(92, neutral1=jpeg("Tim_Duncan_0001", 92))
        got = c.post(f"/v1/challenges/{ch['id']}/answer", json=body).json()
    assert got["challenge"]["passed"] is False
    assert any(x.startswith("neutral[1]: not the same person as in neutral[0]") for x in got["challenge"]["reasons"]), got["challenge"]
    assert got["faces"][0]["name"] is None


def test_still_photo_fails_every_action(srv):
    """One photo in every frame (a still held to the camera): no action shows."""
    with srv.client() as c:
        ch = challenge(c)
        still = jpeg(NEUTRAL[0], 91)
        body = {"neutral": [enc(still)], "frames": {a: enc(jpeg(NEUTRAL[0], 90 - i)) for i, a in enumerate(ch["actions"])}}
        got = c.post(f"/v1/challenges/{ch['id']}/answer", json=body).json()
    reasons = got["challenge"]["reasons"]
    assert got["challenge"]["passed"] is False and len(reasons) == 2, reasons
    for a, why in zip(ch["actions"], reasons):
        assert why.startswith(f"{a}: eyes not closed" if a == "blink" else f"{a}: head not turned"), reasons
    assert got["faces"][0]["status"] == "challenge_failed"


def test_bad_answers_change_nothing_then_expiry(srv):
    """A malformed answer is 422 and leaves the challenge open; an unknown id is 404; a late one 410."""
    with srv.client() as c:
        ch = challenge(c)
        bad = c.post(f"/v1/challenges/{ch['id']}/answer", json={"frames": {}})
        assert bad.status_code == 422 and bad.json()["field"] == "neutral", bad.text
        bad = c.post(f"/v1/challenges/{ch['id']}/answer", json={"neutral": ["not base64!"], "frames": {}})
        assert bad.status_code == 422, bad.text
        bad = c.post(f"/v1/challenges/{ch['id']}/answer", json={"neutral": [enc(jpeg(NEUTRAL[0], 89))] * 3, "frames": {}})
        assert bad.status_code == 422, bad.text
        assert c.post("/v1/challenges/nope/answer", json={"neutral": [enc(jpeg(NEUTRAL[0], 88))], "frames": {}}).status_code == 404
        time.sleep(TTL_S + 0.5)
        late = c.post(f"/v1/challenges/{ch['id']}/answer", json={"neutral": [enc(jpeg(NEUTRAL[0], 87))], "frames": {}})
        assert late.status_code == 410 and late.json()["code"] == "challenge_expired", late.text


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """liveness = "challenge" and enroll_liveness on, through the environment."""
    s = ServerProcess(
        tmp_path_factory.mktemp("chal2") / "data", env={"FACEGATE_LIVENESS": "challenge", "FACEGATE_ENROLL_LIVENESS": "true"}
    ).start()
    yield s
    s.stop()


def test_challenge_mode_names_only_through_a_challenge(strict):
    with strict.client() as c:
        images = [enc(jpeg(n)) for n in ENROL]
        r = c.post("/v1/people", json={"name": "Paul Bremer", "images": images})
        assert r.status_code == 403 and r.json()["code"] == "challenge_required", r.text
        ref = {"user_name": "Paul Bremer", "first_img": images[0], "sec_img": images[1], "third_img": images[0]}
        r = c.post("/register", json=ref)
        assert r.status_code == 403 and r.json()["code"] == "challenge_required", r.text

        ch = challenge(c, {"turn_left", "turn_right"})
        passed = c.post(f"/v1/challenges/{ch['id']}/answer", json=turns_answer(None)).json()
        assert passed["challenge"]["passed"], passed["challenge"]
        assert passed["faces"][0]["status"] == "unknown"  # nobody enrolled yet
        other = c.post("/v1/people", json={"name": "Tim Duncan", "images": [enc(jpeg("Tim_Duncan_0001"))], "challenge_id": ch["id"]})
        assert other.status_code == 403 and "not the face that passed the challenge" in other.json()["detail"], other.text
        ch = challenge(c, {"turn_left", "turn_right"})
        assert c.post(f"/v1/challenges/{ch['id']}/answer", json=turns_answer(96)).json()["challenge"]["passed"]
        r = c.post("/v1/people", json={"name": "Paul Bremer", "images": images, "challenge_id": ch["id"]})
        assert r.status_code == 201, r.text
        r = c.post("/v1/people", json={"name": "Paul Bremer 2", "images": images, "challenge_id": ch["id"]})
        assert r.status_code == 403, r.text  # spent

        # Identification without a challenge never names, even an enrolled face.
        r = c.post("/v1/identify", json={"image": enc(jpeg(NEUTRAL[0]))}).json()
        assert [f["status"] for f in r["faces"]][:1] == ["challenge_required"] and r["faces"][0]["name"] is None, r
        p = c.post("/predict", json={"image": enc(jpeg(NEUTRAL[0])), "file_name": "x.jpg"}).json()
        assert p["status"] == "challenge_required" and p["user_name"] == "unknown", p
        ch = challenge(c, {"turn_left", "turn_right"})
        got = c.post(f"/v1/challenges/{ch['id']}/answer", json=turns_answer(95)).json()
        assert got["faces"][0]["name"] == "Paul Bremer" and got["faces"][0]["status"] == "recognized", got


def test_camera_client_runs_the_challenge_and_a_still_video_fails(strict, tmp_path):
    """`facegate client --video` against a liveness = "challenge" server (found in /healthz): the client
    runs a challenge with the mediapipe landmark model on the video's frames; a video of one still photo
    fails it, each action said, and is never named."""
    import json
    import subprocess
    import sys

    img = cv2.imread(str(LFW / "Paul_Bremer" / "Paul_Bremer_0004.jpg"))
    frame = cv2.copyMakeBorder(cv2.resize(img, (400, 400)), 40, 40, 120, 120, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    video = tmp_path / "still.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (frame.shape[1], frame.shape[0]))
    for _ in range(60):
        w.write(frame)
    w.release()
    r = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "client", "--server", strict.url, "--video", str(video), "--json", "--max-seconds", "40"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    prompts = [e["step"] for e in events if e["event"] == "challenge"]
    results = [e for e in events if e["event"] == "challenge_result"]
    assert results, r.stdout[-2000:]
    first = results[0]
    assert prompts[0] == "neutral" and set(first["challenge"]["actions"]) <= set(prompts), prompts
    assert first["challenge"]["passed"] is False
    for action in first["challenge"]["actions"]:
        assert any(x.startswith(f"{action}:") for x in first["challenge"]["reasons"]), first["challenge"]
    assert all(f["name"] is None for res in results for f in res["faces"])
    assert not any(e["event"] == "result" for e in events)  # no /predict answers: the challenge replaced them


class Pinned:
    """One keep-alive connection per server process: each request goes where it is told (checked by x-facegate-worker)."""

    def __init__(self, url: str, want: int = 2) -> None:
        import httpx

        self.by_pid: dict[str, httpx.Client] = {}
        deadline = time.monotonic() + 120  # the second process may still be loading its models
        while time.monotonic() < deadline:  # fresh connections until the kernel has handed them to every process
            c = httpx.Client(base_url=url, timeout=60)
            pid = c.get("/healthz").headers["x-facegate-worker"]
            if pid in self.by_pid:
                c.close()
                time.sleep(0.1)
            else:
                self.by_pid[pid] = c
            if len(self.by_pid) == want:
                return
        raise AssertionError(f"connections reached only processes {list(self.by_pid)}")

    def post(self, pid: str, path: str, **kw):
        import httpx

        c = self.by_pid[pid]
        for _ in range(200):  # an idle connection closed by the server (keep-alive timeout): connect again to that process
            if c.get("/healthz").headers["x-facegate-worker"] == pid:
                break
            c.close()
            c = self.by_pid[pid] = httpx.Client(base_url=str(c.base_url), timeout=60)
        r = c.post(path, **kw)
        assert r.headers["x-facegate-worker"] == pid, (pid, r.headers)
        return r

    def close(self) -> None:
        for c in self.by_pid.values():
            c.close()


def cross_process_flow(post, a, b) -> None:
    """A challenge asked of ``a`` is answered on ``b`` and passes; a second answer is 409 on either; the
    enrolment it allows is spent on ``a``, once; its frames are a replay to both. ``post(where, path, **kw)``."""
    for _ in range(60):
        r = post(a, "/v1/challenges")
        assert r.status_code == 201, r.text
        ch = r.json()
        if set(ch["actions"]) == {"turn_left", "turn_right"}:
            break
    body = turns_answer(None)
    r = post(b, f"/v1/challenges/{ch['id']}/answer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["challenge"]["passed"] is True, r.json()["challenge"]
    for where in (a, b):
        again = post(where, f"/v1/challenges/{ch['id']}/answer", json=body)
        assert again.status_code == 409 and again.json()["code"] == "challenge_used", again.text

    images = [enc(jpeg(n)) for n in ENROL]
    r = post(a, "/v1/people", json={"name": "Paul Bremer", "images": images, "challenge_id": ch["id"]})
    assert r.status_code == 201, r.text  # passed on b, spent on a
    r = post(b, "/v1/people", json={"name": "Paul Bremer 2", "images": images, "challenge_id": ch["id"]})
    assert r.status_code == 403 and r.json()["code"] == "challenge_required", r.text

    fresh = post(b, "/v1/challenges").json()
    replay = post(a, f"/v1/challenges/{fresh['id']}/answer", json=body).json()
    assert replay["challenge"]["passed"] is False and replay["faces"] == []
    assert "neutral[0]: the same frame was sent in an earlier answer (a replay)" in replay["challenge"]["reasons"]


def test_two_worker_processes_share_challenges(tmp_path):
    """`facegate serve --workers 2` on one SQLite gallery: each step of cross_process_flow on the process it
    names (x-facegate-worker checked on every answer). With challenges in each process's memory the
    answer on the other process was a 404."""
    s = ServerProcess(tmp_path / "data", "--workers", "2", env={"FACEGATE_ENROLL_LIVENESS": "true"}).start()
    pins = None
    try:
        pins = Pinned(s.url)
        cross_process_flow(pins.post, *pins.by_pid)
    finally:
        if pins is not None:
            pins.close()
        s.stop()


def test_two_servers_on_one_postgres_share_challenges(tmp_path, pg_database):
    """Two `facegate serve` on one PostgreSQL gallery: a challenge asked of one is answered by the other, once."""
    url = pg_database()
    env = {"FACEGATE_ENROLL_LIVENESS": "true"}
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    one = ServerProcess(tmp_path / "one" / "data", "--gallery", url, env=env).start()
    two = None
    try:
        two = ServerProcess(tmp_path / "two" / "data", "--gallery", url, env=env).start()
        with one.client() as c1, two.client() as c2:
            cross_process_flow(lambda c, path, **kw: c.post(path, **kw), c1, c2)
    finally:
        one.stop()
        if two is not None:
            two.stop()
