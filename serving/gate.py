"""ASGI middleware in front of every route: what BentoML does not do for us.

* who is calling (serving/clients.py): the API key's name (``Authorization: Bearer <key>`` or ``X-API-Key``),
  required on every route but the health probes and the static pages (the demo and the API docs,
  serving/pages.py), which hold no data and ask for the key themselves; without keys, the client's address. The
  name reaches the endpoints as the ``X-Rnntext-Client`` request header (a client's own is dropped);
* the client's request rate (serving/quotas.py): an API request over it gets 429 ``rate_limited`` with
  ``Retry-After``, before its body is read;
* only API routes read a body: any other route (probes, pages, metrics, unknown paths) answers a request with
  a body ``405`` (a method other than GET/HEAD/OPTIONS) or ``413`` (a GET announcing a body) at once, unread, and
  closes the connection;
* security headers on the pages (``Content-Security-Policy`` with ``'self'`` sources and
  ``frame-ancestors 'none'``, ``X-Frame-Options``) and ``X-Content-Type-Options: nosniff`` on every response;
* a deadline and a size limit for the request body: the gate reads the body itself, within ``read_timeout_s``
  of the request head (a client that sends its body a byte a second gets 408 and its connection closed) and up
  to ``max_body_bytes`` (413), then replays it to BentoML in one message;
* 405 as JSON for a wrong method on an API path;
* every API body is parsed as JSON whatever its ``Content-Type`` says (BentoML would pick another parser by media
  type: pickle is refused with 415, multipart parses differently);
* every 4xx that BentoML answers itself (pydantic's validation report, above all) is rewritten into this
  service's ``{"error", "kind"}`` shape (serving/errors.py ``normalize``);
* under ``/v1/`` (the OpenAI-compatible API) every error body is OpenAI's ``{"error": {"message", "type", "param",
  "code"}}``, the same errors with the same statuses (``code`` is the kind);
* ``X-Rnntext-Worker: <worker index>`` and ``X-Rnntext-Replica: <RNNTEXT_REPLICA>`` on every response, so that a
  client (and the tests, behind a load balancer) can see which worker of which replica served it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from .clients import Client, Directory
from .errors import ClientError, error_response, from_error_doc, normalize, rate_limited
from .pages import is_page

OPEN_PATHS = frozenset({"/livez", "/readyz", "/readyz/sessions", "/healthz"})  # probes never need the key
API_METHODS = {
    "/classify": "POST",
    "/generate": "POST",
    "/end_session": "POST",
    "/stop": "POST",
    "/score": "POST",
    "/info": "POST",
    "/v1/completions": "POST",
    "/v1/models": "GET",  # served beside BentoML's routes (serving/service.py); rate-limited as the others
}
OPENAI_PREFIX = "/v1/"  # errors there are OpenAI's {"error": {"message", "type", "param", "code"}} (completions.py)
ALIASES = {"/info": "GET"}  # GET /info is served too (curl, browsers): serving/service.py
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KEEP_ALIVE_UNREAD = 64 * 1024  # a refused request whose unread body is larger gets its connection closed
JSON_HEADERS = ((b"content-type", b"application/json"),)
CLIENT_HEADER = b"x-rnntext-client"
# the worker's own in-process client (the batcher's warm-up) proves itself with this, made anew in each process
INTERNAL_HEADER, INTERNAL_TOKEN = b"x-rnntext-internal", secrets.token_urlsafe(24).encode()
NOSNIFF = (b"x-content-type-options", b"nosniff")
PAGE_HEADERS = (
    # Swagger UI sets styles from its script and uses data: images for its icons; nothing else is allowed
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
access_log = logging.getLogger("rnntext.access")


def client_of(headers) -> str:
    """The client name the gate put on a request (``X-Rnntext-Client``), for the endpoints."""
    return headers.get(CLIENT_HEADER.decode(), "")


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
    def __init__(
        self,
        app: Any,
        directory: Directory,
        max_body_bytes: int,
        read_timeout_s: float,
        on_error: Callable[[str, str], None] | None = None,
        worker: Callable[[], Any] | None = None,
        quotas: Callable[[], Any] | None = None,
        access_log: bool = False,
        replica: str = "",
    ):
        self.app = app
        self._replica = ((b"x-rnntext-replica", replica.encode()),) if replica else ()
        self.directory = directory
        self.max_body_bytes, self.read_timeout_s = max_body_bytes, read_timeout_s
        self.on_error = on_error  # counts errors by kind and client (metrics)
        self._worker = worker  # the worker index, looked up once it is known
        self._worker_header: tuple[bytes, bytes] | None = None
        self._quotas = quotas  # the worker's Quotas once it is built (None before)
        self._quotas_now = None
        self.access_log = access_log

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        client: Client | None = None
        t0 = time.perf_counter() if self.access_log else 0.0
        openai = path.startswith(OPENAI_PREFIX)
        send = self._tag(send, path in API_METHODS, is_page(path), lambda: client, scope, t0, openai)
        api_body = path in API_METHODS and scope["method"] in BODY_METHODS
        head = _Head(scope, as_json=api_body)
        unread = head.announced  # bytes of body still to come (chunked: unknown, counted as large)
        try:
            self._refuse_unread(scope, unread > 0)
            client = self._identify(scope, head)
            if path in API_METHODS:
                self._method(scope)
                await self._rate(client)
                if api_body:
                    receive = _replay(await self._read(receive), receive)
                    unread = 0
        except ClientError as err:
            on_error = None if self.on_error is None else (lambda kind: self.on_error(kind, _label(client)))
            reply = error_response(err, on_error, openai=openai)
            if unread > KEEP_ALIVE_UNREAD:
                # a large body is still on its way: closing spares both sides sending and discarding it. A small
                # one is discarded by uvicorn's parser as the rest of this request, and the connection lives on
                # (a client refused for its rate keeps its connection: refusals cost half as much so)
                reply.headers["connection"] = "close"
            return await reply(scope, receive, send)
        await self.app(scope, receive, send)

    def _refuse_unread(self, scope: dict, announced: bool) -> None:
        """A route that takes no body gets none read: 405 for a body method, 413 for a GET that announces one; an
        unknown route under /v1/ is a 404 (an OpenAI client asking for what this server lacks, e.g. chat)."""
        path = scope["path"]
        if path in API_METHODS:
            return
        if path.startswith(OPENAI_PREFIX):
            known = sorted(p for p in API_METHODS if p.startswith(OPENAI_PREFIX))
            raise ClientError(404, "not_found", f"no route {path} (this server has {' and '.join(known)})")
        if scope["method"] not in READ_METHODS:
            raise ClientError(
                405, "method_not_allowed", f"{path} accepts GET and HEAD only", headers={"Allow": "GET, HEAD"}
            )
        if announced:
            raise ClientError(413, "payload_too_large", f"{path} takes no request body")

    def _identify(self, scope: dict, head: _Head) -> Client:
        """The client; 401 on a path that needs a key and has none (or a wrong one)."""
        client = None
        if head.internal is not None and head.internal == INTERNAL_TOKEN:
            client = self.directory.internal
        elif self.directory.keyed:
            client = self.directory.by_key(head.key) if head.key else None
            path = scope["path"]
            if client is None and path not in OPEN_PATHS and not is_page(path):
                raise ClientError(
                    401,
                    "unauthorized",
                    "missing or wrong API key (send 'Authorization: Bearer <key>' or 'X-API-Key: <key>')",
                )
        if client is None:
            peer = (scope.get("client") or ("unknown", 0))[0]
            client = self.directory.by_address(self.directory.address_of(peer, head.forwarded))
        scope["headers"].append((CLIENT_HEADER, client.tag.encode()))
        return client

    def _method(self, scope: dict) -> None:
        path = scope["path"]
        wanted = API_METHODS[path]
        if scope["method"] != wanted and scope["method"] != ALIASES.get(path):
            allowed = ", ".join(filter(None, (wanted, ALIASES.get(path))))
            raise ClientError(
                405,
                "method_not_allowed",
                f"{path} accepts {allowed.replace(', ', ' or ')} only",
                headers={"Allow": allowed},
            )

    async def _rate(self, client: Client) -> None:
        if client.limits.rate <= 0:  # unlimited, the worker's own client among them
            return
        if self._quotas_now is None and self._quotas is not None:
            self._quotas_now = self._quotas()  # looked up until the worker has built it, then kept
        quotas = self._quotas_now
        if quotas is None:
            return
        wait = await quotas.take(client.tag, client.limits.rate, client.limits.burst)
        if wait > 0:
            raise rate_limited(client, wait)

    async def _read(self, receive: Callable) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout_s):  # a third of anyio.fail_after's cost per request
                return await read_body(receive, self.max_body_bytes)
        except TimeoutError:
            raise ClientError(
                408, "request_timeout", f"request body not received within {self.read_timeout_s:g} s"
            ) from None

    def _header(self) -> tuple[bytes, bytes]:
        if self._worker_header is None:
            index = self._worker() if self._worker else None
            if index is None:
                return (b"x-rnntext-worker", b"?")
            self._worker_header = (b"x-rnntext-worker", str(index).encode())
        return self._worker_header

    def _tag(
        self,
        send: Callable,
        api: bool,
        page: bool,
        client: Callable[[], Client | None],
        scope: dict,
        t0: float,
        openai: bool = False,
    ) -> Callable:
        """``send`` that adds the worker and security headers, logs the request (RNNTEXT_ACCESS_LOG) and, on API
        paths, rewrites BentoML's own 4xx bodies."""
        held: dict | None = None
        chunks: list[bytes] = []
        extra = (self._header(), *self._replica, NOSNIFF, *(PAGE_HEADERS if page else ()))

        async def tagged(message: dict) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
                if self.access_log:
                    access_log.info(
                        "%s %s %s %d %.1fms",
                        _label(client(), full=True),
                        scope["method"],
                        scope["path"],
                        message["status"],
                        1000 * (time.perf_counter() - t0),
                    )
                if api and 400 <= message["status"] < 500:
                    held = message  # the body decides whether it needs rewriting
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, body, held = held, b"".join(chunks), None
                doc = normalize(start["status"], body)
                if doc is not None:
                    if self.on_error:
                        self.on_error(doc["kind"], _label(client()))
                    if openai:
                        doc = from_error_doc(start["status"], doc)
                    body = json.dumps(doc).encode()
                    start["headers"] = [
                        (k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")
                    ]
                    start["headers"] += [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                await send(start)
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            await send(message)

        return tagged


class _Head:
    """What the gate needs from a request's headers, in one pass over them. The pass also rewrites them for the
    route: a client's own ``X-Rnntext-Client`` and ``X-Rnntext-Internal`` are dropped (only the gate says who the
    client is), and an API body is declared JSON whatever its ``Content-Type`` said."""

    __slots__ = ("key", "forwarded", "internal", "announced")

    def __init__(self, scope: dict, as_json: bool):
        self.key = auth = self.forwarded = self.internal = None
        self.announced: float = 0  # the body's announced size: Content-Length, infinity when chunked
        kept = []
        for k, v in scope["headers"]:
            if k == b"x-api-key":
                self.key = v
            elif k == b"authorization":
                auth = v
            elif k == b"x-forwarded-for":
                self.forwarded = v if self.forwarded is None else self.forwarded + b"," + v
            elif k == b"content-length" and self.announced != math.inf:
                try:
                    self.announced = int(v)
                except ValueError:
                    self.announced = math.inf
            elif k == b"transfer-encoding":
                self.announced = math.inf
            elif k == INTERNAL_HEADER:
                self.internal = v
                continue
            elif k == CLIENT_HEADER or (as_json and k == b"content-type"):
                continue
            kept.append((k, v))
        if auth is not None and auth[:7].lower() == b"bearer ":
            self.key = auth[7:].strip()
        if as_json:
            kept.extend(JSON_HEADERS)
        scope["headers"] = kept


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that hands the route the body already read, in one message."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


def _label(client: Client | None, full: bool = False) -> str:
    """The client as metrics (key names only: addresses would be unbounded) or the access log (both) name it."""
    if client is None:
        return "-"
    return client.name if full else client.label
