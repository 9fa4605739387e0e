"""Cameras: CPU per camera, how many cameras the machine holds while /predict keeps serving, and the
delay from a face's first frame to its event.

A 640x480, 10 fps H.264 video is made with ffmpeg from lfw-dev photos (people come and go: 3 s in view,
2 s empty, one of them enrolled); every camera plays it as a file camera (a file plays at its own rate,
like a live stream). For each level (0, 1, 2, ... cameras at ``--fps`` analysed) a fresh `facegate
serve` runs the cameras while the bench's /predict load (bench/load.py's generator, ``--clients``
connections) runs beside them for ``--seconds``. Reported per level: the server's CPU per second,
per camera (above the server's CPU with /predict alone), each camera's analysed frames per second,
frames skipped, /predict requests/s and p95, and the events' delay from the track's first analysed
frame to the decision. A level "holds" when every camera keeps 90 % of its analysed rate and
/predict keeps 50 % of its rate without cameras (say so with the machine's load). CPU per camera is
the CPU above the level without cameras per analysed frame, times ``--fps``.

    python bench/cameras.py [--cameras 0 1 2 4] [--seconds 15] [--fps 5] [--clients 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "cameras"))
from lfw_http import start_server  # noqa: E402
from load import _generate, predict_body, process_cpu_s  # noqa: E402

LFW = HERE.parents[1] / "shared" / "faces" / "lfw-dev"
ENROLLED = "Arnold_Schwarzenegger"
PASSERS = ["Arnold_Schwarzenegger", "Dick_Cheney", "Fidel_Castro", "Andy_Roddick", "Arnold_Schwarzenegger", "Clint_Eastwood"]


def make_video(folder: Path, seconds_per_person: float = 3.0, gap: float = 2.0) -> Path:
    from camkit import make_video as _make, photos

    segments: list = [(None, 1.0)]
    for i, person in enumerate(PASSERS):
        segments += [(photos(LFW, person)[3 + (i % 2)], seconds_per_person), (None, gap)]
    return _make(folder / "people.mp4", segments)


def enrol(url: str) -> None:
    from camkit import photos

    imgs = [base64.b64encode(p.read_bytes()).decode() for p in photos(LFW, ENROLLED)[:3]]
    r = httpx.post(url + "/register", json={"user_name": ENROLLED, "first_img": imgs[0], "sec_img": imgs[1], "third_img": imgs[2]}, timeout=60)
    r.raise_for_status()


def level(data: str, video: Path, cameras: int, fps: float, clients: int, seconds: float, body: dict) -> dict:
    cfg = Path(data) / "cameras.toml"
    cfg.write_text("".join(f'[[cameras]]\nname = "cam{i}"\nurl = "{video}"\nfps = {fps}\n' for i in range(cameras)))
    proc, url = start_server(data, ["--config", str(cfg)])
    try:
        time.sleep(2.0)  # past the first frames and the model's first calls
        cpu0, t0 = process_cpu_s(proc.pid), time.monotonic()
        frames0 = {c["name"]: c["frames"] for c in httpx.get(url + "/v1/cameras").json()["cameras"]}
        load = _generate(url, body, clients, seconds, None) if clients else (time.sleep(seconds) or None)
        cpu1, t1 = process_cpu_s(proc.pid), time.monotonic()
        cams = httpx.get(url + "/v1/cameras").json()["cameras"]
    finally:
        proc.terminate()
        proc.wait(30)
    wall = t1 - t0
    rates = [(c["frames"] - frames0[c["name"]]) / wall for c in cams]
    delays = [e["decided_at"] - e["started_at"] for c in cams for e in c["recent"]]
    out = {
        "cameras": cameras,
        "server_cpu_per_s": (cpu1 - cpu0) / wall,
        "fps_analysed_min": min(rates) if rates else None,
        "fps_analysed_mean": float(np.mean(rates)) if rates else None,
        "skipped": sum(c["skipped"] for c in cams),
        "events": sum(c["events"] for c in cams),
        "event_delay_s_median": float(np.median(delays)) if delays else None,
        "event_delay_s_max": max(delays) if delays else None,
        "decided_by": {k: sum(e.get("decided_by") == k for c in cams for e in c["recent"]) for k in ("identified", "ended")},
    }
    if load is not None:
        lat = np.asarray(load["latencies"], float) * 1000
        ok = load["codes"].get(200, 0)
        out |= {"predict_per_s": ok / load["wall"], "predict_p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
                "predict_503": load["codes"].get(503, 0)}
    return out


def table(rows: list[dict], fps: float) -> str:
    base = rows[0]
    lines = [
        "| cameras | server CPU (cores) | CPU per camera at fps (cores) | analysed fps per camera (min / mean) | /predict req/s | /predict p95 (ms) | events | event delay median / max (s) | holds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        n = r["cameras"]
        # CPU above the level without cameras, per analysed frame, times the configured rate: on a busy machine a
        # camera analyses fewer frames than asked, and its CPU per second says less than its CPU per frame.
        frames_per_s = (r["fps_analysed_mean"] or 0) * n
        per = f"{(r['server_cpu_per_s'] - base['server_cpu_per_s']) / frames_per_s * fps:.2f}" if n and frames_per_s else "-"
        fps_txt = f"{r['fps_analysed_min']:.1f} / {r['fps_analysed_mean']:.1f}" if n else "-"
        delay = "-" if r["event_delay_s_median"] is None else f"{r['event_delay_s_median']:.2f} / {r['event_delay_s_max']:.2f}"
        holds = "-" if not n else "yes" if (r["fps_analysed_min"] >= 0.9 * fps and r.get("predict_per_s", 1) >= 0.5 * base.get("predict_per_s", 1)) else "no"
        lines.append(
            f"| {n} | {r['server_cpu_per_s']:.2f} | {per} | {fps_txt} | {r.get('predict_per_s', 0):.1f} | "
            f"{r.get('predict_p95_ms') or 0:.0f} | {r['events']} | {delay} | {holds} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--seconds", type=float, default=15.0, help="measured per level (the video lasts 31 s)")
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4, help="/predict connections beside the cameras (0: none)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    if not LFW.is_dir():
        sys.exit(f"needs the lfw-dev photos at {LFW}")
    if 0 not in args.cameras:
        args.cameras = [0, *args.cameras]
    body = predict_body()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp))
        data = str(Path(tmp) / "data")
        proc, url = start_server(data, [])
        try:
            enrol(url)
        finally:
            proc.terminate()
            proc.wait(30)
        rows = []
        for n in sorted(args.cameras):
            print(f"{n} camera(s) ...", file=sys.stderr)
            rows.append(level(data, video, n, args.fps, args.clients, args.seconds, body))
    print(table(rows, args.fps))
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end; {args.clients} /predict connections; "
          f"{args.seconds:.0f} s per level; cameras at {args.fps:g} analysed fps of a 640x480 10 fps H.264 file")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "levels": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
