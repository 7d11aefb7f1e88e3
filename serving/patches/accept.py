"""Patch ``accept``: CPython's ``BaseSelectorEventLoop._accept_connection`` wrapped, so workers share connections.

Upstream (CPython >= 3.11, ``Lib/asyncio/selector_events.py``): every worker waits on the same listening socket,
and when it wakes asyncio accepts up to ``backlog`` (BentoML: 2048) pending connections in one call (by design:
bpo-27906), so the first worker to wake takes a whole burst, and a keep-alive connection stays with its worker
for good. This is asyncio's selector loop only: under uvloop (uvicorn's ``loop="auto"`` picks it whenever it is
installed) the method is never called and the patch would silently do nothing, so serving/patches/guard.py refuses
to start with uvloop unless this patch is switched off.

This patch: each worker accepts one connection per event-loop turn, and lets a new connection wait (up to 50 ms,
for another worker to take it) while it holds more open connections than the least loaded other worker; the
counts are on the server's WorkerBoard (serving/board.py), written by the ``connections`` patch. The kernel's
listen queue is unchanged (it is set by ``listen()``, not here). Installed only in workers, with more than one.

Measured (docs/benchmarks.md, "Where a /classify request's time goes"): 32 clients connecting at once split 31:1
to 18:14 over 2 workers from run to run without it (513 articles/s at 32:0), 16:16 with it; with the
``api_callers`` and ``tracing`` patches, /classify at 32 clients went from 841 to 929 articles/s.

Upstream issue: none known for the fairness between processes (tornadoweb/tornado#698 made the same change in
Tornado). Switched off (``RNNTEXT_PATCHES_OFF=accept``): asyncio's own accept, correct but unevenly spread.
"""

from __future__ import annotations

import time
from typing import Any

ORIGINAL: dict[str, Any] = {}
_installed: dict[str, Any] = {}
DEFER_S = 0.002  # a worker ahead of the others looks again after this...
MAX_DEFER_S = 0.05  # ...and accepts anyway once a connection has waited this long (the others may be stuck)


def install(board: Any = None, per_turn: int = 1) -> None:
    """Accept at most ``per_turn`` connections per event-loop turn in this process, and none while this worker
    holds more connections than another worker of the server (``board``), for up to MAX_DEFER_S (idempotent)."""
    from asyncio import selector_events

    _installed["board"] = board
    loop_cls = selector_events.BaseSelectorEventLoop
    if "accept" in ORIGINAL:
        return
    accept = ORIGINAL["accept"] = loop_cls._accept_connection
    deferred: dict[int, float] = {}  # listening fd -> when this worker first let a connection wait

    def accept_few(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *args):
        fd, board = sock.fileno(), _installed.get("board")
        if board is not None and board.connections_ahead():
            now = time.monotonic()
            if now - deferred.setdefault(fd, now) < MAX_DEFER_S:
                self._remove_reader(fd)

                def resume() -> None:
                    if sock.fileno() != -1 and (server is None or server.is_serving()):
                        self._add_reader(
                            fd, self._accept_connection, protocol_factory, sock, sslcontext, server, backlog, *args
                        )

                self.call_later(DEFER_S, resume)
                return None
        deferred.pop(fd, None)
        return accept(self, protocol_factory, sock, sslcontext, server, min(backlog, per_turn), *args)

    loop_cls._accept_connection = accept_few
