"""Patch ``drain``: uvicorn's ``Server.handle_exit`` wrapped, so that SIGTERM drains a worker before it stops.

Upstream (uvicorn 0.54, ``uvicorn/server.py``): the first SIGTERM or SIGINT sets ``should_exit``; within 0.1 s the
worker stops accepting connections, closes its idle keep-alive ones, and waits for the requests in flight (no time
limit unless ``--timeout-graceful-shutdown``). Under BentoML the listening socket belongs to ``bentoml serve``'s
main process (circus), which keeps it open until every worker has gone: connections that arrive meanwhile wait in
the kernel's queue, unanswered, and are reset when the server exits. Nothing tells a load balancer to go elsewhere
first, and a stream longer than the pod's grace period is cut without its session being saved.

This patch: the first SIGTERM or SIGINT starts the hook that the service registered (``register``; serving/
app_state.py ``AppState.drain``) instead: ``/readyz`` turns 503 at once, new streams get 503 ``draining`` with
``Retry-After``, every other request is still served, running streams finish for up to ``RNNTEXT_DRAIN_S`` and are
then stopped with their sessions saved. Only then is ``should_exit`` set and uvicorn's own shutdown runs (which
finds nothing left to wait for). More SIGTERMs change nothing (``bentoml serve`` forwards the one it gets, and
``kill`` of the process group sends one more); a second SIGINT (Ctrl-C again) cuts the drain short: running
streams are stopped at once; a third is uvicorn's own forced exit. The worker then exits 0: the signal is not
re-raised after the shutdown, as uvicorn would (a drained worker has ended as it should).

``bentoml serve``'s main process (circus) sends SIGTERM to its workers when it gets SIGTERM or SIGINT and waits for
them for up to a day (``graceful_timeout=86400``, bentoml/serving.py): ``RNNTEXT_DRAIN_S`` bounds the drain.

Upstream: Kludex/uvicorn#2414 ("Add delayed-shutdown", open) proposes the same phase (a flag the app reads for its
readiness while requests are still accepted, then uvicorn's shutdown); none known for BentoML. Switched off
(``RNNTEXT_PATCHES_OFF=drain``): uvicorn's shutdown as described above.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("rnntext.drain")
ORIGINAL: dict[str, Any] = {}
HOOK: dict[str, Callable[[asyncio.Event], Awaitable[Any]]] = {}
_tasks: set[asyncio.Task] = set()


def register(hook: Callable[[asyncio.Event], Awaitable[Any]]) -> None:
    """What a signal starts in this worker: ``hook(hurry)`` drains and returns; ``hurry`` is set by a second
    SIGINT (stop the running streams now)."""
    HOOK["drain"] = hook


def install() -> None:
    """Wrap uvicorn's ``Server.handle_exit`` in this process (idempotent)."""
    import uvicorn

    if "handle_exit" in ORIGINAL:
        return
    original = ORIGINAL["handle_exit"] = uvicorn.Server.handle_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        hook = HOOK.get("drain")
        draining = getattr(self, "_rnntext_hurry", None)
        if hook is None or self.should_exit:  # nothing to drain, or uvicorn's shutdown has begun
            return original(self, sig, frame)
        if draining is not None:
            if sig == signal.SIGINT:
                if draining.is_set():  # a third Ctrl-C: uvicorn's shutdown now
                    self.should_exit = True
                draining.set()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not inside the server's loop (signals arrive on its thread): uvicorn's behaviour
            return original(self, sig, frame)
        hurry = self._rnntext_hurry = asyncio.Event()
        log.warning("signal %s: draining (readiness 503, no new streams)", signal.Signals(sig).name)

        async def drain() -> None:
            try:
                await hook(hurry)
            except Exception:
                log.exception("drain failed; shutting down")
            self.should_exit = True

        task = loop.create_task(drain())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    uvicorn.Server.handle_exit = handle_exit
