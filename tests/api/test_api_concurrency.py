"""Many clients at once: every request answered correctly, enrolments all land, nothing lost.
(Throughput figures live in bench/, not here.)"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import b64


def test_concurrent_predicts_and_enrolments(server, astronaut_payloads, astronaut):
    register, predict = astronaut_payloads
    with server.client() as http:
        assert http.post("/register", json=register).status_code == 200
    img = np.ascontiguousarray(astronaut)
    variants = [b64(np.clip(img.astype(int) + d, 0, 255).astype(np.uint8)) for d in (-20, 0, 20)]

    def post(path: str, body: dict) -> httpx.Response:
        """As a well-behaved client: on 503, wait Retry-After and try again."""
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for _ in range(60):
                r = c.post(path, json=body)
                if r.status_code != 503:
                    return r
                assert r.json()["code"] == "busy" and r.headers["retry-after"] == "1"
                time.sleep(float(r.headers["retry-after"]) / 4)
            return r

    def do_predict(i: int) -> tuple[int, str]:
        r = post("/predict", predict)
        return r.status_code, r.json().get("user_name")

    def do_enrol(i: int) -> int:
        # Twins: the same face under eight names, enrolled on purpose.
        return post("/v1/people", {"name": f"Twin {i}", "images": variants, "allow_duplicate": True}).status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        preds = list(pool.map(do_predict, range(48)))
        enrols = list(pool.map(do_enrol, range(8)))
    assert all(code == 200 for code, _ in preds), preds
    assert all(name == "Eileen Collins" or name.startswith("Twin ") for _, name in preds)
    assert enrols == [201] * 8
    with server.client() as http:
        people = http.get("/v1/people").json()
        assert people["count"] == 9
        assert sorted(p["name"] for p in people["people"] if p["name"].startswith("Twin")) == [f"Twin {i}" for i in range(8)]
        assert http.get("/healthz").json()["gallery"]["faces"] == 3 + 8 * 3


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is a Linux scheduling policy")
def test_every_server_thread_runs_under_sched_batch(server, astronaut_payloads):
    """Threads started before the models loaded and after (the event loop, its worker pool, the model
    threads, onnxruntime's): none may preempt a model call when it wakes (``batch_scheduling``)."""
    _, predict = astronaut_payloads
    with server.client() as http:  # a lone call and concurrent ones: every kind of thread has run
        assert http.post("/predict", json=predict).status_code == 200
        with ThreadPoolExecutor(max_workers=6) as pool:
            assert set(pool.map(lambda _: http.post("/predict", json=predict).status_code, range(12))) == {200}
    policies = {}
    for tid in os.listdir(f"/proc/{server.proc.pid}/task"):
        try:
            policies[int(tid)] = os.sched_getscheduler(int(tid))
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    assert len(policies) >= 12, policies  # 8 request workers, 2 model threads, the event loop, ...
    assert set(policies.values()) == {os.SCHED_BATCH}, policies


def test_over_capacity_is_a_prompt_503_with_retry_after(start_server, astronaut_payloads):
    _, predict = astronaut_payloads
    s = start_server(None, env={"FACEGATE_MAX_PENDING": "2", "FACEGATE_WORKER_THREADS": "1"})

    def hit(_):
        with httpx.Client(base_url=s.url, timeout=120) as c:
            r = c.post("/predict", json=predict)
            return r.status_code, r.headers.get("retry-after"), r.json()

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(hit, range(48)))
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 2 and codes.count(503) >= 1
    for code, retry, body in results:
        if code == 503:
            assert retry == "1" and body["code"] == "busy"
    with s.client() as http:
        assert http.post("/predict", json=predict).status_code == 200  # recovers at once
        text = http.get("/metrics").text
    assert 'facegate_rejected_total{reason="busy"}' in text
    assert 'facegate_requests_total{route="/predict",status="503"}' in text
    assert "facegate_batch_faces_bucket" in text and "facegate_embed_queue_depth" in text


def test_two_worker_processes_share_the_gallery(start_server, astronaut_payloads, other_face):
    """A write acknowledged by one worker is seen by the other's very next request."""
    register, predict = astronaut_payloads
    s = start_server(None, "--workers", "2")
    pids = set()
    with s.client() as http:
        for _ in range(12):
            assert http.post("/predict", json=predict).json()["user_name"] == "unknown"
        assert http.post("/register", json=register).status_code == 200
        for _ in range(24):  # fresh connections, so the kernel spreads them over both workers
            with httpx.Client(base_url=s.url, timeout=60) as c:
                r = c.post("/predict", json=predict)
                assert r.json()["user_name"] == "Eileen Collins"
                pids.add(r.headers.get("x-facegate-worker"))
        person = http.get("/v1/people").json()["people"][0]
        assert http.delete(f"/v1/people/{person['id']}").status_code == 200
        for _ in range(24):
            with httpx.Client(base_url=s.url, timeout=60) as c:
                assert c.post("/predict", json=predict).json()["user_name"] == "unknown"
    assert len(pids - {None}) == 2, f"requests reached workers {pids}"


def test_no_route_runs_a_dependency_in_the_thread_pool():
    """FastAPI runs a plain ``def`` dependency in its thread pool: two thread hand-offs per request
    on the cores the model needs. Every dependency of every route is ``async``."""
    import inspect

    from fastapi.routing import APIRoute

    from facegate.api import admin, legacy, v1

    def calls(dependant):
        for d in dependant.dependencies:
            yield d.call
            yield from calls(d)

    routes = [r for router in (legacy.router, v1.router, v1.health_router, admin.router) for r in router.routes if isinstance(r, APIRoute)]
    found = [(r.path, c.__name__, inspect.iscoroutinefunction(c)) for r in routes for c in calls(r.dependant)]
    assert {("/predict", "get_pipeline"), ("/predict", "get_worker")} <= {(p, n) for p, n, _ in found}
    assert not [(p, n) for p, n, is_async in found if not is_async], "dependencies run in the thread pool"
