"""Identification figures through the real HTTP API, as the reference clients would get them.

Starts ``facegate serve`` on loopback with a fresh data directory (or uses --url), enrols the
first ``--enroll`` photos of a random half of the people (POST /v1/people), keeps the other half
as strangers, then sends every remaining photo as the reference Android client does: BlazeFace
on the client, the face box cropped, POST /predict with the crop and its two eye points.

Prints: share of enrolled probes answered with the right name, share given a wrong name, share of
strangers wrongly accepted, photos where the client found no face, and latency; --json writes them.

    python bench/lfw_http.py [DIR] [--enroll 2] [--strangers 0.5] [--seed 0] [--margin 0.25] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from facegate.clients.http import b64_jpeg, crop_face, predict_payload
from facegate.vision.detect import BlazeFaceDetector, pick_main_face
from facegate.vision.imageio import read_image_file


def central_face(detector: BlazeFaceDetector, path: Path):
    """(photo, the labelled face in it or None): in LFW the labelled person is the face nearest the centre."""
    img = read_image_file(str(path))
    return img, pick_main_face(detector.detect(img), img.shape)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "facegate.cli", "serve", "--port", str(port), "--data", data_dir, "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/faces/lfw-dev"))
    ap.add_argument("--enroll", type=int, default=2)
    ap.add_argument("--strangers", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", help="use a running server instead of starting one (its gallery must be empty)")
    ap.add_argument("--margin", type=float, default=0.0, help="client crop margin, share of the box")
    ap.add_argument("--enroll-crops", action="store_true", help="enrol with client-side crops (as the reference app's register screen) instead of whole photos")
    ap.add_argument(
        "--register", action="store_true",
        help="enrol as the reference app does: POST /register with each person's first 3 photos, once (no replacement); "
        "counts the people refused and the photos left out",
    )
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--serve-args", default="", help='extra `facegate serve` flags, e.g. "--threshold 0.45"')
    args = ap.parse_args()

    root = Path(args.folder)
    people = sorted(d for d in root.iterdir() if d.is_dir())
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(people))
    n_strangers = int(round(len(people) * args.strangers))
    strangers = {people[i].name for i in order[:n_strangers]}

    proc = None
    tmp = tempfile.TemporaryDirectory()
    url = args.url
    if url is None:
        proc, url = start_server(tmp.name, shlex.split(args.serve_args))
    client = httpx.Client(base_url=url, timeout=60)
    detector = BlazeFaceDetector("short", 0.5)
    try:
        health = client.get("/healthz").json()
        enrolled: dict[str, int] = {}
        probes: list[tuple[str, Path]] = []
        refused: list[str] = []
        photos_left_out = 0
        t0 = time.perf_counter()
        for d in people:
            photos = sorted(d.iterdir())
            if d.name in strangers:
                probes += [(d.name, p) for p in photos]
                continue
            def encoded(p: Path) -> str | None:
                if not args.enroll_crops:
                    return base64.b64encode(p.read_bytes()).decode()
                img, face = central_face(detector, p)
                return b64_jpeg(crop_face(img, face, args.margin)[0]) if face is not None else None

            if args.register:
                chosen = photos[:3]
                r = client.post("/register", json={"user_name": d.name, **{f: encoded(p) for f, p in zip(("first_img", "sec_img", "third_img"), chosen)}})
                if r.status_code != 200:
                    refused.append(d.name)
                    print(f"register {d.name}: {r.status_code} {r.json().get('detail')}", file=sys.stderr)
                    continue
                photos_left_out += len(r.json().get("dropped", []))
                enrolled[d.name] = r.json()["person_id"]
                probes += [(d.name, p) for p in photos if p not in chosen]
                continue
            # Like a person at a kiosk: a photo refused for its quality (422 poor_quality) is replaced by the next one.
            chosen = [p for p in photos[: args.enroll]]
            spare = list(photos[args.enroll :])
            while chosen:
                pairs = [(p, e) for p in chosen if (e := encoded(p)) is not None]
                r = client.post("/v1/people", json={"name": d.name, "images": [e for _, e in pairs]})
                err = r.json() if r.status_code != 201 else {}
                if r.status_code == 422 and err.get("code") == "poor_quality" and spare:
                    bad = pairs[int(err["field"].split("[")[1].rstrip("]"))][0]
                    print(f"enrol {d.name}: {bad.name} refused ({err.get('detail')}), next photo", file=sys.stderr)
                    chosen = [p for p in chosen if p != bad] + [spare.pop(0)]
                    continue
                break
            if r.status_code != 201:
                print(f"enrol {d.name}: {r.status_code} {r.json().get('detail')}", file=sys.stderr)
                continue
            enrolled[d.name] = r.json()["id"]
            probes += [(d.name, p) for p in photos if p not in chosen]
        enrol_s = time.perf_counter() - t0

        correct = wrong = missed_known = accepted_strangers = n_known = n_strangers_probed = no_face = retries = 0
        latencies = []
        for name, path in probes:
            img, face = central_face(detector, path)
            if face is None:
                no_face += 1
                continue
            payload = predict_payload(img, face, file_name=path.name, margin=args.margin)
            t = time.perf_counter()
            r = client.post("/predict", json=payload)
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                print(f"predict {path.name}: {r.status_code} {r.text[:200]}", file=sys.stderr)
                continue
            got = r.json()["user_name"]
            retries += r.json()["status"] == "retry"  # too poor a face: "unknown", and the client should send another frame
            if name in enrolled:
                n_known += 1
                correct += got == name
                wrong += got not in (name, "unknown")
                missed_known += got == "unknown"
            else:
                n_strangers_probed += 1
                accepted_strangers += got != "unknown"
        lat = np.array(latencies) * 1000
        res = {
            "server": {k: health[k] for k in ("model", "detector", "threshold", "tta")},
            "people_enrolled": len(enrolled),
            "people_refused": len(refused),
            "enrolment_photos_left_out": photos_left_out,
            "people_strangers": len(strangers),
            "enroll_images_per_person": 3 if args.register else args.enroll,
            "enrolled_through": "/register" if args.register else "/v1/people",
            "known_probes": n_known,
            "stranger_probes": n_strangers_probed,
            "correct_rate": correct / max(1, n_known),
            "wrong_name_rate": wrong / max(1, n_known),
            "unknown_rate_for_enrolled": missed_known / max(1, n_known),
            "stranger_accept_rate": accepted_strangers / max(1, n_strangers_probed),
            "client_no_face": no_face,
            "retry_rate": retries / max(1, n_known + n_strangers_probed),
            "predict_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
            "predict_ms_p95": float(np.percentile(lat, 95)) if len(lat) else None,
            "enroll_seconds": enrol_s,
            "seed": args.seed,
            "client_crop_margin": args.margin,
            "enrolled_from": "client crops" if args.enroll_crops else "whole photos",
        }
        print(json.dumps(res, indent=2))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(res, indent=2))
    finally:
        client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
