"""Many clients at once: every request answered correctly, enrolments all land, nothing lost.
(Throughput figures live in bench/, not here.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from conftest import b64


def test_concurrent_predicts_and_enrolments(server, astronaut_payloads, astronaut):
    register, predict = astronaut_payloads
    with server.client() as http:
        assert http.post("/register", json=register).status_code == 200
    img = np.ascontiguousarray(astronaut)
    variants = [b64(np.clip(img.astype(int) + d, 0, 255).astype(np.uint8)) for d in (-20, 0, 20)]

    def do_predict(i: int) -> tuple[int, str]:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            r = c.post("/predict", json=predict)
            return r.status_code, r.json().get("user_name")

    def do_enrol(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            return c.post("/v1/people", json={"name": f"Twin {i}", "images": variants}).status_code

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
