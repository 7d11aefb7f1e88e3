"""HTTP tests of client mistakes, limits, the API key and session expiry/eviction, against one real
``bentoml serve`` started with small limits, a 4-second session TTL, 3 sessions at most and an API key."""
from __future__ import annotations

import time

import httpx
import pytest

from serving_helpers import client, generated_text, server, sse_events  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789"
SERVER_ENV = {"RNNTEXT_API_KEY": KEY, "RNNTEXT_SESSION_TTL_S": "4", "RNNTEXT_MAX_SESSIONS": "3",
       "RNNTEXT_MAX_TEXTS": "4", "RNNTEXT_MAX_TEXT_CHARS": "1000", "RNNTEXT_MAX_BODY_BYTES": "20000",
       "RNNTEXT_MAX_PROMPT_CHARS": "200", "RNNTEXT_MAX_CHARS": "300", "RNNTEXT_DEFAULT_CHARS": "20"}
CLIENT_HEADERS = AUTH = {"Authorization": f"Bearer {KEY}"}
GONE = {"error": "unknown or expired session_id", "kind": "unknown_session"}


def still_serving(client):
    r = client.post("/classify", json={"texts": ["The match ended in a draw"]})
    assert r.status_code == 200 and len(r.json()) == 1
    r = client.post("/generate", json={"prompt": "Holmes", "max_chars": 3})
    assert r.status_code == 200 and sse_events(r)[-1] == {"done": True, "chars": 3}


def bad(kind: str, message: str, status: int = 400) -> tuple[int, dict]:
    return status, {"error": message, "kind": kind}


def invalid(message: str) -> tuple[int, dict]:
    return bad("invalid_request", message)


CLASSIFY_CASES = [
    (b'{"texts": ["a"', bad("malformed_json", "body is not valid JSON: Expecting ',' delimiter: line 1 column 15 "
                                              "(char 14)")),
    (b"", bad("malformed_json", "body is not valid JSON: Expecting value: line 1 column 1 (char 0)")),
    (b'"just a string"', invalid("body must be a JSON object")),
    (b"{}", invalid("texts is required: a list of strings")),
    (b'{"texts": "one text"}', invalid("texts must be a list of strings")),
    (b'{"texts": []}', invalid("texts must not be empty")),
    (b'{"texts": ["a", "b", "c", "d", "e"]}', invalid("too many texts: 5 > 4")),
    (b'{"texts": ["ok", 42]}', invalid("texts[1] must be a string")),
    (b'{"texts": [null]}', invalid("texts[0] must be a string")),
    (b'{"texts": [""]}', invalid("texts[0] is empty or whitespace")),
    (b'{"texts": ["ok", "  \\n\\t "]}', invalid("texts[1] is empty or whitespace")),
    (('{"texts": ["' + "x" * 1001 + '"]}').encode(), invalid("texts[0] is too long: 1001 > 1000 characters")),
    (('{"texts": ["' + "x" * 20001 + '"]}').encode(), bad("payload_too_large", "request body over 20000 bytes",
                                                          413)),
    (b'{"texts": ["ok"], "lang": "en"}', invalid("unknown field 'lang'; expected texts")),
]


@pytest.mark.parametrize("body, expected", CLASSIFY_CASES)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_classify_client_errors(client, body, expected, content_type):
    r = client.post("/classify", content=body, headers={"Content-Type": content_type})
    assert (r.status_code, r.json()) == expected
    still_serving(client)


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/vnd.bentoml+pickle",
                                          "application/x-www-form-urlencoded"])
def test_classify_reads_any_content_type_as_json(client, content_type):
    """BentoML would pick another parser (or answer 415) by content type; the body is JSON whatever it says."""
    r = client.post("/classify", content=b'{"texts": ["The match"]}', headers={"Content-Type": content_type})
    assert r.status_code == 200 and len(r.json()) == 1
    r = client.post("/classify", content=b"--x\r\n", headers={"Content-Type": content_type})
    assert (r.status_code, r.json()["kind"]) == (400, "malformed_json")


GENERATE_CASES = [
    (b"{nope", bad("malformed_json", "body is not valid JSON: Expecting property name enclosed in double quotes:"
                                     " line 1 column 2 (char 1)")),
    (b"[]", invalid("body must be a JSON object")),
    (b'{"prompt": 12}', invalid("prompt must be a string")),
    (('{"prompt": "' + "y" * 201 + '"}').encode(), invalid("prompt is too long: 201 > 200 characters")),
    (b'{"prompt": "a", "max_chars": 0}', invalid("max_chars must be between 1 and 300")),
    (b'{"prompt": "a", "max_chars": 301}', invalid("max_chars must be between 1 and 300")),
    (b'{"prompt": "a", "max_chars": "10"}', invalid("max_chars must be an integer")),
    (b'{"prompt": "a", "max_chars": 10.5}', invalid("max_chars must be an integer")),
    (b'{"prompt": "a", "temperature": -1}', invalid("temperature must be >= 0 (0 = greedy)")),
    (b'{"prompt": "a", "temperature": NaN}', invalid("temperature must be finite")),
    (b'{"prompt": "a", "temperature": 1e999}', invalid("temperature must be finite")),
    (b'{"prompt": "a", "temperature": "warm"}', invalid("temperature must be a number")),
    (b'{"prompt": "a", "top_p": 0}', invalid("top_p must be in (0, 1]")),
    (b'{"prompt": "a", "top_p": 1.01}', invalid("top_p must be in (0, 1]")),
    (b'{"prompt": "a", "top_k": 0}', invalid("top_k must be between 1 and 1000000")),
    (b'{"prompt": "a", "top_k": true}', invalid("top_k must be an integer")),
    (b'{"prompt": "a", "seed": -5}', invalid("seed must be between 0 and 9223372036854775807")),
    (b'{"prompt": "a", "keep_session": 1}', invalid("keep_session must be true or false")),
    (b'{"prompt": "a", "session_id": ["x"]}', invalid("session_id must be a string")),
    (b'{"prompt": "a", "session_id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', (404, GONE)),
    (b'{"prompt": "a", "session_id": "../etc"}', (404, GONE)),
]


@pytest.mark.parametrize("body, expected", GENERATE_CASES)
def test_generate_client_errors(client, body, expected):
    r = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == expected
    still_serving(client)


@pytest.mark.parametrize("body, expected", [
    (b"{", bad("malformed_json", "body is not valid JSON: Expecting property name enclosed in double quotes: "
                                 "line 1 column 2 (char 1)")),
    (b"{}", invalid("session_id is required")),
    (b'{"session_id": 5}', invalid("session_id must be a string")),
    (b'{"session_id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', (404, GONE)),
])
def test_end_session_client_errors(client, body, expected):
    r = client.post("/end_session", content=body)
    assert (r.status_code, r.json()) == expected
    still_serving(client)


@pytest.mark.parametrize("method, path", [("GET", "/classify"), ("GET", "/generate"), ("PUT", "/end_session"),
                                          ("POST", "/info")])
def test_wrong_method_is_405_json(client, method, path):
    r = client.request(method, path)
    want = {"/info": "GET"}.get(path, "POST")
    assert (r.status_code, r.json()) == (405, {"error": f"{path} accepts {want} only",
                                               "kind": "method_not_allowed"})


UNAUTHORIZED = {"error": "missing or wrong API key (send 'Authorization: Bearer <key>' or 'X-API-Key: <key>')",
                "kind": "unauthorized"}


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/classify", {"texts": ["a"]}), ("POST", "/generate", {"prompt": "a"}),
    ("POST", "/end_session", {"session_id": "A" * 32}), ("GET", "/info", None), ("GET", "/metrics", None),
    ("GET", "/docs.json", None)])
def test_api_key_required(server, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]}, {"Authorization": KEY}):
        r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
    for headers in (AUTH, {"X-API-Key": KEY}, {"authorization": f"bearer {KEY}"}):
        r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)
        assert r.status_code != 401


def test_batcher_warm_up_passed_the_key_gate(client):
    assert client.get("/info").json()["batcher_warm"] is True


def test_health_checks_need_no_key(server):
    for path in ("/livez", "/readyz", "/healthz"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200


def new_session(client, prompt="Baker Street") -> str:
    events = sse_events(client.post("/generate", json={"prompt": prompt, "max_chars": 5, "keep_session": True}))
    return events[-1]["session_id"]


def cont(client, sid):
    return client.post("/generate", json={"session_id": sid, "max_chars": 3, "keep_session": True})


def test_sessions_expire_after_idle_ttl(client):
    sid = new_session(client)
    time.sleep(2.5)
    assert cont(client, sid).status_code == 200     # used within the TTL: kept, and the idle clock restarts
    time.sleep(2.5)
    assert cont(client, sid).status_code == 200     # 5 s after creation, but only 2.5 s idle
    time.sleep(4.5)
    r = cont(client, sid)
    assert (r.status_code, r.json()) == (404, GONE)


def test_least_recently_used_session_is_evicted(client):
    time.sleep(4.5)     # sessions of earlier tests have expired
    s1, s2, s3 = (new_session(client, p) for p in ("one", "two", "three"))
    assert cont(client, s1).status_code == 200      # s1 used again: s2 is now the least recently used
    s4 = new_session(client, "four")
    r = cont(client, s2)
    assert (r.status_code, r.json()) == (404, GONE)
    for sid in (s1, s3, s4):
        assert cont(client, sid).status_code == 200
    assert client.get("/info").json()["sessions"]["active"] == 3


def test_session_continuation_text_is_unaffected_by_other_sessions(client):
    a = client.post("/generate", json={"prompt": "Elementary", "max_chars": 60, "temperature": 0})
    first = client.post("/generate", json={"prompt": "Elementary", "max_chars": 30, "temperature": 0,
                                           "keep_session": True})
    sid = sse_events(first)[-1]["session_id"]
    new_session(client, "noise")
    second = client.post("/generate", json={"session_id": sid, "max_chars": 30, "temperature": 0})
    assert generated_text(sse_events(first)) + generated_text(sse_events(second)) == \
        generated_text(sse_events(a))
