"""The per-worker connection cap and request-head deadline (the ``connections`` patch,
serving/patches/connections.py) on a real uvicorn server in a thread, with a trivial app: refusals are JSON 503s,
slow heads are cut, requests in flight are not."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from serving_helpers import read_all, response
from uvicorn.protocols.http.h11_impl import H11Protocol

from loadtests.server import free_port
from serving.patches.connections import guarded

CAP, DEADLINE = 3, 0.6


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(DEADLINE * 3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _serve(protocol) -> tuple[uvicorn.Server, threading.Thread, int]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, port


@pytest.fixture(scope="module")
def port():
    server, thread, port = _serve(guarded(H11Protocol, CAP, DEADLINE))
    yield port
    server.should_exit = True
    thread.join(10)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    time.sleep(0.05)  # let the server's connection_made run before the next connection
    return s


def get(s: socket.socket, path: str = "/") -> bytes:
    """One keep-alive request; the whole response (the app's bodies are 2 bytes)."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    reply = b""
    while not (b"\r\n\r\n" in reply and len(reply.partition(b"\r\n\r\n")[2]) >= 2):
        chunk = s.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def test_over_the_cap_a_connection_gets_a_json_503_and_is_closed(port):
    held = [connect(port) for _ in range(CAP)]
    try:
        extra = connect(port)
        status, headers, body = response(read_all(extra))  # closed by the server without a request
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert (headers["connection"], headers["retry-after"]) == ("close", "1")
        assert json.loads(body) == {
            "error": f"too many open connections (limit {CAP} per worker); retry later",
            "kind": "overloaded",
        }
    finally:
        for s in held:
            s.close()
    time.sleep(0.1)
    with connect(port) as s:  # the slots are free again
        assert get(s).startswith(b"HTTP/1.1 200 ")


def test_a_request_head_sent_too_slowly_is_cut(port):
    with connect(port) as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HT")  # and nothing more
        assert read_all(s) == b""
        assert DEADLINE * 0.8 <= time.monotonic() - t0 < DEADLINE + 2


def test_an_idle_keep_alive_connection_is_closed_after_the_deadline(port):
    with connect(port) as s:
        assert get(s).startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        assert read_all(s) == b""
        assert DEADLINE * 0.8 <= time.monotonic() - t0 < DEADLINE + 2


def test_a_request_in_flight_is_not_cut_by_the_head_deadline(port):
    with connect(port) as s:
        time.sleep(DEADLINE / 2)  # inside the deadline: the request head arrives in time
        assert get(s, "/slow").startswith(b"HTTP/1.1 200 ")  # answered after 3 x the deadline


def test_one_address_gets_its_share_of_connections_and_trusted_proxies_are_exempt():
    from serving.clients import Directory, Limits, parse_proxies

    directory = Directory({}, Limits(0, 1, 1, 1), parse_proxies("127.0.0.2/32"))
    server, thread, port = _serve(guarded(H11Protocol, 10, 5.0, per_address=2, directory=directory))
    socks = []
    try:
        socks = [connect(port) for _ in range(2)]
        extra = connect(port)
        status, headers, body = response(read_all(extra))  # refused at once, then closed
        extra.close()
        assert status == "HTTP/1.1 429 Too Many Requests" and headers["retry-after"] == "1"
        assert json.loads(body) == {
            "error": "too many open connections from this address (limit 2 per worker); retry later",
            "kind": "quota_exceeded",
        }
        assert all(get(s).endswith(b"ok") for s in socks)  # the address's own connections go on
        # a proxy carries many clients: no per-address cap (the worker's cap of 10 still holds)
        proxied = []
        for _ in range(4):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            proxied.append(s)
        time.sleep(0.05)
        assert all(get(s).endswith(b"ok") for s in proxied)
        socks += proxied
        socks[0].close()  # a freed connection is the address's again
        time.sleep(0.1)
        socks[0] = connect(port)
        assert get(socks[0]).endswith(b"ok")
    finally:
        for s in socks:
            s.close()
        server.should_exit = True
        thread.join(10)
