"""ASGI middleware in front of every route: API key, request-size limit and deadline, /classify's input checks.

The gate reads every request body itself, within ``read_timeout_s`` of the request head (a client that sends
its body a byte a second gets 408 and its connection closed, instead of holding it for ever) and up to
``max_body_bytes`` (413), then replays it to the route.
/classify is BentoML's batchable endpoint; BentoML's own parser would answer a bad body with its generic
pydantic message (and some media types with 415 or a 500). So the gate answers every mistake in that body with
``{"error", "kind"}`` and a 4xx too, and hands BentoML a clean ``{"texts": [...]}`` JSON body.
The mounted routes (/generate, /end_session, /info) parse the replayed body with ``request.body()``.
"""
from __future__ import annotations

import hmac
import json
from typing import Any, Callable

import anyio
from starlette.responses import JSONResponse

from .validation import ClientError, parse_json_object, validate_classify

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})      # probes never need the key
ROUTE_METHODS = {"/classify": "POST", "/generate": "POST", "/end_session": "POST", "/info": "GET"}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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
            return b"".join(chunks)


def error_response(err: ClientError, on_error: Callable[[str], None] | None = None) -> JSONResponse:
    if on_error is not None:
        on_error(err.kind)
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    if err.status == 503:
        headers = {"Retry-After": "1"}
    if err.status == 408:       # the rest of a late body may still be on its way: do not read it as a request
        headers = {"Connection": "close"}
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class Gate:
    def __init__(self, app: Any, api_key: str, max_body_bytes: int, max_texts: int, max_text_chars: int,
                 read_timeout_s: float, on_error: Callable[[str], None] | None = None):
        self.app = app
        self.api_key = api_key.encode()
        self.max_body_bytes, self.max_texts, self.max_text_chars = max_body_bytes, max_texts, max_text_chars
        self.read_timeout_s = read_timeout_s
        self.on_error = on_error        # counts errors by kind (metrics)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            await self._check(scope)
            if scope["method"] in BODY_METHODS:
                body = await self._read(receive)
                if scope["path"] == "/classify":
                    body = self._clean_classify(scope, body)
                receive = _replay(body, receive)
        except ClientError as err:
            return await error_response(err, self.on_error)(scope, receive, send)
        await self.app(scope, receive, send)

    async def _read(self, receive: Callable) -> bytes:
        try:
            with anyio.fail_after(self.read_timeout_s):
                return await read_body(receive, self.max_body_bytes)
        except TimeoutError:
            raise ClientError(408, "request_timeout",
                              f"request body not received within {self.read_timeout_s:g} s") from None

    async def _check(self, scope: dict) -> None:
        path = scope["path"]
        if self.api_key and path not in OPEN_PATHS and not self._authorized(scope):
            raise ClientError(401, "unauthorized", "missing or wrong API key "
                                                   "(send 'Authorization: Bearer <key>' or 'X-API-Key: <key>')")
        wanted = ROUTE_METHODS.get(path)
        if wanted and scope["method"] != wanted:
            raise ClientError(405, "method_not_allowed", f"{path} accepts {wanted} only")

    def _authorized(self, scope: dict) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given, self.api_key)

    def _clean_classify(self, scope: dict, body: bytes) -> bytes:
        doc = parse_json_object(body, self.max_body_bytes)
        texts = validate_classify(doc, self.max_texts, self.max_text_chars)
        body = json.dumps({"texts": texts}).encode()
        # BentoML picks its parser by content type: always give it JSON of the exact length
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        scope["headers"] += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        return body


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
