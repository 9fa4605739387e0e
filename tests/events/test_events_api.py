"""The event log over real HTTP (`facegate serve` on loopback): who may read it (viewer and admin,
never a client key), a test event through the hub with its door decision, the crop (audited), bad
input answered 4xx with JSON, the live stream (SSE) with keep-alive and Last-Event-ID, and a deleted
person's events gone."""

from __future__ import annotations

import json
import queue
import threading

import httpx
import pytest

from conftest import b64, facegate


def _key(data_dir, role: str) -> str:
    made = facegate("keys", "create", "--role", role, "--data", data_dir, timeout=120)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server with admin, viewer and client keys, and a door rule letting 'Ada Events' in."""
    from conftest import ServerProcess

    data = tmp_path_factory.mktemp("events") / "data"
    keys = {role: _key(data, role) for role in ("admin", "viewer", "client")}
    env = {"FACEGATE_ACCESS": json.dumps({"door": {"allow": ["ada events"]}}), "FACEGATE_EVENTS_KEEPALIVE_S": "0.5"}
    s = ServerProcess(data, env=env).start()
    yield s, {r: {"Authorization": f"Bearer {k}"} for r, k in keys.items()}
    s.stop()


def _wait_event(c: httpx.Client, h: dict, event_id: str) -> dict:
    for _ in range(200):
        r = c.get(f"/v1/events/{event_id}", headers=h)
        if r.status_code == 200:
            return r.json()
        threading.Event().wait(0.05)
    raise AssertionError(f"event {event_id} never stored: {r.text}")


class SSEReader:
    """Reads /v1/events/stream in a thread; lines go to a queue."""

    def __init__(self, url: str, headers: dict) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.client = httpx.Client(timeout=httpx.Timeout(30, read=30))
        self._ready = threading.Event()
        self.status = None
        self._t = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._t.start()
        assert self._ready.wait(30)

    def _run(self, url, headers) -> None:
        try:
            with self.client.stream("GET", url, headers=headers) as r:
                self.status = r.status_code
                self._ready.set()
                for line in r.iter_lines():
                    self.lines.put(line)
        except httpx.HTTPError:
            pass
        finally:
            self._ready.set()

    def events(self, n: int, timeout: float = 20) -> tuple[list[dict], list[str]]:
        """The next ``n`` events (and every line read meanwhile)."""
        got, lines, ev_id = [], [], None
        while len(got) < n:
            line = self.lines.get(timeout=timeout)
            lines.append(line)
            if line.startswith("id: "):
                ev_id = int(line[4:])
            if line.startswith("data: "):
                d = json.loads(line[6:])
                assert d["seq"] == ev_id
                got.append(d)
        return got, lines

    def close(self) -> None:
        self.client.close()


def test_roles_test_event_decision_crop_and_deletion(keyed, other_face):
    s, h = keyed
    with s.client() as c:
        made = c.post("/v1/people", json={"name": "Ada Events", "images": [b64(other_face)]}, headers=h["admin"])
        assert made.status_code == 201, made.text
        pid = made.json()["id"]
        body = {"camera": "door", "status": "recognized", "person_id": pid}
        assert c.post("/v1/events/test", json=body).status_code == 401
        assert c.post("/v1/events/test", json=body, headers=h["client"]).status_code == 403
        assert c.post("/v1/events/test", json=body, headers=h["viewer"]).status_code == 403  # viewers only read
        r = c.post("/v1/events/test", json=body, headers=h["admin"])
        assert r.status_code == 202, r.text
        ev = _wait_event(c, h["viewer"], r.json()["id"])
        assert (ev["name"], ev["person_id"], ev["status"], ev["decision"]) == ("Ada Events", pid, "recognized", "granted")
        assert ev["has_crop"] and ev["crop_url"] == f"/v1/events/{ev['id']}/crop"
        stranger = c.post("/v1/events/test", json={"camera": "door"}, headers=h["admin"]).json()
        assert _wait_event(c, h["admin"], stranger["id"])["decision"] == "denied"  # unknown at a door: denied
        elsewhere = c.post("/v1/events/test", json={"camera": "yard", "status": "recognized", "person_id": pid}, headers=h["admin"]).json()
        assert _wait_event(c, h["admin"], elsewhere["id"])["decision"] is None  # no rule for this camera

        # reads: viewer and admin yes, client and nobody no
        assert c.get("/v1/events").status_code == 401
        assert c.get("/v1/events", headers=h["client"]).status_code == 403
        assert c.get(f"/v1/events/{ev['id']}/crop", headers=h["client"]).status_code == 403
        assert c.get("/v1/people", headers=h["viewer"]).status_code == 403  # a viewer reads events, not the gallery
        listed = c.get("/v1/events", params={"camera": "door"}, headers=h["viewer"]).json()
        assert [e["id"] for e in listed["events"]] == [stranger["id"], ev["id"]] and listed["next_before"] is None
        page = c.get("/v1/events", params={"limit": 1}, headers=h["viewer"]).json()
        assert len(page["events"]) == 1 and page["next_before"] == page["events"][0]["seq"]
        assert c.get("/v1/events", params={"person_id": pid}, headers=h["viewer"]).json()["events"][0]["id"] in (ev["id"], elsewhere["id"])
        crop = c.get(f"/v1/events/{ev['id']}/crop", headers=h["viewer"])
        assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg" and crop.content[:2] == b"\xff\xd8"
        log = c.get("/v1/audit", headers=h["admin"]).json()
        reads = [e for e in log["entries"] if e["action"] == "event_crop_read"]
        assert reads and reads[0]["detail"]["items"] == [ev["id"]]

        # bad input: 4xx with a JSON body
        for params in ({"status": "happy"}, {"limit": 0}, {"limit": 501}, {"person_id": -1}, {"before": "x"}, {"since": "yesterday"}):
            r = c.get("/v1/events", params=params, headers=h["viewer"])
            assert r.status_code == 422 and r.json()["code"] == "invalid_request", (params, r.text)
        r = c.get("/v1/events/0123456789abcdef0123456789abcdef", headers=h["viewer"])
        assert r.status_code == 404 and r.json()["code"] == "event_not_found"
        assert c.get("/v1/events/0123456789abcdef0123456789abcdef/crop", headers=h["viewer"]).json()["code"] == "event_not_found"
        assert c.get("/v1/events/bad%20id!", headers=h["viewer"]).status_code == 422
        for bad in ({"camera": "door", "status": "bogus"}, {"camera": "../x"}, {"person_id": 0}, {"extra": 1}, {"status": "recognized"}):
            r = c.post("/v1/events/test", json=bad, headers=h["admin"])
            assert r.status_code == 422 and "code" in r.json(), (bad, r.text)
        r = c.post("/v1/events/test", json={"status": "recognized", "person_id": 999999}, headers=h["admin"])
        assert r.status_code == 404 and r.json()["code"] == "person_not_found"

        # deleting the person deletes their events (and their crops)
        assert c.delete(f"/v1/people/{pid}", headers=h["admin"]).status_code == 200
        assert c.get(f"/v1/events/{ev['id']}", headers=h["viewer"]).status_code == 404
        assert c.get(f"/v1/events/{ev['id']}/crop", headers=h["viewer"]).status_code == 404
        assert c.get("/v1/events", params={"person_id": pid}, headers=h["viewer"]).json()["events"] == []
        assert c.get(f"/v1/events/{stranger['id']}", headers=h["viewer"]).status_code == 200  # the stranger's stays
        metrics = c.get("/metrics", headers=h["admin"]).text
        assert "facegate_events_total" in metrics and "facegate_events_dropped_total 0.0" in metrics
    files = [f for f in s.data_dir.iterdir() if f.is_file()]
    assert not [f.name for f in files if b"Ada Events" in f.read_bytes() or b"ada events" in f.read_bytes()]


def test_live_stream_keepalive_and_resume(keyed):
    s, h = keyed
    with s.client() as c:
        assert c.get("/v1/events/stream", headers=h["client"]).status_code == 403
        sse = SSEReader(s.url + "/v1/events/stream?camera=porch", h["viewer"])
        try:
            assert sse.status == 200
            sent = [c.post("/v1/events/test", json={"camera": "porch"}, headers=h["admin"]).json()["id"] for _ in range(3)]
            c.post("/v1/events/test", json={"camera": "other"}, headers=h["admin"])  # filtered out
            got, _ = sse.events(3)
            assert [e["id"] for e in got] == sent and all(e["camera"] == "porch" for e in got)
            # idle: keep-alive comments (events_keepalive_s = 0.5 here)
            idle = []
            while not any(line.startswith(": keep-alive") for line in idle):
                idle.append(sse.lines.get(timeout=10))
        finally:
            sse.close()
        # resume: a client that saw the first event gets the two after it, then live ones
        again = SSEReader(s.url + "/v1/events/stream?camera=porch", {**h["viewer"], "Last-Event-ID": str(got[0]["seq"])})
        try:
            replay, _ = again.events(2)
            assert [e["id"] for e in replay] == sent[1:]
            live = c.post("/v1/events/test", json={"camera": "porch"}, headers=h["admin"]).json()["id"]
            assert again.events(1)[0][0]["id"] == live
        finally:
            again.close()
        assert c.get("/v1/events/stream", headers={**h["viewer"], "Last-Event-ID": "x"}).status_code == 422


def test_a_viewer_key_reads_nothing_but_events_and_cameras(keyed, other_face):
    """A viewer key (a guard's screen, the Events and Cameras pages) may not identify, read or change
    the gallery, read the audit log or metrics, export, or see and make webhooks (their secrets): each
    is a 403 with a JSON body, and the webhook it tried to make does not exist."""
    s, h = keyed
    face = {"image": b64(other_face)}
    hook = {"url": "http://127.0.0.1:9/viewer-hook", "secret": "s" * 32}
    with s.client() as c:
        assert c.get("/v1/events", headers=h["viewer"]).status_code == 200
        assert c.get("/v1/cameras", headers=h["viewer"]).status_code == 200
        refused = [
            ("POST", "/predict", face), ("POST", "/v1/identify", face), ("POST", "/v1/verify", {**face, "person_id": 1}),
            ("POST", "/v1/liveness", face), ("POST", "/v1/challenges", None),
            ("GET", "/v1/people", None), ("GET", "/v1/people/1", None), ("POST", "/v1/people", {"name": "V", "images": [face["image"]]}),
            ("DELETE", "/v1/people/1", None), ("GET", "/v1/faces/1/crop", None), ("GET", "/v1/export", None),
            ("GET", "/v1/audit", None), ("GET", "/metrics", None), ("POST", "/v1/events/test", {"camera": "door"}),
            ("GET", "/v1/webhooks", None), ("POST", "/v1/webhooks", hook), ("DELETE", "/v1/webhooks/0123456789abcdef", None),
        ]
        for method, path, body in refused:
            r = c.request(method, path, json=body, headers=h["viewer"])
            assert r.status_code == 403 and r.json()["code"] == "forbidden", (method, path, r.status_code, r.text)
        assert hook["url"] not in [w["url"] for w in c.get("/v1/webhooks", headers=h["admin"]).json()]
