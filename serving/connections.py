"""Connection limits for each worker's uvicorn server: a cap on open connections and a deadline for headers.

BentoML 1.4 builds its workers' ``uvicorn.Config`` itself and exposes neither uvicorn's ``limit_concurrency`` nor
any header timeout, and uvicorn arms no timer before a connection's first request: a client that connects and
then sends its request line one byte a second holds a socket for ever. ``install()`` (called when the service
module is imported, which happens in the worker before BentoML builds its uvicorn server) wraps the HTTP
protocol class that uvicorn picks with two checks:

* a connection over ``max_connections`` open ones in this worker gets ``503 {"error", "kind": "overloaded"}``
  and is closed at once, before anything is read;
* a connection from an address that already holds ``per_address`` of them in this worker (default: a quarter
  of ``max_connections``) gets ``429 {"error", "kind": "quota_exceeded"}`` and is closed the same way, so one
  client cannot take every connection; the trusted proxies (RNNTEXT_TRUSTED_PROXIES) carry many clients and
  are exempt;
* a connection with no request in flight (just opened, or between keep-alive requests) must deliver a whole
  request head within ``read_timeout_s``, or it is closed. Bodies have their own deadline (serving/gate.py).

``fair_accept()`` spreads connections over the workers. Every worker waits on the same listening socket, and
asyncio accepts up to ``backlog`` (BentoML: 2048) pending connections per wake-up, so the first worker to wake
takes a whole burst: 32 clients connecting at once split 31:1 here, and a keep-alive connection stays with its
worker for good. So each worker accepts one connection per event-loop turn, and lets a new connection wait
(up to 50 ms, for another worker to take it) while it holds more open connections than the least loaded other
worker; the counts are on the server's WorkerBoard (serving/board.py). The kernel's listen
queue is unchanged (it is set by ``listen()``, not here).
"""
from __future__ import annotations

import json
import time
from typing import Any

from .board import WorkerBoard

_installed: dict[str, Any] = {}


def _refusal(max_connections: int) -> bytes:
    body = json.dumps({"error": f"too many open connections (limit {max_connections} per worker); retry later",
                       "kind": "overloaded"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def _quota_refusal(per_address: int) -> bytes:
    body = json.dumps({"error": f"too many open connections from this address (limit {per_address} per worker); "
                                "retry later", "kind": "quota_exceeded"}).encode()
    head = (f"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def _count(open_connections: int) -> None:
    board = _installed.get("board")
    if board is not None:
        board.set_connections(open_connections)


def guarded(protocol: type, max_connections: int, read_timeout_s: float, per_address: int | None = None,
            directory: Any = None) -> type:
    """A subclass of one of uvicorn's HTTP protocols (h11 or httptools) with the checks above."""
    refusal = _refusal(max_connections)
    per_address = per_address or max_connections
    quota_refusal = _quota_refusal(per_address)
    by_address: dict[str, int] = {}     # this worker's open connections per peer address (trusted proxies: none)

    class Guarded(protocol):
        _head_timer = None
        _address: str | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            _count(len(self.connections))
            if len(self.connections) > max_connections:
                transport.write(refusal)
                transport.close()       # connection_lost then removes it from ``connections``
                return
            peer = transport.get_extra_info("peername")
            address = peer[0] if isinstance(peer, tuple) and peer else None
            if address is not None and not (directory is not None and directory.is_trusted(address)):
                if by_address.get(address, 0) >= per_address:
                    transport.write(quota_refusal)
                    transport.close()
                    return
                by_address[address] = by_address.get(address, 0) + 1
                self._address = address
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()                 # the next request head must arrive in time too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._address is not None:
                left = by_address.get(self._address, 1) - 1
                if left > 0:
                    by_address[self._address] = left
                else:
                    by_address.pop(self._address, None)
                self._address = None
            super().connection_lost(exc)
            _count(len(self.connections))

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(read_timeout_s, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            idle = self.cycle is None or self.cycle.response_complete     # no request has started since _arm
            if idle and not self.transport.is_closing():
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{protocol.__name__}"
    return Guarded


def install(max_connections: int, read_timeout_s: float, per_address: int | None = None,
            directory: Any = None) -> None:
    """Make every uvicorn server started in this process use the guarded protocol (idempotent)."""
    import uvicorn

    _installed.update(max_connections=max_connections, read_timeout_s=read_timeout_s, per_address=per_address,
                      directory=directory)
    if "load" in _installed:
        return
    load = _installed["load"] = uvicorn.Config.load

    def guarded_load(config: Any) -> None:
        load(config)
        config.http_protocol_class = guarded(config.http_protocol_class, _installed["max_connections"],
                                             _installed["read_timeout_s"], _installed["per_address"],
                                             _installed["directory"])

    uvicorn.Config.load = guarded_load


DEFER_S = 0.002         # a worker ahead of the others looks again after this...
MAX_DEFER_S = 0.05      # ...and accepts anyway once a connection has waited this long (the others may be stuck)


def fair_accept(board: WorkerBoard | None = None, per_turn: int = 1) -> None:
    """Accept at most ``per_turn`` connections per event-loop turn in this process, and none while this worker
    holds more connections than another worker of the server (``board``), for up to MAX_DEFER_S (idempotent)."""
    from asyncio import selector_events

    _installed["board"] = board
    loop_cls = selector_events.BaseSelectorEventLoop
    if "accept" in _installed:
        return
    accept = _installed["accept"] = loop_cls._accept_connection
    deferred: dict[int, float] = {}         # listening fd -> when this worker first let a connection wait

    def accept_few(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *args):
        fd, board = sock.fileno(), _installed.get("board")
        if board is not None and board.connections_ahead():
            now = time.monotonic()
            if now - deferred.setdefault(fd, now) < MAX_DEFER_S:
                self._remove_reader(fd)

                def resume() -> None:
                    if sock.fileno() != -1 and (server is None or server.is_serving()):
                        self._add_reader(fd, self._accept_connection, protocol_factory, sock, sslcontext, server,
                                         backlog, *args)

                self.call_later(DEFER_S, resume)
                return None
        deferred.pop(fd, None)
        return accept(self, protocol_factory, sock, sslcontext, server, min(backlog, per_turn), *args)

    loop_cls._accept_connection = accept_few
