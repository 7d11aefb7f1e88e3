"""Request validation: each client mistake maps to one status, kind and message (no server needed)."""
from __future__ import annotations

import pytest

from serving.validation import (
    ClientError,
    parse_json_object,
    validate_classify,
    validate_end_session,
    validate_generate,
)

SID = "A" * 32


def gen(**doc):
    return validate_generate(doc, max_prompt_chars=10, max_chars=50, default_chars=20)


def err(fn, *args, **kwargs) -> ClientError:
    with pytest.raises(ClientError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("body, status, kind, message", [
    (b"{", 400, "malformed_json", "body is not valid JSON: Expecting property name enclosed in double quotes: "
                                  "line 1 column 2 (char 1)"),
    (b"\xff", 400, "malformed_json", None),
    (b"[1]", 400, "invalid_request", "body must be a JSON object"),
    (b"x" * 101, 413, "payload_too_large", "request body over 100 bytes"),
])
def test_parse_json_object_errors(body, status, kind, message):
    e = err(parse_json_object, body, 100)
    assert (e.status, e.kind) == (status, kind)
    if message:
        assert e.message == message
    assert e.body() == {"error": e.message, "kind": kind}


def test_parse_json_object_ok():
    assert parse_json_object(b'{"a": 1}', 100) == {"a": 1}


@pytest.mark.parametrize("doc, message", [
    ({}, "texts is required: a list of strings"),
    ({"texts": "abc"}, "texts must be a list of strings"),
    ({"texts": []}, "texts must not be empty"),
    ({"texts": ["a", "b", "c", "d"]}, "too many texts: 4 > 3"),
    ({"texts": ["a", 1]}, "texts[1] must be a string"),
    ({"texts": ["a", " \n\t "]}, "texts[1] is empty or whitespace"),
    ({"texts": [""]}, "texts[0] is empty or whitespace"),
    ({"texts": ["x" * 11]}, "texts[0] is too long: 11 > 10 characters"),
    ({"texts": ["a"], "text": "b"}, "unknown field 'text'; expected texts"),
])
def test_classify_errors(doc, message):
    e = err(validate_classify, doc, 3, 10)
    assert (e.status, e.kind, e.message) == (400, "invalid_request", message)


def test_classify_ok():
    assert validate_classify({"texts": ["a", "b c"]}, 3, 10) == ["a", "b c"]


@pytest.mark.parametrize("doc, message", [
    ({"prompt": 5}, "prompt must be a string"),
    ({"prompt": "x" * 11}, "prompt is too long: 11 > 10 characters"),
    ({"prompt": "a", "max_chars": 0}, "max_chars must be between 1 and 50"),
    ({"prompt": "a", "max_chars": 51}, "max_chars must be between 1 and 50"),
    ({"prompt": "a", "max_chars": 5.0}, "max_chars must be an integer"),
    ({"prompt": "a", "max_chars": True}, "max_chars must be an integer"),
    ({"prompt": "a", "max_chars": "5"}, "max_chars must be an integer"),
    ({"prompt": "a", "temperature": -0.1}, "temperature must be >= 0 (0 = greedy)"),
    ({"prompt": "a", "temperature": float("nan")}, "temperature must be finite"),
    ({"prompt": "a", "temperature": float("inf")}, "temperature must be finite"),
    ({"prompt": "a", "temperature": "hot"}, "temperature must be a number"),
    ({"prompt": "a", "top_p": 0}, "top_p must be in (0, 1]"),
    ({"prompt": "a", "top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"prompt": "a", "top_k": 0}, "top_k must be between 1 and 1000000"),
    ({"prompt": "a", "top_k": 2.5}, "top_k must be an integer"),
    ({"prompt": "a", "seed": -1}, "seed must be between 0 and 9223372036854775807"),
    ({"prompt": "a", "keep_session": "yes"}, "keep_session must be true or false"),
    ({"prompt": "a", "session_id": 7}, "session_id must be a string"),
    ({"prompt": "a", "maxchars": 7}, "unknown field 'maxchars'; expected prompt, max_chars, temperature, top_k, "
                                     "top_p, seed, session_id, keep_session"),
])
def test_generate_errors(doc, message):
    e = err(gen, **doc)
    assert (e.status, e.kind, e.message) == (400, "invalid_request", message)


@pytest.mark.parametrize("sid", ["short", "x" * 200, "has space in it 1234", "../../../../etc/passwd"])
def test_malformed_session_id_is_unknown(sid):
    e = err(gen, prompt="a", session_id=sid)
    assert (e.status, e.kind, e.message) == (404, "unknown_session", "unknown or expired session_id")
    e = err(validate_end_session, {"session_id": sid})
    assert e.status == 404


def test_generate_defaults_and_values():
    r = gen(prompt="Holmes")
    assert (r.prompt, r.max_chars, r.temperature, r.top_k, r.top_p, r.seed, r.session_id, r.keep_session) == \
        ("Holmes", 20, 1.0, None, 1.0, None, None, False)
    r = gen(prompt="", session_id=SID, max_chars=50, temperature=0, top_k=5, top_p=0.5, seed=3, keep_session=True)
    assert r.sampling() == {"temperature": 0.0, "top_k": 5, "top_p": 0.5}
    assert (r.max_chars, r.seed, r.session_id, r.keep_session) == (50, 3, SID, True)
    assert gen(prompt="a", top_k=None, seed=None).top_k is None


def test_end_session():
    assert validate_end_session({"session_id": SID}) == SID
    assert err(validate_end_session, {}).message == "session_id is required"
    assert err(validate_end_session, {"session_id": None}).message == "session_id is required"
    assert err(validate_end_session, {"session_id": 5}).message == "session_id must be a string"
