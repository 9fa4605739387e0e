"""Where a request's CPU goes: decode, locate, align, model, search, HTTP, for /predict and /v1/identify,
at 1 and 32 clients, float and int8 (``precision``).

For each precision a `facegate serve` is started (rate limits off) with one person enrolled; for each
route and client count, a load process (asyncio, raw HTTP/1.1 keep-alive, one connection a client)
sends the same request for --seconds while ``py-spy record --nonblocking`` samples the server's
Python threads (--rate per second, busy threads only) and the server's CPU time (utime + stime of
the whole process) is read before and after. Each busy sample is given to the stage of the innermost
FaceGate frame on its stack:

- decode: ``vision/imageio.py`` (JPEG/PNG decoding, base64 in the request parsing is HTTP)
- locate: ``vision/locate.py``, ``detect.py``, ``illumination.py``, ``quality.py``, ``headpose.py`` (finding the
  face, its landmarks, and the quality checks)
- align: ``vision/align.py`` (the similarity transform and the warp to 112x112)
- model: ``vision/embed.py``, ``vision/batching.py`` (onnxruntime, flip TTA, the micro-batcher)
- search: ``gallery/``, ``rank.py``, ``pqindex.py`` (the nearest enrolled faces and the decision)
- HTTP: everything else (uvicorn, the event loop, FastAPI/Starlette, JSON and base64, middlewares)

A stage's CPU a request is the server's CPU a request times the stage's share of the busy samples.
Shares, not sampled seconds: on a loaded machine a thread waiting for a core is still "busy" to py-spy,
so sampled seconds are wall time, larger than CPU time. At one client a lone request's model call
runs on ``inference_threads`` onnxruntime threads, and only the calling one has Python frames: there
the model's share is a lower bound (its other thread's CPU is spread over every stage).

    python bench/stages.py [--precision float int8] [--clients 1 32] [--seconds 10] [--int8-from DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_http import start_server  # noqa: E402

STAGES = ("decode", "locate", "align", "model", "search", "HTTP")
RULES = (  # (path fragment, stage); the innermost frame matching one decides
    ("vision/imageio.py", "decode"),
    ("vision/align.py", "align"),
    ("vision/embed.py", "model"),
    ("vision/batching.py", "model"),
    ("vision/locate.py", "locate"),
    ("vision/detect.py", "locate"),
    ("vision/illumination.py", "locate"),
    ("vision/quality.py", "locate"),
    ("vision/headpose.py", "locate"),
    ("gallery/", "search"),
    ("facegate/rank.py", "search"),
    ("facegate/pqindex.py", "search"),
)


def stage_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for fragment, stage in RULES:
            if fragment in frame:
                return stage
    return "HTTP"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(host: str, port: int, request: bytes, stop: float, done: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            done.append((int(head.split(b" ")[1]), time.perf_counter() - t0))
    finally:
        writer.close()


def _load(url: str, path: str, body: bytes, clients: int, seconds: float, q) -> None:
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    done: list = []

    async def main() -> None:
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(_client(host, int(port), request, stop, done) for _ in range(clients)))

    asyncio.run(main())
    q.put(done)


def measure(url: str, pid: int, path: str, body: bytes, clients: int, seconds: float, rate: int) -> dict:
    """One stretch of load with py-spy sampling the server: requests, CPU a request, samples by stage."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    warm = ctx.Process(target=_load, args=(url, path, body, clients, 2.0, q))
    warm.start()
    q.get()
    warm.join()
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        spy = subprocess.Popen(
            [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", raw.name, "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attached
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        p = ctx.Process(target=_load, args=(url, path, body, clients, seconds, q))
        p.start()
        done = q.get()
        p.join()
        cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - t0
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        samples: Counter = Counter()
        for line in Path(raw.name).read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                samples[stage_of(stack)] += int(n)
    ok = sum(1 for status, _ in done if status == 200)
    if ok == 0:
        raise RuntimeError(f"{path}: no request answered 200 ({Counter(s for s, _ in done)})")
    busy = sum(samples.values()) or 1
    ms = {s: 1000 * cpu / ok * samples[s] / busy for s in STAGES}
    return {
        "route": path,
        "clients": clients,
        "requests": ok,
        "other_status": len(done) - ok,
        "requests_per_s": ok / wall,
        "p50_ms": 1000 * float(np.median([t for s, t in done if s == 200])),
        "cpu_ms_per_request": 1000 * cpu / ok,
        "stage_cpu_ms": ms,
        "sampled_ms_per_request": {s: 1000 * samples[s] / rate / ok for s in STAGES},
        "samples": dict(samples),
    }


def bodies() -> dict[str, bytes]:
    from skimage import data

    from facegate.clients.http import predict_payload
    from facegate.vision.detect import BlazeFaceDetector
    from facegate.vision.imageio import encode_jpeg

    img = np.ascontiguousarray(data.astronaut())
    det = BlazeFaceDetector("short")
    face = det.detect(img)[0]
    det.close()
    return {
        "/predict": json.dumps(predict_payload(img, face, file_name="bench.jpg", margin=0.25)).encode(),
        "/v1/identify": json.dumps({"image": base64.b64encode(encode_jpeg(img)).decode()}).encode(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", nargs="+", default=["float", "int8"], choices=["float", "int8"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    ap.add_argument("--int8-from", type=Path, help="a data directory whose models/int8 is copied (else built by the server)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    import httpx
    from skimage import data

    from facegate.clients.http import register_payload

    reqs = bodies()
    os.environ["FACEGATE_RATE_LIMIT_PER_IP"] = ""
    os.environ["FACEGATE_RATE_LIMIT_PER_KEY"] = ""
    rows = []
    for precision in args.precision:
        with tempfile.TemporaryDirectory(prefix="facegate-stages-") as tmp:
            if precision == "int8" and args.int8_from:
                shutil.copytree(args.int8_from / "models" / "int8", Path(tmp) / "models" / "int8")
            proc, url = start_server(tmp, ["--precision", precision])
            try:
                img = np.ascontiguousarray(data.astronaut())
                r = httpx.post(url + "/register", json=register_payload("Eileen Collins", [img, img[:, ::-1].copy(), img]), timeout=60)
                r.raise_for_status()
                for path, body in reqs.items():
                    for n in args.clients:
                        print(f"{precision} {path} {n} client(s) ...", file=sys.stderr)
                        row = {"precision": precision, **measure(url, proc.pid, path, body, n, args.seconds, args.rate)}
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    load = os.getloadavg()
    print(f"\nCPU ms a request by stage (py-spy at {args.rate}/s, {args.seconds:.0f} s each; load average {load[0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"| route | clients | precision | req/s | {' | '.join(STAGES)} | all |")
    print("|---|---|---|---|" + "---|" * (len(STAGES) + 1))
    for r in rows:
        cells = " | ".join(f"{r['stage_cpu_ms'][s]:.1f}" for s in STAGES)
        print(f"| `{r['route']}` | {r['clients']} | {r['precision']} | {r['requests_per_s']:.1f} | {cells} | {r['cpu_ms_per_request']:.1f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"load_average": load, "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
