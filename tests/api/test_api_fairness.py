"""Fair admission (issue 19, finding 11): model requests take turns per key (per address when keys are off).

One key flooding /predict without honouring Retry-After took 62 % of what was served against a polite key's 38 %.
The turns are checked here on the gate itself, deterministically; bench/fairness.py measures the shares on a real
server (polite share, total, polite p99).
"""

from __future__ import annotations

import asyncio
import time

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


# ------------------------------------------------------------------ gap (a): Retry-After ignored, turns beyond the budget
def test_a_client_that_ignores_retry_after_gets_one_turn_in_four_while_polite_ones_wait():
    """The flood bench's flooder and polite client behave alike until refused; then only the flooder resends at
    once on the connection it was told to wait on. From then on it gets one turn in four, not one in two."""

    async def run() -> list[str]:
        gate = FairGate(slots=1, per_client=64)
        now = time.monotonic()
        gate.told("key:flood", "10.0.0.2:5000", now)  # refused with Retry-After: 1 ...
        assert gate.arrival("key:flood", "10.0.0.2:5000", now + 0.01) is not None  # ... and resent at once
        assert gate.arrival("key:polite", "10.0.0.3:6000", now) is None and gate.impolite("key:flood")
        gate.told("key:polite", "10.0.0.3:6000", now)
        assert gate.arrival("key:polite", "10.0.0.3:6000", now + 1.5) is None  # waited as told: still polite
        assert not gate.impolite("key:polite")
        served: list[str] = []
        assert await gate.acquire("key:polite")  # holds the slot while both queue
        waits = [asyncio.create_task(gate.acquire(w)) for w in ["key:flood", "key:polite"] * 12]
        await asyncio.sleep(0)
        for _ in range(16):
            gate.release()
            await asyncio.sleep(0)
            done = [t for t in waits if t.done() and not hasattr(t, "seen")]
            for t in done:
                t.seen = True
                served.append("flood" if waits.index(t) % 2 == 0 else "polite")
        for t in waits:
            t.cancel()
        return served

    served = asyncio.run(run())
    assert len(served) == 16 and served.count("flood") == 4, served  # one turn in four (never none)


def test_a_turn_further_away_than_the_latency_budget_is_refused():
    async def run() -> None:
        gate = FairGate(slots=1, per_client=64, budget_s=1.0)
        assert gate.refusal("a") is None  # an idle gate takes anything
        assert await gate.acquire("a")
        gate.observe_hold(0.4)  # a request holds the slot 0.4 s
        waits = [asyncio.create_task(gate.acquire("a")) for _ in range(2)]
        await asyncio.sleep(0)
        # a's third waiting request: 2 ahead of it and the one running, 1.2 s > 1.0 s
        assert "budget" in gate.refusal("a")
        assert gate.refusal("b") is None  # another client's first waits one turn of a's: 0.8 s
        for t in waits:
            t.cancel()

    asyncio.run(run())


def test_a_connection_that_ignores_retry_after_is_answered_only_when_it_is_up():
    """The refusal of a request resent at once is held until the Retry-After it ignored has passed, so a
    flooding connection costs one cheap refusal a second instead of thousands."""
    from types import SimpleNamespace

    async def app(scope, receive, send) -> None:  # never reached: every request here is refused
        raise AssertionError("admitted")

    mw = AdmissionMiddleware(app, slots=1, per_client=1)
    owner = SimpleNamespace(state=SimpleNamespace())
    scope = {"type": "http", "method": "POST", "path": "/predict", "client": ("10.0.0.2", 5000), "app": owner}
    sent: list[int] = []

    async def send(msg) -> None:
        if msg["type"] == "http.response.start":
            sent.append(msg["status"])

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def run() -> None:
        gate = mw.gate
        assert await gate.acquire("addr:other")  # the one slot is busy ...
        blocker = asyncio.create_task(gate.acquire("addr:10.0.0.2"))  # ... and this client's one place taken
        await asyncio.sleep(0)
        await mw(scope, receive, send)  # refused at once: queue full, told Retry-After: 1
        assert sent == [503] and not gate.impolite("addr:10.0.0.2")
        resent = asyncio.create_task(mw(scope, receive, send))  # resent at once on the same connection
        await asyncio.sleep(0.3)
        assert sent == [503] and gate.impolite("addr:10.0.0.2")  # held, not yet answered
        await asyncio.wait_for(resent, 5)
        assert sent == [503, 503]
        blocker.cancel()

    asyncio.run(run())
