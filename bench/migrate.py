"""``facegate gallery migrate`` with a door's history: how long the real command takes, and its peak
memory, to move an embedded gallery with events (crops), webhooks and deliveries to a throwaway
PostgreSQL (facegate.gallery.devdb, fsync on) and back, verification included.

The event crops are 112x112 JPEGs (quality 92, as cameras store them) cut from the middle of
lfw-dev photos when ../shared is there (else from a smooth synthetic image), so their size is a
face's; vectors are random unit vectors (the copy does not care what they mean).

    python bench/migrate.py [--people 120] [--faces-each 3] [--events 20000] [--deliveries 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facegate.events.model import Event
from facegate.gallery.backends import events_for
from facegate.gallery.common import NewFace
from facegate.gallery.events import Delivery
from facegate.gallery.sqlite import DB_NAME, Gallery
from facegate.vision.imageio import encode_jpeg

MODEL, DIM = "bench-model", 512
LFW = Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw-dev"


def _crops(n: int = 64) -> list[bytes]:
    """Face-sized JPEG crops: the middle of lfw-dev photos, or a synthetic gradient without them."""
    from PIL import Image

    photos = sorted(LFW.rglob("*.jpg"))[:n] if LFW.is_dir() else []
    out = []
    for p in photos:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        out.append(encode_jpeg(np.asarray(im.crop((w // 2 - 76, h // 2 - 76, w // 2 + 76, h // 2 + 76)).resize((112, 112)))))
    if not out:
        y, x = np.mgrid[0:112, 0:112]
        out = [encode_jpeg(np.stack([x * 2, y * 2, (x + y + i) % 256], -1).astype(np.uint8)) for i in range(n)]
    return out


def build(data: Path, people: int, faces_each: int, events: int, deliveries: int) -> dict:
    rng = np.random.default_rng(0)
    crops = _crops()
    g = Gallery(data, MODEL, DIM)
    ids = []
    for i in range(people):
        v = rng.normal(size=(faces_each, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids.append(g.add_person(f"Person {i:05d}", [NewFace(x, crop_jpeg=crops[i % len(crops)]) for x in v], MODEL))
    store = events_for(g)
    t0 = 1_700_000_000.0
    with store._tx() as cur:  # one transaction for the lot (store.add commits each: hours of fsyncs at 100k)
        for i in range(events):
            p = ids[i % len(ids)] if i % 3 else None
            e = Event(camera=f"cam{i % 4}", started_at=t0 + i, decided_at=t0 + i + 1.2, status="recognized" if p else "unknown",
                      person_id=p.id if p else None, name=p.name if p else None, similarity=0.8 if p else 0.3,
                      track_id=i, frames=20, identified=8, crop_jpeg=crops[i % len(crops)], decision="granted" if p else "denied")
            cur.execute(
                "INSERT INTO events (id, camera, started_at, decided_at, status, person_id, name, similarity, track_id, frames, "
                "identified, liveness, decision, crop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.id, e.camera, e.started_at, e.decided_at, e.status, e.person_id, e.name, e.similarity, e.track_id,
                 e.frames, e.identified, e.liveness, e.decision, e.crop_jpeg),
            )
    hooks = [store.add_webhook(f"https://relay{i}.example/door", "s" * 32, [], [], []) for i in range(2)]
    for i in range(deliveries):
        store.add_delivery(Delivery(hooks[i % 2].id, f"{i:032x}", 1, t0 + i, 204, None, 2.0))
    store.close()
    g.close()
    return {"crop_bytes_median": float(np.median([len(c) for c in crops])), "source_mb": (data / DB_NAME).stat().st_size / 1e6}


def run(*args: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the command, its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "facegate.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**env, "COLUMNS": "200"})
    out = p.stdout.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"facegate {' '.join(args[:2])} failed:\n{out}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=120)
    ap.add_argument("--faces-each", type=int, default=3)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--deliveries", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from facegate.gallery.devdb import DevPostgres

    with tempfile.TemporaryDirectory(prefix="fg-bench-migrate-") as tmp, DevPostgres() as pg:
        src, back = Path(tmp) / "src", Path(tmp) / "back"
        info = build(src, a.people, a.faces_each, a.events, a.deliveries)
        url = pg.create_database("bench_migrate")
        to_s, to_mb, out = run("gallery", "migrate", "--from", str(src), "--to", url)
        back_s, back_mb, out_back = run("gallery", "migrate", "--from", url, "--to", str(back))
    result = {
        "people": a.people, "faces": a.people * a.faces_each, "events": a.events, "deliveries": a.deliveries, **info,
        "to_postgres_s": round(to_s, 2), "to_postgres_peak_rss_mb": round(to_mb), "back_s": round(back_s, 2), "back_peak_rss_mb": round(back_mb),
        "output": " ".join(out.split()[-40:]),
    }
    for k, v in result.items():
        print(f"{k:>26}: {v}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
