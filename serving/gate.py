"""ASGI middleware in front of every route: what BentoML does not do for us.

* the API key (``Authorization: Bearer <key>`` or ``X-API-Key``), except on the health probes and the static
  pages (the demo and the API docs, serving/pages.py), which hold no data and ask for the key themselves;
* a deadline and a size limit for the request body: the gate reads the body itself, within ``read_timeout_s``
  of the request head (a client that sends its body a byte a second gets 408 and its connection closed) and up
  to ``max_body_bytes`` (413), then replays it to BentoML in one message;
* 405 as JSON for a wrong method on an API path;
* every API body is parsed as JSON whatever its ``Content-Type`` says (BentoML would pick another parser by media
  type: pickle is refused with 415, multipart parses differently);
* every 4xx that BentoML answers itself (pydantic's validation report, above all) is rewritten into this
  service's ``{"error", "kind"}`` shape (serving/errors.py ``normalize``);
* ``X-Rnntext-Worker: <worker index>`` on every response, so that a client (and the tests) can see which
  worker served it.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Callable

from .errors import ClientError, error_response, normalize
from .pages import is_page

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})      # probes never need the key
API_METHODS = {"/classify": "POST", "/generate": "POST", "/end_session": "POST", "/info": "POST"}
ALIASES = {"/info": "GET"}      # GET /info is served too (curl, browsers): serving/service.py
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_HEADERS = ((b"content-type", b"application/json"),)


async def read_body(receive: Callable, max_bytes: int) -> bytes:
    """The whole request body; 413 as soon as it grows past ``max_bytes`` (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientError(400, "invalid_request", "client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise ClientError(413, "payload_too_large", f"request body over {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Gate:
    def __init__(self, app: Any, api_key: str, max_body_bytes: int, read_timeout_s: float,
                 on_error: Callable[[str], None] | None = None, worker: Callable[[], Any] | None = None):
        self.app = app
        self.api_key = api_key.encode()
        self.max_body_bytes, self.read_timeout_s = max_body_bytes, read_timeout_s
        self.on_error = on_error        # counts errors by kind (metrics)
        self._worker = worker           # the worker index, looked up once it is known
        self._worker_header: tuple[bytes, bytes] | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._tag(send, scope["path"] in API_METHODS)
        try:
            self._check(scope)
            if scope["method"] in BODY_METHODS:
                body = await self._read(receive)
                if scope["path"] in API_METHODS:
                    scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                    scope["headers"].extend(JSON_HEADERS)
                receive = _replay(body, receive)
        except ClientError as err:
            return await error_response(err, self.on_error)(scope, receive, send)
        await self.app(scope, receive, send)

    def _check(self, scope: dict) -> None:
        path = scope["path"]
        if self.api_key and path not in OPEN_PATHS and not is_page(path) and not self._authorized(scope):
            raise ClientError(401, "unauthorized", "missing or wrong API key "
                                                   "(send 'Authorization: Bearer <key>' or 'X-API-Key: <key>')")
        wanted = API_METHODS.get(path)
        if wanted and scope["method"] != wanted and scope["method"] != ALIASES.get(path):
            allowed = " or ".join(filter(None, (wanted, ALIASES.get(path))))
            raise ClientError(405, "method_not_allowed", f"{path} accepts {allowed} only")

    def _authorized(self, scope: dict) -> bool:
        given = auth = b""
        for k, v in scope["headers"]:
            if k == b"x-api-key":
                given = v
            elif k == b"authorization":
                auth = v
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given, self.api_key)

    async def _read(self, receive: Callable) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout_s):   # a third of anyio.fail_after's cost per request
                return await read_body(receive, self.max_body_bytes)
        except TimeoutError:
            raise ClientError(408, "request_timeout",
                              f"request body not received within {self.read_timeout_s:g} s") from None

    def _header(self) -> tuple[bytes, bytes]:
        if self._worker_header is None:
            index = self._worker() if self._worker else None
            if index is None:
                return (b"x-rnntext-worker", b"?")
            self._worker_header = (b"x-rnntext-worker", str(index).encode())
        return self._worker_header

    def _tag(self, send: Callable, api: bool) -> Callable:
        """``send`` that adds the worker header and, on API paths, rewrites BentoML's own 4xx bodies."""
        held: dict | None = None
        chunks: list[bytes] = []

        async def tagged(message: dict) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self._header()]
                if api and 400 <= message["status"] < 500:
                    held = message          # the body decides whether it needs rewriting
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, body, held = held, b"".join(chunks), None
                doc = normalize(start["status"], body)
                if doc is not None:
                    if self.on_error:
                        self.on_error(doc["kind"])
                    body = json.dumps(doc).encode()
                    start["headers"] = [(k, v) for k, v in start["headers"]
                                        if k.lower() not in (b"content-length", b"content-type")]
                    start["headers"] += [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                await send(start)
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            await send(message)

        return tagged


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that hands the route the body already read, in one message."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()      # after the body: wait for the disconnect, as the server would

    return replay
