"""Patch ``dispatcher``: BentoML's ``CorkDispatcher`` swapped for one that never waits while the model is idle.

Upstream (BentoML 1.4, ``bentoml/_internal/marshal/dispatcher.py``): the adaptive batcher decides how long to hold
a request for company from the *average wait of past batches*, so once it has waited it keeps waiting, and it
polls its queue every millisecond (``TICKET_INTERVAL``) while a batch runs, which costs the event loop CPU that
the requests need. ``_bentoml_impl/server/app.py`` builds one per batchable API from its module global
``CorkDispatcher``.

This patch: ``install()`` sets that global to ``ContinuousDispatcher``, a subclass that keeps BentoML's batching
machinery (its queue ``_queue``, the one-batch-at-a-time semaphore ``_sema``, the condition ``_wake_event`` that
``inbound_call`` notifies, job splitting in ``_get_inputs``, batch-size accounting, its 503 for requests that would
miss ``max_latency_ms``) and replaces only the policy: when the model is free, run everything queued now (up to
``max_batch_size`` texts); while a batch runs, let the next one gather. Batch size therefore follows the load: 1
for a lone client, as large as what arrived during the last call under load. The controller sleeps on the
condition (woken by a new request or a finished batch) instead of polling.

Measured (docs/benchmarks.md, "Where a /classify request's time goes"): one client, one article, /classify p50
13.3 ms with BentoML's policy for a ~3 ms model call, 2.7-2.9 ms with this one; the dispatcher's polling, visible in
py-spy before, is gone.

Upstream issue: none known (BentoML's maintainers hold changes to the adaptive policy until it has benchmarks:
bentoml/BentoML#3664). Switched off (``RNNTEXT_PATCHES_OFF=dispatcher``): BentoML's own batcher, same answers and
503s, slower for a lone client.
"""

from __future__ import annotations

import time
from typing import Any

from bentoml._internal.marshal.dispatcher import CorkDispatcher

ORIGINAL: dict[str, Any] = {}
OBSERVERS: dict[str, Any] = {}  # "queue": called with the requests waiting when a batch starts and ends (metrics)


def observe_queue(fn: Any) -> None:
    """``fn(waiting)`` at every batch's start and end: the rnntext_classify_queue gauge (serving/metrics.py)."""
    OBSERVERS["queue"] = fn


class ContinuousDispatcher(CorkDispatcher):
    def _report_queue(self) -> None:
        if (observe := OBSERVERS.get("queue")) is not None:
            observe(len(self._queue))

    def _ready(self) -> bool:
        return bool(self._queue) and not self._sema.is_locked()

    async def controller(self) -> None:
        while True:
            async with self._wake_event:  # a new request (inbound_call notifies) or a finished batch
                await self._wake_event.wait_for(self._ready)
            now = time.time()
            while self._queue and now - self._queue[0].enqueue_time >= self.max_latency:
                self._queue.popleft().future.cancel()  # waited past max_latency_ms: BentoML answers 503
            if not self._queue:
                continue
            self._report_queue()
            self._sema.acquire()
            self._loop.create_task(self.outbound_call(tuple(self._get_inputs())))

    async def outbound_call(self, inputs_info: tuple[Any, ...], training: bool = False) -> None:
        try:
            await super().outbound_call(inputs_info, training)
        finally:
            self._report_queue()  # what waits now (0 when idle: the gauge falls)
            async with self._wake_event:  # the model is free: the controller takes what has gathered
                self._wake_event.notify_all()


def install() -> None:
    """Make the BentoML service app in this process build ContinuousDispatchers (idempotent)."""
    from _bentoml_impl.server import app

    ORIGINAL.setdefault("CorkDispatcher", app.CorkDispatcher)
    app.CorkDispatcher = ContinuousDispatcher
