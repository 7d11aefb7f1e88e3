"""The ``timeout`` patch of BentoML's TimeoutMiddleware (serving/patches/timeout.py), in-process: what it must
keep (504 on time-out) and what it must stop (the request's context kept alive by a timer after the response)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import time
import weakref

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving.patches import timeout as patch

patch.install()
REQUEST_DATA: contextvars.ContextVar = contextvars.ContextVar("request_data")


class Payload:
    """Stands for what a request puts in its context (BentoML: the OpenTelemetry span, the request id)."""


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(middleware_call, app, timeout: float = 60.0) -> tuple[list[dict], weakref.ref]:
    """One request through TimeoutMiddleware, with a Payload in its context; the messages sent and a weak
    reference to the payload."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def request():
        payload = Payload()
        REQUEST_DATA.set(payload)  # in this request's own context (its own task)
        await middleware_call(TimeoutMiddleware(app, timeout=timeout), {"type": "http", "path": "/"}, receive, send)
        return weakref.ref(payload)

    ref = await asyncio.get_running_loop().create_task(request())
    return sent, ref


def held_after_response(middleware_call) -> bool:
    async def main():
        _, ref = await call(middleware_call, ok_app)
        for _ in range(3):  # let the loop run the finished tasks' callbacks, which hold their contexts
            await asyncio.sleep(0)
        gc.collect()
        return ref() is not None

    return asyncio.run(main())


def test_installed_and_idempotent():
    assert TimeoutMiddleware.__call__ is patch._timeout_call
    assert patch.install() is True
    assert patch._leaks(patch.ORIGINAL["call"]) and not patch._leaks(patch._timeout_call)


def test_bentoml_middleware_keeps_the_request_context_until_its_timer_fires():
    """The defect, reproduced on BentoML's own method: the payload outlives the response."""
    assert held_after_response(patch.ORIGINAL["call"]) is True


def test_fixed_middleware_frees_the_request_context_with_the_response():
    assert held_after_response(TimeoutMiddleware.__call__) is False


def test_no_live_timer_is_left_per_request():
    async def main():
        loop = asyncio.get_running_loop()
        for _ in range(200):
            await call(TimeoutMiddleware.__call__, ok_app)
        return [h for h in loop._scheduled if not h.cancelled()]

    assert asyncio.run(main()) == []


def test_time_out_still_answers_504():
    async def never(scope, receive, send):
        await asyncio.sleep(3600)

    async def main():
        t0 = time.perf_counter()
        sent, _ = await call(TimeoutMiddleware.__call__, never, timeout=0.2)
        return sent, time.perf_counter() - t0

    sent, seconds = asyncio.run(main())
    assert sent[0]["status"] == 504 and 0.2 <= seconds < 2
    assert sent[1]["body"] == b'{"error":"Not able to process the request in 0.2 seconds"}'


def test_response_passes_through_unchanged():
    sent, _ = asyncio.run(call(TimeoutMiddleware.__call__, ok_app))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"


def test_app_that_fails_before_responding_raises_at_once():
    """BentoML's method would wait the whole timeout for a response that never comes."""

    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(call(TimeoutMiddleware.__call__, broken, timeout=30))
    assert time.perf_counter() - t0 < 2
