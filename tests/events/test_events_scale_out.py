"""Two `facegate serve` processes sharing one throwaway PostgreSQL: an event stored by either reaches
both servers' live streams (LISTEN/NOTIFY carrying its seq) and both servers' event log."""

from __future__ import annotations

from test_events_api import SSEReader


def test_every_servers_stream_carries_every_servers_events(two_servers):
    _, (a, b) = two_servers
    on_a, on_b = SSEReader(a.url + "/v1/events/stream", {}), SSEReader(b.url + "/v1/events/stream", {})
    try:
        with a.client() as ca, b.client() as cb:
            from_a = ca.post("/v1/events/test", json={"camera": "gate-a"}).json()["id"]
            from_b = cb.post("/v1/events/test", json={"camera": "gate-b"}).json()["id"]
            for reader in (on_a, on_b):
                got, _ = reader.events(2)
                assert {e["id"] for e in got} == {from_a, from_b}
            for c in (ca, cb):
                assert {e["id"] for e in c.get("/v1/events").json()["events"]} == {from_a, from_b}
    finally:
        on_a.close()
        on_b.close()


def test_every_workers_stream_carries_every_workers_events(start_server):
    """`serve --workers 2` on the embedded gallery: streams and test events land on either worker
    process; each stream gets every event once (the other worker's through the polled log)."""
    s = start_server(None, "--workers", "2")
    readers = [SSEReader(s.url + "/v1/events/stream", {}) for _ in range(4)]
    try:
        with s.client() as c:
            sent = [c.post("/v1/events/test", json={"camera": f"cam{i}"}, headers={"Connection": "close"}).json()["id"] for i in range(6)]
        for r in readers:
            got, _ = r.events(6)
            assert sorted(e["id"] for e in got) == sorted(sent)
    finally:
        for r in readers:
            r.close()
