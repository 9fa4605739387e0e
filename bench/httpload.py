"""The bare asyncio HTTP/1.1 load generator shared by bench/load.py and bench/fairness.py.

One pre-built request sent over and over on kept-alive connections: the generator shares this
machine's two cores with the server, so every millisecond it spends is taken from the server (httpx,
serialising the JSON body each time, cost 2.7 ms of CPU per request here; this 0.2). ``run_clients``
runs in a process of its own (``client_process``) and reports its CPU time.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from urllib.parse import urlsplit


def build_request(url: str, body: dict, path: str = "/predict", key: str | None = None) -> bytes:
    """The whole HTTP/1.1 request: headers (with the API key, if any) and the JSON body."""
    u = urlsplit(url)
    payload = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, dict[bytes, bytes]]:
    """One request on a kept-alive connection: status and headers (the body is read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:] if ln)}
    await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers


def run_clients(
    url: str,
    body: dict,
    clients: int,
    seconds: float,
    *,
    key: str | None = None,
    source: str | None = None,
    honour: tuple[int, ...] = (503,),
) -> dict:
    """``clients`` connections each sending /predict back to back for ``seconds``.

    ``honour``: the statuses after which a connection waits ``Retry-After`` (a polite client: 429 and
    503; a flooding one: none). ``source``: the local address to connect from (a second client on
    loopback, e.g. 127.0.0.2). Returns the 200s' latencies, status counts, errors, wall and CPU seconds.
    """
    u = urlsplit(url)
    request = build_request(url, body, key=key)

    async def main() -> dict:
        lat: list[float] = []
        codes: dict[int, int] = {}
        errors = 0
        stop = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal errors
            conn = None
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(u.hostname, u.port, local_addr=(source, 0) if source else None)
                    status, headers = await asyncio.wait_for(exchange(*conn, request), 30)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    errors += 1
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    await asyncio.sleep(0.01)
                    continue
                codes[status] = codes.get(status, 0) + 1
                if headers.get(b"connection") == b"close":
                    conn[1].close()
                    conn = None
                if status == 200:
                    lat.append(time.perf_counter() - t0)
                elif status in honour:  # a well-behaved client waits as told
                    await asyncio.sleep(float(headers.get(b"retry-after", b"1")))
            if conn is not None:
                conn[1].close()

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {"latencies": lat, "codes": codes, "errors": errors, "wall": wall, "generator_cpu_s": cpu}

    return asyncio.run(main())


def client_process(url: str, body: dict, clients: int, seconds: float, out, kwargs: dict | None = None) -> None:
    """``run_clients`` in a process of its own (multiprocessing target): its result goes to the queue ``out``."""
    out.put(run_clients(url, body, clients, seconds, **(kwargs or {})))
