"""The batching policy of the ``dispatcher`` patch (serving/patches/dispatcher.py) on BentoML's own dispatcher
class, without a server: a lone request runs at once, requests that arrive while a batch runs go together in the
next one, and one that waits past max_latency_ms is cancelled (BentoML answers it 503)."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.patches.dispatcher import ContinuousDispatcher


def make(max_latency_ms: int = 5000, max_batch_size: int = 32, delay: float = 0.0):
    calls: list[int] = []

    async def model(batches):
        calls.append(sum(len(b) for b in batches))
        await asyncio.sleep(delay)
        return [[x * 10 for x in b] for b in batches]

    d = ContinuousDispatcher(max_latency_ms, max_batch_size, fallback=lambda: "fallback", get_batch_size=len)
    return d(model), calls


def test_a_lone_request_does_not_wait_for_company():
    async def main():
        infer, calls = make()
        lat = []
        for i in range(20):
            t0 = time.perf_counter()
            assert await infer([i]) == [i * 10]
            lat.append(time.perf_counter() - t0)
        return calls, sorted(lat)[10]

    calls, p50 = asyncio.run(main())
    assert calls == [1] * 20
    assert p50 < 0.003  # BentoML's CorkDispatcher holds such a request for the average past wait


def test_requests_arriving_during_a_batch_form_the_next_batch():
    async def main():
        infer, calls = make(delay=0.05)
        first = asyncio.ensure_future(infer([0]))
        await asyncio.sleep(0.01)  # the first batch (1 text) is running
        rest = [asyncio.ensure_future(infer([i, i])) for i in range(1, 11)]
        out = await asyncio.gather(first, *rest)
        return calls, out

    calls, out = asyncio.run(main())
    assert calls == [1, 20]  # 10 requests of 2 texts, in one call
    assert out == [[0]] + [[i * 10, i * 10] for i in range(1, 11)]


def test_batches_are_capped_and_split_at_max_batch_size():
    async def main():
        infer, calls = make(max_batch_size=8, delay=0.02)
        first = asyncio.ensure_future(infer([0]))
        await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(infer([1, 2, 3])) for _ in range(5)]
        out = await asyncio.gather(first, *rest)
        return calls, out

    calls, out = asyncio.run(main())
    assert calls == [1, 8, 7]  # 15 texts: 8 (one request split), then 7
    assert out[1:] == [[10, 20, 30]] * 5


@pytest.mark.parametrize("delay, cancelled", [(0.15, True), (0.0, False)])
def test_a_request_waiting_past_max_latency_gets_the_fallback(delay, cancelled):
    async def main():
        infer, calls = make(max_latency_ms=100, delay=delay)
        first = asyncio.ensure_future(infer([0]))
        await asyncio.sleep(0.01)
        second = await infer([1])
        await first
        return second

    assert (asyncio.run(main()) == "fallback") is cancelled
