"""`facegate client` against real `facegate serve` processes on loopback, fed video files made from
real photos: names, the request rate the server sees, a restart, and a server answering 503."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from conftest import MetricsPoller, free_port, predict_count

from facegate.clients.camera import retry_after_seconds

NAME = "Eileen Collins"
FPS = 10


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """An MP4 (mp4v) of RGB frames, read back to make sure OpenCV can play it."""
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert out.isOpened(), "OpenCV cannot write mp4v here"
    for f in frames:
        out.write(np.ascontiguousarray(f[:, :, ::-1]))
    out.release()
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert n == len(frames), f"wrote {len(frames)} frames, OpenCV reads {n}"
    return path


def client_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}


def run_client(*args: str, timeout: float = 180) -> tuple[int, list[dict], str]:
    """`facegate client ... --json` to its end: exit code, JSON events, stderr."""
    p = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "client", *args, "--json"],
        capture_output=True, text=True, timeout=timeout, env=client_env(),
    )
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return p.returncode, events, p.stderr


class ClientProcess:
    """`facegate client ... --json` in the background, its events collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facegate.cli", "client", *args, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env(),
        )
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def wait_for(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for e in self.events[seen:]:
                if predicate(e):
                    return e
            seen = len(self.events)
            if self.proc.poll() is not None and seen == len(self.events):
                break
            time.sleep(0.1)
        raise AssertionError(f"client never reported {what}; events: {self.events[-10:]}; stderr: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()[-2000:]

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_retry_after_header_forms():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) == 1.0
    assert retry_after_seconds("soon", default=2.0) == 2.0
    assert 0.0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # a date in the past: no wait


def test_client_registers_and_names_people_within_two_requests_per_second(
    start_server, tmp_path, astronaut_frame, other_frame
):
    # A slow first /register on a cold model must not make admission control refuse what follows.
    server = start_server(None, env={"FACEGATE_LATENCY_BUDGET_S": "10"})
    enrol_video = write_video(tmp_path / "enrol.mp4", [astronaut_frame] * (3 * FPS))
    rc, events, err = run_client("register", NAME, "--server", server.url, "--video", str(enrol_video), "--gap", "0.5")
    assert rc == 0, err
    assert [e["photo"] for e in events if e["event"] == "captured"] == [1, 2, 3]
    done = [e for e in events if e["event"] == "registered"]
    assert done and done[0]["user_name"] == NAME and done[0]["faces"] == 3
    with server.client() as http:
        people = http.get("/v1/people").json()["people"]
    assert [(p["name"], p["face_count"]) for p in people] == [(NAME, 3)]

    # The same name again: the server's 409 and its reason reach the user; exit code 1.
    rc, events, err = run_client("register", NAME, "--server", server.url, "--video", str(enrol_video), "--gap", "0")
    refused = [e for e in events if e["event"] == "refused"]
    assert rc == 1 and refused and refused[0]["status"] == 409, (events, err)
    assert NAME.lower() in refused[0]["detail"].lower() or "already" in refused[0]["detail"].lower()

    # Photos, read as a person would (rich text, not --json): every face named, or "unknown".
    photo = tmp_path / "two-people.jpg"
    cv2.imwrite(str(photo), np.hstack([astronaut_frame, other_frame])[:, :, ::-1])
    p = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "client", "--server", server.url, "--image", str(photo), "--image", str(enrol_video)],
        capture_output=True, text=True, timeout=120, env=client_env(),
    )
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if "two-people.jpg face" in line]
    assert len(lines) == 2 and any(NAME in line for line in lines) and any("unknown" in line for line in lines), p.stdout
    assert "enrol.mp4" in p.stderr and "not a decodable image" in p.stderr  # reported; the run went on

    # 8 s of the enrolled person, then 8 s of somebody else, played at 10 fps.
    split = 8 * FPS
    video = write_video(tmp_path / "two-people.mp4", [astronaut_frame] * split + [other_frame] * split)
    with server.client() as http:
        before = predict_count(http.get("/metrics").text)
    with MetricsPoller(server.url) as poller:
        t0 = time.monotonic()
        rc, events, err = run_client("--server", server.url, "--video", str(video))
        elapsed = time.monotonic() - t0
    assert rc == 0, err
    results = [e for e in events if e["event"] == "result"]
    frame_of = lambda e: int(e["source"].split()[-1])  # noqa: E731
    first = [e for e in results if frame_of(e) < split]
    second = [e for e in results if frame_of(e) >= split]
    print(f"\nclient: {len(results)} answers in {elapsed:.1f} s; enrolled person: "
          f"{[(e['user_name'], round(e['similarity'], 2)) for e in first]}; stranger: "
          f"{[(e['user_name'], round(e['similarity'], 2)) for e in second]}")
    assert len(first) >= 5 and len(second) >= 5, results
    assert {(e["user_name"], e["status"]) for e in first} == {(NAME, "recognized")}
    assert {(e["user_name"], e["status"]) for e in second} == {("unknown", "unknown")}

    # Counted by the server: every request the client made, and never more than 2 within a second.
    with server.client() as http:
        served = predict_count(http.get("/metrics").text) - before
    sent = len(results) + sum(e["event"] in ("error", "unreachable") for e in events)
    assert served == sent, (served, sent)
    most = poller.most_within(1.0)
    print(f"server saw {served} /predict in {elapsed:.1f} s ({served / elapsed:.2f}/s); "
          f"most within any second: {most} ({len(poller.samples)} samples of /metrics)")
    assert len(poller.samples) > 100
    assert most <= 2


def _serve(port: int, data_dir: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """`facegate serve` on a given port (a restart must come back where the client expects it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "facegate.cli", "serve", "--port", str(port), "--data", str(data_dir)],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=client_env() | (env or {}),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_client_waits_for_a_restarted_server(tmp_path, astronaut_frame, astronaut_payloads):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data, log = tmp_path / "data", tmp_path / "server.log"
    server = _serve(port, data, log)
    client = None
    try:
        httpx.post(url + "/register", json=astronaut_payloads[0], timeout=60).raise_for_status()
        video = write_video(tmp_path / "long.mp4", [astronaut_frame] * (90 * 5), fps=5)
        client = ClientProcess("--server", url, "--video", str(video))
        client.wait_for(lambda e: e["event"] == "result" and e["user_name"] == NAME, 60, "a first recognition")

        _stop(server)
        down = client.wait_for(lambda e: e["event"] == "unreachable", 30, "the server going away")
        time.sleep(2)  # the client keeps trying (with backoff) while nothing listens
        server = _serve(port, data, log)
        back = client.wait_for(lambda e: e["event"] == "reconnected", 60, "reconnecting")
        after = client.wait_for(lambda e: e["event"] == "result" and e["time"] >= back["time"], 30, "a result after the restart")
        assert after["user_name"] == NAME  # the restarted server still knows her: the gallery persisted
        retries = [e for e in client.events if e["event"] == "unreachable"]
        gaps = [b["time"] - a["time"] for a, b in zip(retries, retries[1:])]
        print(f"\nclient retried {len(retries)} times while the server was down "
              f"(gaps {[round(g, 1) for g in gaps]} s), back {back['time'] - down['time']:.1f} s after the first failure")
        assert client.proc.poll() is None  # it never gave up
    finally:
        if client:
            client.kill()
        _stop(server)


def _busy_photo(frame: np.ndarray) -> bytes:
    """A photo cheap to send and dear to answer: 16 faces in a 1600x1600 JPEG (about 0.5 MB), so a
    caller posting it in a loop keeps the server's model busy nearly all the time."""
    tile = cv2.resize(np.ascontiguousarray(frame), (400, 300))
    grid = np.vstack([np.hstack([tile] * 4)] * 4)
    return cv2.imencode(".jpg", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def test_client_honours_retry_after_from_a_busy_server(start_server, tmp_path, astronaut_frame, astronaut_payloads):
    # One request in progress at most, and one nearly always in progress: two background callers keep
    # the server identifying 16 faces at a time (/v1/identify), so the real admission control refuses
    # /predict with 503 and Retry-After: 1. The window between two busy calls (a new body being read)
    # is short but real, so a rare /predict may get through; what is checked is what the client does
    # after each 503, not that every request was refused.
    # Every caller here is 127.0.0.1: the per-address rate limit (429) would answer before admission does.
    server = start_server(None, env={"FACEGATE_MAX_PENDING": "1", "FACEGATE_RATE_LIMIT_PER_IP": ""})
    with server.client() as http:
        http.post("/register", json=astronaut_payloads[0]).raise_for_status()
    photo = _busy_photo(astronaut_frame)
    stop = threading.Event()
    busy_calls: list[tuple[int, float]] = []

    def keep_busy() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post("/v1/identify", files={"image": ("busy.jpg", photo, "image/jpeg")})
                busy_calls.append((r.status_code, time.monotonic() - t0))
                if r.status_code == 503:
                    time.sleep(0.01)  # refused: the other caller holds the server

    busy_threads = [threading.Thread(target=keep_busy, daemon=True) for _ in range(2)]
    for t in busy_threads:
        t.start()
    video = write_video(tmp_path / "busy.mp4", [astronaut_frame] * (6 * FPS))
    try:
        with server.client() as http:  # the server is busy: a direct call is refused, with the reason
            deadline = time.monotonic() + 30
            while (r := http.post("/predict", json=astronaut_payloads[1])).status_code != 503:
                assert time.monotonic() < deadline, "the server never became busy"
                time.sleep(0.05)
            assert r.headers["retry-after"] == "1" and "capacity" in r.json()["detail"]
        with MetricsPoller(server.url) as poller:
            rc, events, err = run_client("--server", server.url, "--video", str(video))
    finally:
        stop.set()
        for t in busy_threads:
            t.join(120)
    assert rc == 0, err
    answers = [e for e in events if e["event"] in ("result", "error")]
    busy = [e for e in answers if e["event"] == "error" and e["status"] == 503]
    worked = [s for s, _ in busy_calls if s == 200]
    print(f"\nbusy server: {len(worked)} busy /v1/identify calls answered; the client had {len(busy)} "
          f"refusals and {len(answers) - len(busy)} answers in 6 s; most /predict within any second: {poller.most_within(1.0)}")
    assert len(busy) >= 3 and len(busy) >= 2 * (len(answers) - len(busy))  # the server was busy for the client too
    assert "capacity" in busy[0]["detail"]  # the server's reason is shown
    # Between two refusals the client only waited (a refusal takes milliseconds): Retry-After 1 s, not 0.5 s.
    after_refusal = [b["time"] - a["time"] for a, b in zip(answers, answers[1:]) if a in busy and b in busy]
    assert after_refusal and min(after_refusal) >= 0.95
    assert poller.most_within(1.0) <= 2  # and, whatever got through, never more than the client's own 2 per second
