"""Adaptive batching that never waits while the model is idle, applied when the service module is imported.

BentoML 1.4's ``CorkDispatcher`` (``bentoml/_internal/marshal/dispatcher.py``) decides how long to hold a request
for company from the *average wait of past batches*, so once it has waited it keeps waiting: measured here, a
lone client's /classify took 13 ms at p50 for a ~3 ms model call. It also polls its queue every millisecond
while a batch runs, which costs the event loop CPU that the requests need.

``ContinuousDispatcher`` keeps BentoML's batching machinery (its queue, job splitting, batch-size accounting,
its 503 for requests that would miss ``max_latency_ms``) and replaces only the policy: when the model is free,
run everything queued now (up to ``max_batch_size`` texts); while a batch runs, let the next one gather. Batch
size therefore follows the load: 1 for a lone client, as large as what arrived during the last call under load.
The controller sleeps on a condition (woken by a new request or a finished batch) instead of polling.
"""
from __future__ import annotations

import time
from typing import Any

from bentoml._internal.marshal.dispatcher import CorkDispatcher


class ContinuousDispatcher(CorkDispatcher):
    def _ready(self) -> bool:
        return bool(self._queue) and not self._sema.is_locked()

    async def controller(self) -> None:
        while True:
            async with self._wake_event:        # a new request (inbound_call notifies) or a finished batch
                await self._wake_event.wait_for(self._ready)
            now = time.time()
            while self._queue and now - self._queue[0].enqueue_time >= self.max_latency:
                self._queue.popleft().future.cancel()   # waited past max_latency_ms: BentoML answers 503
            if not self._queue:
                continue
            self._sema.acquire()
            self._loop.create_task(self.outbound_call(tuple(self._get_inputs())))

    async def outbound_call(self, inputs_info: tuple[Any, ...], training: bool = False) -> None:
        try:
            await super().outbound_call(inputs_info, training)
        finally:
            async with self._wake_event:        # the model is free: the controller takes what has gathered
                self._wake_event.notify_all()


def install() -> None:
    """Make the BentoML service app in this process build ContinuousDispatchers (idempotent)."""
    import _bentoml_impl.server.app as app

    app.CorkDispatcher = ContinuousDispatcher
