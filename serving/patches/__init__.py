"""Every change this service makes to its dependencies' behaviour, in one place, checked before it is installed.

One module per patch, each with what upstream does, what the patch changes, the measured reason and the upstream
issue in its docstring:

* ``timeout`` (timeout.py): BentoML's ``TimeoutMiddleware.__call__``, no timer left holding each request's context;
* ``api_callers`` (api_callers.py): BentoML's ``APIMethod._local_call``, built once per instance, not per request;
* ``tracing`` (tracing.py): BentoML's ``ServiceAppFactory.middlewares`` without the OpenTelemetry middleware;
  only with tracing off (RNNTEXT_TRACING=0, the default);
* ``dispatcher`` (dispatcher.py): BentoML's ``CorkDispatcher`` swapped for one that never waits while the model
  is idle;
* ``connections`` (connections.py): uvicorn's ``Config.load``, an HTTP protocol with a connection cap, a cap per
  address and a deadline for request heads;
* ``accept`` (accept.py): asyncio's ``BaseSelectorEventLoop._accept_connection``, one accept per loop turn and a
  fair share of connections between workers; only in workers, with more than one;
* ``drain`` (drain.py): uvicorn's ``Server.handle_exit``, SIGTERM drains the worker (readiness 503, no new streams,
  running streams finish up to RNNTEXT_DRAIN_S, then stopped with their sessions saved) before uvicorn shuts down.

``install(settings, board)`` is called once when serving/service.py is imported (in ``bentoml serve``'s main
process and in each worker, before BentoML builds its app and uvicorn server). It first asks serving/patches/guard.py
whether every patch it is about to install was verified on the installed BentoML, uvicorn and event loop; if not,
the server refuses to start with one line. ``RNNTEXT_PATCHES_OFF`` (a comma list of the names above) leaves
patches out: the service stays correct without any of them, only slower or, without ``timeout``, holding ~5 KB per
request for 60 s, or, without ``connections``, without its connection limits (docs/serving.md, "Patches of
dependencies"). This package imports neither BentoML nor uvicorn until the guard has passed (so
serving/config.py can read ``NAMES``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from . import guard

log = logging.getLogger("rnntext.patches")
NAMES = ("timeout", "api_callers", "tracing", "dispatcher", "connections", "accept", "drain")


def wanted(settings: Any) -> list[str]:
    """The patches this server uses, in install order: all but those switched off, ``tracing`` only with tracing
    off (RNNTEXT_TRACING=0), ``accept`` only with more than one worker."""
    off = set(settings.patches_off)
    if settings.tracing:
        off.add("tracing")  # BentoML's tracing stays as it is (OTEL_* variables, its tracing config)
    if settings.workers <= 1:
        off.add("accept")  # one worker has nobody to share connections with
    return [n for n in NAMES if n not in off]


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")  # only once the guard has passed: they import BentoML


def _connections(settings: Any, board: Any, names: list[str]) -> None:
    # the accept patch's fair share reads every worker's open connections, which the guarded protocol counts
    count = board.set_connections if board is not None and "accept" in names else None
    _module("connections").install(
        settings.max_connections,
        settings.read_timeout_s,
        settings.client_max_connections,
        settings.directory,
        count=count,
    )


INSTALL: dict[str, Callable[[Any, Any, list[str]], Any]] = {
    "timeout": lambda settings, board, names: _module("timeout").install(),
    "api_callers": lambda settings, board, names: _module("api_callers").install(),
    "tracing": lambda settings, board, names: _module("tracing").install(),
    "dispatcher": lambda settings, board, names: _module("dispatcher").install(),
    "connections": _connections,
    # in a worker only (the board is made there): the main process accepts nothing
    "accept": lambda settings, board, names: board is not None and _module("accept").install(board),
    "drain": lambda settings, board, names: _module("drain").install(),
}


def install(settings: Any, board: Any = None) -> list[str]:
    """Check, then install the patches ``settings`` asks for (idempotent); the names checked. ``board``: this
    worker's WorkerBoard (serving/board.py), None in the main process."""
    names = wanted(settings)
    guard.check(names)  # raises guard.Refused (SystemExit, one line) on unverified versions or loop
    for name in names:
        INSTALL[name](settings, board, names)
    off = [n for n in NAMES if n in set(settings.patches_off)]
    if off:
        log.warning("patches switched off by RNNTEXT_PATCHES_OFF: %s", ", ".join(off))
    return names
