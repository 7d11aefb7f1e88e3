"""Slow and greedy clients against a real ``bentoml serve``: a body that trickles in gets 408, a request head that
trickles in is cut, connections over the per-worker cap get a JSON 503; the service keeps serving throughout."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import pytest
from serving_helpers import client, read_all, response, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
TIMEOUT_S, MAX_CONNECTIONS = 2, 12
# one worker: the connection cap is per worker
# every connection comes from 127.0.0.1: the per-address cap (a quarter, by default) is lifted to the worker's,
# which is what these tests reach (tests/serving/test_connections.py tests the per-address cap)
SERVER_ENV = {
    "RNNTEXT_READ_TIMEOUT_S": str(TIMEOUT_S),
    "RNNTEXT_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "RNNTEXT_CLIENT_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "RNNTEXT_WORKERS": "1",
}


def connect(server) -> socket.socket:
    url = urlparse(server.url)
    return socket.create_connection((url.hostname, url.port), timeout=TIMEOUT_S + 10)


def still_serving(client):
    r = client.post("/classify", json={"texts": ["The striker scored twice in the final"]})
    assert r.status_code == 200 and r.json()[0]["label"] == "sport"


def test_settings_are_reported(client):
    settings = client.get("/info").json()["settings"]
    assert (settings["read_timeout_s"], settings["max_connections"], settings["tracing"]) == (2.0, 12, False)


@pytest.mark.parametrize("path", ["/classify", "/generate"])
def test_a_body_sent_one_byte_at_a_time_gets_408(server, client, path):
    body = json.dumps({"texts": ["x" * 40]} if path == "/classify" else {"prompt": "x" * 40}).encode()
    with connect(server) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        t0 = time.monotonic()
        s.setblocking(False)
        reply = b""
        for byte in body:  # ~3 bytes a second: the whole body would take 15 s
            # look for the answer before each byte: a byte sent after the server has answered and closed makes
            # its kernel reset the connection, and the answer would be lost (the deadline, 2 s, is not a
            # multiple of the 0.3 s pace, so the answer never races a send)
            try:
                reply += s.recv(65536)
            except BlockingIOError:
                pass
            if b"\r\n\r\n" in reply:
                break
            try:
                s.send(bytes([byte]))
            except OSError:  # the server has answered and closed
                break
            time.sleep(0.3)
        s.setblocking(True)
        reply += read_all(s)
        elapsed = time.monotonic() - t0
    status, headers, payload = response(reply)
    assert status == "HTTP/1.1 408 Request Timeout" and headers["connection"] == "close"
    assert json.loads(payload) == {"error": "request body not received within 2 s", "kind": "request_timeout"}
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 3
    still_serving(client)
    metrics = client.get("/metrics").text
    assert 'rnntext_errors_total{client="anonymous",kind="request_timeout"}' in metrics


def test_a_request_head_sent_too_slowly_is_cut(server, client):
    with connect(server) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: t\r\n")  # the head never ends
        assert read_all(s) == b""
        assert TIMEOUT_S * 0.9 <= time.monotonic() - t0 < TIMEOUT_S + 3
    still_serving(client)


def test_connections_over_the_cap_get_a_json_503(server, client):
    # the test client and BentoML's own warm-up client may hold connections too: open more than the cap, fast
    # (each idle one is cut after the head deadline), then see which ones the server answered at once
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            socks.append(connect(server))
            time.sleep(0.02)
        time.sleep(0.3)
        replies = []
        for s in socks:
            s.setblocking(False)
            try:
                replies.append(s.recv(65536))
            except BlockingIOError:
                replies.append(None)  # held: silent
        held = replies.count(None)
        assert MAX_CONNECTIONS - 3 <= held <= MAX_CONNECTIONS
        assert replies[:held] == [None] * held  # the first ones in are held, the later ones refused
        status, headers, payload = response(replies[-1])
        assert status == "HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "1"
        assert json.loads(payload) == {
            "error": "too many open connections (limit 12 per worker); retry later",
            "kind": "overloaded",
        }
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    still_serving(client)
