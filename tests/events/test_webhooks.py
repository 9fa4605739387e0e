"""Webhooks with real local HTTP receivers and a real `facegate serve`: signed deliveries (HMAC checked
by the receiver), retries with backoff until a flaky receiver answers, a receiver that hangs holding up
neither another webhook nor /predict, filters, the delivery log, and bad requests refused with JSON."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import b64


class Receiver:
    """A real HTTP server on a free loopback port; ``fail`` first answers 500, ``hold`` hangs until released."""

    def __init__(self, fail: int = 0, hold: threading.Event | None = None) -> None:
        self.got: queue.Queue[tuple[dict, bytes]] = queue.Queue()
        self.fail, self.hold, self.calls = fail, hold, 0
        rcv = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rcv.calls += 1
                if rcv.hold is not None:
                    rcv.hold.wait(60)
                status = 500 if rcv.calls <= rcv.fail else 204
                rcv.got.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _verify(secret: str, headers: dict, body: bytes) -> bool:
    want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, headers["x-facegate-signature"])


def test_signed_retried_and_isolated_deliveries(start_server, receivers, astronaut_payloads):
    s = start_server(None, env={"FACEGATE_WEBHOOK_BACKOFF_S": "0.2", "FACEGATE_WEBHOOK_TIMEOUT_S": "30"})
    good, flaky = receivers(), receivers(fail=2)
    hold = threading.Event()
    slow = receivers(hold=hold)
    with s.client() as c:
        secret = "a-long-enough-shared-secret-1"
        r = c.post("/v1/webhooks", json={"url": good.url, "secret": secret})
        assert r.status_code == 201 and r.json()["secret"] == secret
        good_id = r.json()["id"]
        flaky_hook = c.post("/v1/webhooks", json={"url": flaky.url, "cameras": ["porch"]}).json()  # secret made by the server
        assert len(flaky_hook["secret"]) >= 32
        slow_id = c.post("/v1/webhooks", json={"url": slow.url, "cameras": ["door"]}).json()["id"]
        only_spoofs = c.post("/v1/webhooks", json={"url": good.url, "statuses": ["spoof"]}).json()["id"]
        listed = c.get("/v1/webhooks").json()
        assert {h["id"] for h in listed} == {good_id, flaky_hook["id"], slow_id, only_spoofs}
        assert all("secret" not in h for h in listed)  # never shown again
        assert flaky_hook["secret"].encode() not in c.get("/v1/webhooks").content

        ev = c.post("/v1/events/test", json={"camera": "door"}).json()
        # the good receiver gets it, signed, while the slow one still hangs on its copy
        headers, body = good.got.get(timeout=30)
        assert _verify(secret, headers, body)
        assert not _verify("another-secret-entirely-xx", headers, body)
        sent = json.loads(body)
        assert sent["id"] == ev["id"] == headers["x-facegate-event"] and sent["camera"] == "door" and sent["status"] == "unknown"
        assert headers["x-facegate-delivery"] and int(headers["x-facegate-timestamp"]) > 0
        for _ in range(300):  # the slow receiver has its copy and hangs on it
            if slow.calls:
                break
            threading.Event().wait(0.05)
        assert slow.calls == 1 and slow.got.empty()
        # while it hangs: the next event still reaches the good receiver, and /predict answers
        ev2 = c.post("/v1/events/test", json={"camera": "door"}).json()
        assert json.loads(good.got.get(timeout=30)[1])["id"] == ev2["id"]
        assert c.post("/predict", json=astronaut_payloads[1]).status_code == 200
        assert slow.got.empty() and not hold.is_set()
        # the flaky receiver: 500, 500, then 204; all three tries logged, the same delivery id each time
        porch = c.post("/v1/events/test", json={"camera": "porch"}).json()
        assert json.loads(good.got.get(timeout=30)[1])["id"] == porch["id"]
        tries = [flaky.got.get(timeout=30) for _ in range(3)]
        assert all(_verify(flaky_hook["secret"], h, b) for h, b in tries)
        assert len({h["x-facegate-delivery"] for h, _ in tries}) == 1 and {h["x-facegate-event"] for h, _ in tries} == {porch["id"]}
        log = []
        for _ in range(100):
            log = c.get(f"/v1/webhooks/{flaky_hook['id']}/deliveries").json()
            if len(log) == 3:
                break
            threading.Event().wait(0.1)
        assert [(d["attempt"], d["status_code"]) for d in reversed(log)] == [(1, 500), (2, 500), (3, 204)]
        assert log[0]["error"] is None and log[1]["error"] == "HTTP 500"
        hold.set()  # the slow receiver answers at last
        assert {slow.got.get(timeout=30)[0]["x-facegate-event"] for _ in range(2)} == {ev["id"], ev2["id"]}
        # filters: the spoof-only webhook got nothing; a camera outside the slow one's filter reaches the others only
        assert c.get(f"/v1/webhooks/{only_spoofs}/deliveries").json() == []
        other = c.post("/v1/events/test", json={"camera": "yard"}).json()
        assert json.loads(good.got.get(timeout=30)[1])["id"] == other["id"]
        for _ in range(100):
            slow_log = c.get(f"/v1/webhooks/{slow_id}/deliveries").json()
            if len(slow_log) == 2:
                break
            threading.Event().wait(0.1)
        assert sorted(d["event_id"] for d in slow_log) == sorted([ev["id"], ev2["id"]])  # not the yard's

        # delete
        assert c.delete(f"/v1/webhooks/{flaky_hook['id']}").status_code == 200
        assert c.delete(f"/v1/webhooks/{flaky_hook['id']}").json()["code"] == "webhook_not_found"
        assert c.get(f"/v1/webhooks/{flaky_hook['id']}/deliveries").status_code == 404
        assert flaky_hook["id"] not in {h["id"] for h in c.get("/v1/webhooks").json()}


def test_bad_webhooks_are_refused_and_change_nothing(start_server):
    s = start_server(None)
    with s.client() as c:
        for body, field in (
            ({"url": "ftp://example.org/x"}, "url"),
            ({"url": "file:///etc/passwd"}, "url"),
            ({"url": "not a url"}, "url"),
            ({"url": "http://"}, "url"),
            ({"url": "http://127.0.0.1:99999/x"}, "url"),
            ({"url": "http://127.0.0.1/x", "statuses": ["happy"]}, "statuses.0"),
            ({"url": "http://127.0.0.1/x", "decisions": ["maybe"]}, "decisions.0"),
            ({"url": "http://127.0.0.1/x", "secret": "short"}, "secret"),
            ({"url": "http://127.0.0.1/x", "cameras": [""]}, "cameras.0"),
            ({"url": "http://127.0.0.1/x", "other": 1}, "other"),
            ({}, "url"),
        ):
            r = c.post("/v1/webhooks", json=body)
            assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
        assert c.get("/v1/webhooks").json() == []
        assert c.delete("/v1/webhooks/0123abcd").json()["code"] == "webhook_not_found"
        assert c.delete("/v1/webhooks/NOT-HEX").status_code == 422
        assert c.get("/v1/webhooks/0123abcd/deliveries").status_code == 404
