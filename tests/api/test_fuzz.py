"""Hostile input at scale: a schemathesis run over the live server's OpenAPI schema, and a corpus
of malformed and unusual images sent to every image endpoint. No 5xx, no hang, no schema violation.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, ServerProcess, facegate
from test_api_auth import new_key


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, astronaut_payloads):
    """A server with keys, one enrolled person, and limits high enough that the fuzzer is not throttled."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    admin = new_key(data, "admin", "fuzzer")
    # /v1/liveness answers 503 without an imported model: fuzz it with one where the test checkpoint is at hand.
    ckpt = SHARED / "models" / "minifasnet" / "2.7_80x80_MiniFASNetV2.pth"
    liveness = ckpt.exists() and facegate("models", "import-liveness", ckpt, "--arch", "minifasnet-v2", "--data", data).returncode == 0
    # No latency budget either: on a busy machine its 503s (documented, but a server error to the fuzzer) are load, not input.
    s = ServerProcess(
        data, env={"FACEGATE_RATE_LIMIT_PER_KEY": "", "FACEGATE_RATE_LIMIT_PER_IP": "", "FACEGATE_LATENCY_BUDGET_S": "60"}
    ).start()
    s.admin = admin
    s.liveness = liveness
    with s.client(headers={"Authorization": f"Bearer {admin}"}) as c:
        assert c.post("/register", json=astronaut_payloads[0]).status_code == 200
    yield s
    s.stop()


# ------------------------------------------------------------------ malformed images
def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR claiming w x h, with a tiny IDAT: a bomb by its header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _exif_rotated(rgb: np.ndarray) -> bytes:
    """The photo stored turned 90 degrees, with EXIF orientation 6 telling viewers to turn it back."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # counter-clockwise on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    return _save(stored, "JPEG", exif=exif.tobytes(), quality=92)


@pytest.fixture(scope="module")
def corpus(astronaut) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expectation): 'face' = must be recognised, '4xx' = must be refused, 'any' = 200 or 4xx."""
    rgb = np.ascontiguousarray(astronaut)
    pil = Image.fromarray(rgb)
    jpeg = _save(pil, "JPEG", quality=90)
    png = _save(pil, "PNG")
    gray16 = Image.fromarray((rgb.mean(axis=2) * 257).astype(np.uint16))
    frames = [pil, Image.fromarray(255 - rgb)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "4xx"),
        "truncated png": (png[: len(png) // 2], "4xx"),
        "zero bytes": (b"", "4xx"),
        "jpeg SOI only": (b"\xff\xd8", "4xx"),
        "png 100000x100000 by header": (_png_header_only(100_000, 100_000), "4xx"),
        "png 1x100000": (_png_header_only(1, 100_000), "4xx"),
        "random bytes": (os.urandom(5000), "4xx"),
        "cmyk jpeg": (_save(pil.convert("CMYK"), "JPEG", quality=90), "face"),
        "16-bit grey png": (_save(gray16, "PNG"), "any"),
        "animated gif": (gif.getvalue(), "face"),
        "exif-rotated jpeg": (_exif_rotated(rgb), "face"),
        "rgba png": (_save(pil.convert("RGBA"), "PNG"), "face"),
        "palette png": (_save(pil.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "face"),
        "webp": (_save(pil, "WEBP", quality=85), "face"),
        "bmp": (_save(pil, "BMP"), "face"),
        "tiff": (_save(pil, "TIFF"), "face"),
        "1-bit png": (_save(pil.convert("1"), "PNG"), "any"),
        "grey jpeg": (_save(pil.convert("L"), "JPEG"), "any"),
    }


CASES = [
    "truncated jpeg", "truncated png", "zero bytes", "jpeg SOI only", "png 100000x100000 by header", "png 1x100000",
    "random bytes", "cmyk jpeg", "16-bit grey png", "animated gif", "exif-rotated jpeg", "rgba png", "palette png",
    "webp", "bmp", "tiff", "1-bit png", "grey jpeg",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_image_corpus(fuzzed, corpus, case):
    data, expect = corpus[case]
    b64 = base64.b64encode(data).decode()
    with fuzzed.client(headers={"Authorization": f"Bearer {fuzzed.admin}"}) as c:
        answers = {
            "/predict": c.post("/predict", json={"image": b64}),
            "/v1/identify (json)": c.post("/v1/identify", json={"image": b64}),
            "/v1/identify (multipart)": c.post("/v1/identify", files={"image": ("x.bin", data, "application/octet-stream")}),
        }
        for route, r in answers.items():
            assert r.status_code < 500, (route, r.status_code, r.text)
            if expect == "4xx":
                assert 400 <= r.status_code < 500, (route, r.text)
                assert r.json()["code"] in ("invalid_image", "image_too_large", "no_face"), (route, r.text)
            elif expect == "face":
                assert r.status_code == 200, (route, r.text)
            elif r.status_code != 200:
                assert r.json()["code"] in ("invalid_image", "no_face"), (route, r.text)
        if expect == "face":
            assert answers["/predict"].json()["user_name"] == "Eileen Collins", answers["/predict"].text
            names = [f["name"] for f in answers["/v1/identify (json)"].json()["faces"]]
            assert "Eileen Collins" in names, names
        assert c.get("/healthz").json()["gallery"]["people"] == 1  # nothing was written


# ------------------------------------------------------------------ schemathesis
#: Operations that take a JSON body: each must have been sent deep nesting and a lone surrogate.
JSON_BODY_ROUTES = [
    ("POST", "/register"), ("POST", "/predict"), ("POST", "/v1/identify"), ("POST", "/v1/verify"),
    ("POST", "/v1/people"), ("POST", "/v1/people/{person_id}/faces"), ("PATCH", "/v1/people/{person_id}"),
]

def test_schemathesis_finds_no_server_error(fuzzed, tmp_path):
    """Property-based requests from the live OpenAPI schema, bounded in examples and time."""
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is in the test extra"
    report = tmp_path / "st.json"
    cmd = [
        exe, "run", f"{fuzzed.url}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples", "20", "--max-time", "100", "--seed", "20261129", "--workers", "2",
        "--generation-database", "none", "--request-timeout", "30", "--no-color",
        # Not the 'coverage' phase: its generator fails inside hypothesis now and then (a RuntimeError
        # describing a filter lambda's source, never a request sent), which fails the run by itself.
        "--phases", "examples,fuzzing,stateful",
        "-H", f"Authorization: Bearer {fuzzed.admin}",
        "--report", "json", "--report-json-path", str(report),
    ]
    cmd += ["--exclude-path", "/v1/events/stream"]  # a live stream answers for as long as one listens: no end to wait for
    if not fuzzed.liveness:  # no liveness model (../shared absent): its documented 503 is all the route can say
        cmd += ["--exclude-path", "/v1/liveness"]
    # fuzz_hooks.py turns a third of the JSON bodies into deep nesting and a third into lone surrogates,
    # which schemathesis does not generate by itself, and logs each with its answer.
    hostile = tmp_path / "hostile.jsonl"
    env = os.environ | {"SCHEMATHESIS_HOOKS": "fuzz_hooks", "FUZZ_HOSTILE_LOG": str(hostile)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    out = r.stdout + r.stderr
    print(out[-3000:])
    (tmp_path / "st.out").write_text(out)
    assert r.returncode == 0, out[-12000:]
    assert fuzzed.alive()
    rows = [json.loads(line) for line in hostile.read_text().splitlines()] if hostile.exists() else []
    for route in JSON_BODY_ROUTES:
        sent = [x for x in rows if (x["method"], x["path"]) == route]
        assert any(x["deep"] for x in sent), (route, "no deeply nested body was sent")
        assert any(x["surrogate"] for x in sent), (route, "no lone surrogate was sent")
    assert rows and all(400 <= x["status"] < 500 for x in rows if x["deep"]), [x for x in rows if x["deep"]][:5]
    assert all(x["status"] < 500 for x in rows)
    if report.exists():
        summary = json.loads(report.read_text())
        print(json.dumps(summary, indent=1)[:2000])
