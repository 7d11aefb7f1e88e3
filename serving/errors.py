"""Client errors: every one is answered with a 4xx (or 503) JSON body ``{"error": <message>, "kind": <kind>}``.

``kind`` is stable (clients branch on it; it also labels the errors metric), ``error`` is for people. Errors
raised by this service's code are ``ClientError``s; the ones BentoML answers itself (pydantic's validation
report, a refused media type) are rewritten into the same shape by ``normalize`` (called by serving/gate.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse


class ClientError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self._headers = headers

    def body(self) -> dict[str, str]:
        return {"error": self.message, "kind": self.kind}

    def headers(self) -> dict[str, str] | None:
        if self._headers is not None:
            return self._headers
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.status == 503:
            return {"Retry-After": "1"}
        if self.status == 408:  # the rest of a late body may still be on its way: do not read it as a request
            return {"Connection": "close"}
        return None


def unknown_session() -> ClientError:
    return ClientError(404, "unknown_session", "unknown or expired session_id")


def session_busy() -> ClientError:
    return ClientError(409, "session_busy", "session is in use by another request; retry when it has finished")


def not_generating() -> ClientError:
    return ClientError(409, "not_generating", "this session has no running stream to stop (it has ended, or not begun)")


def store_down() -> ClientError:
    return ClientError(503, "store_unavailable", "session store unavailable")


def rate_limited(client: Any, wait_s: float) -> ClientError:
    """429 for a client over its request rate; ``Retry-After`` is the wait for its next token, in whole seconds."""
    retry = max(1, math.ceil(wait_s))
    return ClientError(
        429,
        "rate_limited",
        f"client {client.name!r} is over its rate of {client.limits.rate:g} "
        f"requests/s (burst {client.limits.burst}); retry in {retry} s",
        headers={"Retry-After": str(retry)},
    )


def quota_exceeded(message: str, retry_after: int = 1) -> ClientError:
    """429 for a client at one of its quotas (concurrent streams)."""
    return ClientError(429, "quota_exceeded", message, headers={"Retry-After": str(retry_after)})


def overloaded(message: str) -> ClientError:
    return ClientError(503, "overloaded", message)


def draining() -> ClientError:
    """503 for a new stream on a server that is shutting down (SIGTERM): another replica takes it."""
    return ClientError(
        503, "draining", "this server is shutting down and takes no new streams; retry (another replica will serve it)"
    )


def openai_body(status: int, kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body (``/v1/`` routes): ``type`` from the status as OpenAI names it, ``code`` the kind."""
    return {
        "error": {
            "message": message,
            "type": OPENAI_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": kind,
        }
    }


OPENAI_TYPES = {  # status -> OpenAI's error "type" (vLLM uses its exception classes' names instead)
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "overloaded_error",
}


def from_error_doc(status: int, doc: dict[str, Any]) -> dict[str, Any]:
    """This service's ``{"error", "kind", "detail"}`` body as OpenAI's; ``param`` from a validation problem."""
    param = None
    detail = doc.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        param = _where(detail[0].get("loc") or ()) or None
    return openai_body(status, doc["kind"], doc["error"], param)


def error_response(
    err: ClientError, on_error: Callable[[str], None] | None = None, openai: bool = False
) -> JSONResponse:
    if on_error is not None:
        on_error(err.kind)
    body = openai_body(err.status, err.kind, err.message) if openai else err.body()
    return JSONResponse(body, status_code=err.status, headers=err.headers())


# ---------------------------------------------------------------- BentoML's own error bodies
KIND_BY_STATUS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "overloaded",
}


# the names pydantic gives the members of a union in an error's location ("constrained-str", "list[str]"): not
# fields, so a client is not shown them (this API's field names have neither "-" nor "[")
_UNION_MEMBER = re.compile(r"[-\[]|^(str|int|float|bool|none|dict|list)$")


def _field_path(loc: tuple | list) -> list:
    return [p for p in loc if isinstance(p, int) or not _UNION_MEMBER.search(str(p))]


def _where(loc: tuple | list) -> str:
    """pydantic's location ('texts', 0) as the client wrote it: texts[0]."""
    out = ""
    for part in _field_path(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _most_relevant(detail: list[dict]) -> dict:
    """The problem to name: for a value of a union (``str | list[str]``), the one of the member the value's type
    matches (five stop sequences: "too many", not "should be a string"); else the first."""
    for problem in detail:  # the list member failed for another reason than "not a list": the value was one
        if problem.get("type") != "list_type" and any(str(p).startswith("list[") for p in problem.get("loc") or ()):
            return problem
    return detail[0]


def normalize(status: int, body: bytes) -> dict[str, Any] | None:
    """The ``{"error", "kind"}`` body for one of BentoML's 4xx replies, or None when it already has that shape.

    pydantic's report (``{"error": "1 validation error for Input", "detail": [...]}``) becomes the first
    problem in plain words, e.g. ``texts[0]: String should have at least 1 character``, with the full list
    kept under ``detail``.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        doc = body.decode(errors="replace").strip()
    if isinstance(doc, list) and len(doc) == 1:  # BentoML wraps some errors in a one-item list
        doc = doc[0]
    if isinstance(doc, dict) and ("kind" in doc or isinstance(doc.get("error"), dict)):
        return None  # this service's own shape, or OpenAI's (the /v1/ routes)
    detail = doc.get("detail") if isinstance(doc, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = _most_relevant(detail)
        if first.get("type") == "json_invalid":
            msg = str(first.get("msg", "")).removeprefix("Invalid JSON: ")
            return {"error": f"body is not valid JSON: {msg}", "kind": "malformed_json"}
        where = _where(first.get("loc") or ())
        if first.get("type") == "extra_forbidden":
            message = f"unknown field {where!r}"
        elif first.get("type") == "model_type":
            message = "body must be a JSON object"
        elif first.get("type") == "string_pattern_mismatch":  # the only pattern: r"\S" (schemas.py)
            message = f"{where}: is empty or whitespace only"
        else:
            msg = str(first.get("msg")).removeprefix("Value error, ")  # a validator's own ValueError
            message = f"{where}: {msg}" if where else msg
        return {"error": message, "kind": "invalid_request", "detail": detail}
    message = doc.get("error") if isinstance(doc, dict) else doc
    return {"error": str(message or "bad request"), "kind": KIND_BY_STATUS.get(status, "invalid_request")}
