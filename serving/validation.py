"""Request schemas and their validation: every client mistake becomes a ``ClientError`` (a 4xx JSON reply).

Hand-written rather than pydantic so that each message names the field and the limit in plain words, and so
that JSON's quirks are caught: ``true`` is not an integer here, ``1e999`` (inf) and NaN are not numbers.
Error bodies are ``{"error": <message>, "kind": <kind>}``; ``kind`` also labels the errors metric.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")    # secrets.token_urlsafe alphabet
MAX_SEED = 2**63 - 1


class ClientError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "kind": self.kind}


def invalid(message: str) -> ClientError:
    return ClientError(400, "invalid_request", message)


def unknown_session() -> ClientError:
    return ClientError(404, "unknown_session", "unknown or expired session_id")


def parse_json_object(body: bytes, max_bytes: int) -> dict[str, Any]:
    if len(body) > max_bytes:
        raise ClientError(413, "payload_too_large", f"request body over {max_bytes} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ClientError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid("body must be a JSON object")
    return doc


def _no_unknown_fields(doc: dict[str, Any], known: tuple[str, ...]) -> None:
    extra = sorted(set(doc) - set(known))
    if extra:   # a typo ("text", "maxchars") silently ignored would look like a server bug
        raise invalid(f"unknown field {extra[0]!r}; expected {', '.join(known)}")


def _int(doc: dict[str, Any], name: str, default: Any, lo: int, hi: int) -> Any:
    value = doc.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise invalid(f"{name} must be between {lo} and {hi}")
    return value


def _number(doc: dict[str, Any], name: str, default: float) -> float:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"{name} must be a number")
    if not math.isfinite(value):
        raise invalid(f"{name} must be finite")
    return float(value)


def _str(doc: dict[str, Any], name: str, default: Any) -> Any:
    value = doc.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    return value


def validate_classify(doc: dict[str, Any], max_texts: int, max_text_chars: int) -> list[str]:
    _no_unknown_fields(doc, ("texts",))
    texts = doc.get("texts")
    if texts is None:
        raise invalid("texts is required: a list of strings")
    if not isinstance(texts, list):
        raise invalid("texts must be a list of strings")
    if not texts:
        raise invalid("texts must not be empty")
    if len(texts) > max_texts:
        raise invalid(f"too many texts: {len(texts)} > {max_texts}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise invalid(f"texts[{i}] must be a string")
        if not text.strip():
            raise invalid(f"texts[{i}] is empty or whitespace")
        if len(text) > max_text_chars:
            raise invalid(f"texts[{i}] is too long: {len(text)} > {max_text_chars} characters")
    return texts


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_chars: int
    temperature: float      # 0 = greedy
    top_k: int | None       # None = no top-k cut
    top_p: float            # 1.0 = no nucleus cut
    seed: int | None
    session_id: str | None
    keep_session: bool

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


GENERATE_FIELDS = ("prompt", "max_chars", "temperature", "top_k", "top_p", "seed", "session_id", "keep_session")


def validate_generate(doc: dict[str, Any], max_prompt_chars: int, max_chars: int,
                      default_chars: int) -> GenerateRequest:
    _no_unknown_fields(doc, GENERATE_FIELDS)
    prompt = _str(doc, "prompt", "")
    if len(prompt) > max_prompt_chars:
        raise invalid(f"prompt is too long: {len(prompt)} > {max_prompt_chars} characters")
    temperature = _number(doc, "temperature", 1.0)
    if temperature < 0:
        raise invalid("temperature must be >= 0 (0 = greedy)")
    top_p = _number(doc, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise invalid("top_p must be in (0, 1]")
    top_k = _int(doc, "top_k", None, 1, 1_000_000)   # above the vocabulary size = no cut
    session_id = _str(doc, "session_id", None)
    if session_id is not None and not SESSION_ID.match(session_id):
        raise unknown_session()     # cannot be one of ours: no store look-up needed
    keep = doc.get("keep_session", False)
    if not isinstance(keep, bool):
        raise invalid("keep_session must be true or false")
    return GenerateRequest(
        prompt=prompt,
        max_chars=_int(doc, "max_chars", default_chars, 1, max_chars),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=_int(doc, "seed", None, 0, MAX_SEED),
        session_id=session_id,
        keep_session=keep,
    )


def validate_end_session(doc: dict[str, Any]) -> str:
    _no_unknown_fields(doc, ("session_id",))
    session_id = _str(doc, "session_id", None)
    if session_id is None:
        raise invalid("session_id is required")
    if not SESSION_ID.match(session_id):
        raise unknown_session()
    return session_id
