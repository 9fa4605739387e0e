"""A request that times out stops its work (issue 19, finding 5): the 503 used to be answered while the
work went on in its thread to the end, holding the thread and the model, and an enrolment that timed
out was stored all the same. The request's deadline now reaches the pipeline (``facegate.cancel``),
which checks it between stages. Asserted on the server's own state, never on a wall clock."""

from __future__ import annotations

import base64
import io
import re
import time

import numpy as np
from PIL import Image


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _big_jpeg(astronaut: np.ndarray, side: int, seed: int) -> str:
    img = Image.fromarray(np.ascontiguousarray(astronaut)).resize((side, side), Image.BILINEAR)
    noise = np.random.default_rng(seed).integers(0, 2, (side, side, 3), dtype=np.uint8)  # ten different files
    img = Image.fromarray(np.asarray(img) ^ noise)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def test_a_timed_out_enrolment_stops_frees_its_worker_and_stores_nothing(start_server, astronaut):
    # Ten large photos take several times a 0.15 s deadline on any machine (each is decoded, detected,
    # aligned and embedded twice, flip TTA); a 1 s deadline was too close on an idle machine (201).
    s = start_server(None, env={"FACEGATE_REQUEST_TIMEOUT_S": "0.15", "FACEGATE_RATE_LIMIT_PER_IP": ""})
    images = [_big_jpeg(astronaut, 2400, i) for i in range(10)]
    with s.client() as c:
        r = c.post("/v1/people", json={"name": "Tim Out", "images": images})
        assert r.status_code == 503 and r.json()["code"] in ("timeout", "deadline_exceeded"), r.text
        # The worker becomes free: nothing of this request is in progress any more.
        polls = 0
        while _metric(c.get("/metrics").text, "facegate_inflight_requests") > 0 and polls < 600:
            polls += 1
            time.sleep(0.05)
        m = c.get("/metrics").text
        assert _metric(m, "facegate_inflight_requests") == 0
        # ... because the work was stopped at a stage boundary by the deadline, not because it ran out:
        assert _metric(m, "facegate_rejected_total", '{reason="deadline_exceeded"}') == 1, m
        assert _metric(m, "facegate_batch_faces_sum") < len(images)  # the model did not embed every photo
        assert c.get("/healthz").json()["gallery"]["people"] == 0  # and nothing was stored
    assert "Traceback" not in s.read_log()
