"""Schemathesis hooks for tests/api/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS): hostile JSON that
schemathesis does not generate by itself (issue 19, finding 7).

Of the cases schemathesis generates with a JSON object body, every third one per operation is sent with
one field (or the whole body) nested 33 to 1,000 arrays or objects deep, and every third with one field
(a name field when there is one) holding a lone surrogate, written as JSON's ``\\ud800``-style escape.
The rest go as generated. The hostile text is written at send time (``before_call``), so schemathesis'
own validation and copies of the case never hold it. Each hostile request and its status are appended
to the file named by ``FUZZ_HOSTILE_LOG`` (JSON lines), for the test to check.
"""

from __future__ import annotations

import itertools
import json
import os
import threading

import schemathesis

DEPTHS = (33, 64, 300, 1000)  # the server refuses past 32; Python's parser failed near 1,000
SURROGATES = ("X\\ud800Y", "\\udfff", "Ana\\udc00", "\\ud83d")  # lone high, lone low, trailing, half an emoji
_PLACEHOLDER = "\u2063FUZZ\u2063"
_turns: dict[tuple[str, str], itertools.count] = {}
_sent = threading.local()


def _raw(body: dict, kind: str, n: int) -> bytes:
    keys = sorted(body) or ["x"]
    body = dict(body)
    if kind == "deep":
        depth, open_, close = DEPTHS[n % len(DEPTHS)], *(("{\"a\":", "}") if n % 2 else ("[", "]"))
        if n % 5 == 0:  # the whole body
            return (open_ * depth + json.dumps(body) + close * depth).encode()
        body[keys[n % len(keys)]] = _PLACEHOLDER
        return json.dumps(body).replace(json.dumps(_PLACEHOLDER), open_ * depth + "0" + close * depth).encode()
    names = [k for k in keys if "name" in k]
    body[names[0] if names and n % 2 else keys[n % len(keys)]] = _PLACEHOLDER
    return json.dumps(body).replace(json.dumps(_PLACEHOLDER), '"' + SURROGATES[n % len(SURROGATES)] + '"').encode()


@schemathesis.hook
def before_call(ctx, case, kwargs):
    _sent.kind = None
    if not (case.media_type or "").endswith("json") or not isinstance(case.body, dict):
        return
    n = next(_turns.setdefault((case.method, case.path), itertools.count()))
    kind = ("as generated", "deep", "surrogate")[n % 3]
    if kind == "as generated":
        return
    kwargs["data"] = _raw(case.body, kind, n // 3)  # overrides the serialised body (requests: data before json)
    _sent.kind = kind


@schemathesis.hook
def after_call(ctx, case, response):
    kind, _sent.kind = getattr(_sent, "kind", None), None
    path = os.environ.get("FUZZ_HOSTILE_LOG")
    if kind is None or not path:
        return
    sent = response.request.body or b""
    sent = sent.encode() if isinstance(sent, str) else sent
    row = {
        "method": case.method, "path": case.path, "kind": kind, "status": response.status_code,
        "deep": kind == "deep" and sent.count(b"[") + sent.count(b"{") > 32, "surrogate": kind == "surrogate" and b"\\ud" in sent,
    }
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
