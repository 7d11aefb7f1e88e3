"""Patch ``timeout``: BentoML's ``TimeoutMiddleware.__call__`` replaced, so no request's context outlives it.

Upstream (BentoML 1.4, ``bentoml/_internal/server/http/traffic.py``): the middleware arms
``loop.call_later(traffic.timeout, ...)`` for every request and never cancels it. An asyncio timer copies the
current ``contextvars`` context when it is created, and that middleware runs inside the OpenTelemetry ASGI
middleware, so each pending timer keeps the request's server span and BentoML's request-id context alive until
it fires. ``Handle.cancel()`` alone does not help: it drops the callback, not the copied context.

This patch: the replacement behaves as the original (504 JSON when the response has not started within the
timeout) but arms its timer in an empty context, cancels it as soon as the response starts, also stops waiting
when the app finishes without sending anything, and runs the app in the request's own task instead of a second
one per request. It is applied only while BentoML's method is the leaking one: once upstream cancels its timer,
``install()`` leaves it alone.

Measured (docs/upstream/bentoml-timeout-leak.md, docs/benchmarks.md "Memory soak"): ~5 KB per request kept for
``traffic.timeout`` seconds (4.84 KB/request on ``GET /livez`` of a minimal service; the soak grew 5.744
KB/request before, 0.017 after); ~300 MB at 1,000 requests/s and the default 60 s.

Upstream issue: none filed yet; docs/upstream/bentoml-timeout-leak.md is the report to file, with a minimal
reproduction and the proposed diff. (bentoml/BentoML#5642 is another defect of the same middleware: sync handlers
keep running after the 504.) Switched off (``RNNTEXT_PATCHES_OFF=timeout``): BentoML's own middleware, correct
answers, memory up to rate x timeout x ~5 KB.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from typing import Any

log = logging.getLogger(__name__)
ORIGINAL: dict[str, Any] = {}  # BentoML's own method, kept for the tests that show the defect


async def _timeout_call(self: Any, scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    state = {"started": False, "timed_out": False}

    def expire() -> None:
        if not state["started"]:
            state["timed_out"] = True
            task.cancel()

    # an empty context: the timer must not keep this request's context (span, request id) alive
    timer = loop.call_later(self.timeout, expire, context=contextvars.Context())

    async def _send(message: dict) -> None:
        if not state["started"]:
            state["started"] = True
            timer.cancel()  # the response has started: a long event stream is not cut
        await send(message)

    # the app runs in this request's own task (no second task per request, as BentoML's method has): on time-out
    # the timer cancels this task, and the cancellation is turned into the 504 here
    try:
        await self.app(scope, receive, _send)
    except asyncio.CancelledError:
        if not state["timed_out"] or state["started"]:
            raise
        task.uncancel()
        from starlette.responses import JSONResponse

        await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)(
            scope, receive, send
        )
    finally:
        timer.cancel()


def _leaks(method: Any) -> bool:
    """BentoML's own ``__call__`` arms a timer that it never cancels."""
    try:
        src = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    return "call_later" in src and ".cancel()" not in src.replace("fut.cancel()", "")


def install() -> bool:
    """Patch BentoML's TimeoutMiddleware in this process (idempotent); True when the fix is in place."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    current = TimeoutMiddleware.__call__
    if current is _timeout_call:
        return True
    if not _leaks(current):
        log.info("BentoML's TimeoutMiddleware cancels its timer already: not patched")
        return False
    ORIGINAL["call"] = current
    TimeoutMiddleware.__call__ = _timeout_call
    return True
