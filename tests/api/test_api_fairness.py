"""Fair admission (issue 19, finding 11): model requests take turns per key (per address when keys are off).

One key flooding /predict without honouring Retry-After took 62 % of what was served against a polite key's 38 %.
The turns are checked here on the gate itself, deterministically; bench/fairness.py measures the shares on a real
server (polite share, total, polite p99).
"""

from __future__ import annotations

import asyncio

from facegate.api.limits import AdmissionMiddleware, FairGate, client_identity


def test_a_flooding_client_gets_no_more_turns_than_a_polite_one():
    async def run() -> list[str]:
        gate = FairGate(slots=2, per_client=64)
        served: list[str] = []

        async def request(who: str) -> None:
            assert await gate.acquire(who)
            try:
                served.append(who)
                await asyncio.sleep(0.001)
            finally:
                gate.release()

        async def polite() -> None:  # one connection: the next request as soon as the last is answered
            for _ in range(5):
                await request("key:polite")

        flood = [asyncio.create_task(request("key:flood")) for _ in range(60)]  # 60 at once
        await asyncio.sleep(0)
        await asyncio.gather(*(polite() for _ in range(4)))  # 4 connections
        await asyncio.gather(*flood)
        return served

    served = asyncio.run(run())
    # While both wait, turns alternate: the polite key's 20 requests are served among the first ~42, not after 60.
    last_polite = max(i for i, who in enumerate(served) if who == "key:polite")
    assert last_polite < 45, served


def test_a_full_queue_is_refused_at_once_and_a_cancelled_wait_gives_its_place_back():
    async def run() -> None:
        gate = FairGate(slots=1, per_client=2)
        assert await gate.acquire("a")  # holds the slot
        waiting = [asyncio.create_task(gate.acquire("b")) for _ in range(2)]
        await asyncio.sleep(0)
        assert not await gate.acquire("b")  # b's queue is full: refused, no wait
        waiting[0].cancel()
        await asyncio.sleep(0)
        third = asyncio.create_task(gate.acquire("b"))  # the cancelled one's place
        await asyncio.sleep(0)
        gate.release()
        assert await waiting[1]
        gate.release()
        assert await third
        gate.release()
        assert gate.busy == 0 and not gate.queues

    asyncio.run(run())


def test_turns_are_per_key_else_per_address():
    assert client_identity({"state": {"principal": ("k1", "client")}, "client": ("10.0.0.1", 5)}) == "key:k1"
    assert client_identity({"client": ("10.0.0.1", 5)}) == "addr:10.0.0.1"
    assert AdmissionMiddleware(lambda *a: None, slots=0).gate is None  # 0: off


def test_a_slow_upload_holds_no_model_slot():
    """The turn is taken once the body is in: one slot, a body that never ends, another request still served."""
    from types import SimpleNamespace

    served: list[str] = []

    async def app(scope, receive, send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        served.append(body.decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = AdmissionMiddleware(app, slots=1, per_client=4)
    owner = SimpleNamespace(state=SimpleNamespace())

    def scope(addr: str) -> dict:
        return {"type": "http", "method": "POST", "path": "/predict", "client": (addr, 1), "app": owner}

    async def run() -> None:
        never = asyncio.Event()

        async def slow_receive():
            if not hasattr(slow_receive, "sent"):
                slow_receive.sent = True
                return {"type": "http.request", "body": b"part", "more_body": True}
            await never.wait()

        quick = iter([{"type": "http.request", "body": b"whole", "more_body": False}])

        async def quick_receive():
            return next(quick)

        async def send(msg) -> None:
            pass

        slow = asyncio.create_task(gate(scope("10.0.0.1"), slow_receive, send))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(gate(scope("10.0.0.2"), quick_receive, send), 1)
        assert served == ["whole"] and gate.gate.busy == 0
        slow.cancel()

    asyncio.run(run())
