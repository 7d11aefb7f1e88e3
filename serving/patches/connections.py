"""Patch ``connections``: uvicorn's ``Config.load`` wrapped, so that each worker's HTTP protocol has connection limits.

Upstream: BentoML 1.4 builds its workers' ``uvicorn.Config`` itself (``_bentoml_impl/worker/service.py``) and
exposes neither uvicorn's ``limit_concurrency`` nor any header timeout, and uvicorn 0.54 arms no timer before a
connection's first request (``timeout_keep_alive`` runs only between requests): a client that connects and then
sends its request line one byte a second holds a socket for ever.

This patch: ``install()`` wraps ``uvicorn.Config.load`` so that the HTTP protocol class it picks (h11 or
httptools) is replaced by a subclass, ``guarded()``, that relies on the protocol's ``connections`` set, its
``cycle`` (``response_complete``), ``transport``, ``loop`` and ``on_response_complete``, and adds:

* a connection over ``max_connections`` open ones in this worker gets ``503 {"error", "kind": "overloaded"}``
  and is closed at once, before anything is read;
* a connection from an address that already holds ``per_address`` of them in this worker (default: a quarter
  of ``max_connections``) gets ``429 {"error", "kind": "quota_exceeded"}`` and is closed the same way, so one
  client cannot take every connection; the trusted proxies (RNNTEXT_TRUSTED_PROXIES) carry many clients and
  are exempt;
* a connection with no request in flight (just opened, or between keep-alive requests) must deliver a whole
  request head within ``read_timeout_s``, or it is closed. Bodies have their own deadline (serving/gate.py).

It also reports the worker's open connections to ``count`` (the ``accept`` patch's WorkerBoard).

Measured: no throughput figure; the reason is limits that do not exist otherwise (RNNTEXT_MAX_CONNECTIONS,
RNNTEXT_CLIENT_MAX_CONNECTIONS, the head deadline of RNNTEXT_READ_TIMEOUT_S), shown by
tests/serving/test_connections.py and tests/serving/test_service_slow_clients.py.

Upstream issues: Kludex/uvicorn#157 ("Further timeouts and resource limiting": a request-start timeout, never
added) and Kludex/uvicorn#160 (keep-alive timeout for the first request too); none in BentoML. Switched off
(``RNNTEXT_PATCHES_OFF=connections``): uvicorn's own protocol, correct answers, but none of those three limits
(and the ``accept`` patch gets no connection counts: it still accepts one connection per turn).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

ORIGINAL: dict[str, Any] = {}
_installed: dict[str, Any] = {}


def _refusal(max_connections: int) -> bytes:
    body = json.dumps(
        {"error": f"too many open connections (limit {max_connections} per worker); retry later", "kind": "overloaded"}
    ).encode()
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _quota_refusal(per_address: int) -> bytes:
    body = json.dumps(
        {
            "error": f"too many open connections from this address (limit {per_address} per worker); retry later",
            "kind": "quota_exceeded",
        }
    ).encode()
    head = (
        f"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _count(open_connections: int) -> None:
    count = _installed.get("count")
    if count is not None:
        count(open_connections)


def guarded(
    protocol: type, max_connections: int, read_timeout_s: float, per_address: int | None = None, directory: Any = None
) -> type:
    """A subclass of one of uvicorn's HTTP protocols (h11 or httptools) with the checks above."""
    refusal = _refusal(max_connections)
    per_address = per_address or max_connections
    quota_refusal = _quota_refusal(per_address)
    by_address: dict[str, int] = {}  # this worker's open connections per peer address (trusted proxies: none)

    class Guarded(protocol):
        _head_timer = None
        _address: str | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            _count(len(self.connections))
            if len(self.connections) > max_connections:
                transport.write(refusal)
                transport.close()  # connection_lost then removes it from ``connections``
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
            self._arm()  # the next request head must arrive in time too

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
            idle = self.cycle is None or self.cycle.response_complete  # no request has started since _arm
            if idle and not self.transport.is_closing():
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{protocol.__name__}"
    return Guarded


def install(
    max_connections: int,
    read_timeout_s: float,
    per_address: int | None = None,
    directory: Any = None,
    count: Callable[[int], None] | None = None,
) -> None:
    """Make every uvicorn server started in this process use the guarded protocol (idempotent; the latest
    settings win). ``count`` is told this worker's open connections whenever they change."""
    import uvicorn

    _installed.update(
        max_connections=max_connections,
        read_timeout_s=read_timeout_s,
        per_address=per_address,
        directory=directory,
        count=count,
    )
    if "load" in ORIGINAL:
        return
    load = ORIGINAL["load"] = uvicorn.Config.load

    def guarded_load(config: Any) -> None:
        load(config)
        config.http_protocol_class = guarded(
            config.http_protocol_class,
            _installed["max_connections"],
            _installed["read_timeout_s"],
            _installed["per_address"],
            _installed["directory"],
        )

    uvicorn.Config.load = guarded_load
