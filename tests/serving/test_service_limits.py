"""HTTP tests of client mistakes, limits, the API key and session expiry/eviction, against one real
``bentoml serve`` started with small limits, a 4-second session TTL, 3 sessions at most and an API key."""

from __future__ import annotations

import time

import httpx
import pytest
from serving_helpers import client, generated_text, server, sse_events  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789"
# the one client's session quota is lifted to the global cap, which is what the eviction tests here reach
SERVER_ENV = {
    "RNNTEXT_API_KEY": KEY,
    "RNNTEXT_SESSION_TTL_S": "4",
    "RNNTEXT_MAX_SESSIONS": "3",
    "RNNTEXT_CLIENT_MAX_SESSIONS": "3",
    "RNNTEXT_MAX_TEXTS": "4",
    "RNNTEXT_MAX_TEXT_CHARS": "1000",
    "RNNTEXT_MAX_BODY_BYTES": "20000",
    "RNNTEXT_MAX_PROMPT_CHARS": "200",
    "RNNTEXT_MAX_CHARS": "300",
    "RNNTEXT_DEFAULT_CHARS": "20",
}
CLIENT_HEADERS = AUTH = {"Authorization": f"Bearer {KEY}"}
GONE = {"error": "unknown or expired session_id", "kind": "unknown_session"}


def still_serving(client):
    r = client.post("/classify", json={"texts": ["The match ended in a draw"]})
    assert r.status_code == 200 and len(r.json()) == 1
    r = client.post("/generate", json={"prompt": "Holmes", "max_chars": 3})
    assert r.status_code == 200 and sse_events(r)[-1] == {"done": True, "chars": 3, "finish_reason": "length"}


def error_of(r: httpx.Response) -> tuple[int, dict]:
    """Status and ``{"error", "kind"}``; pydantic's full report (``detail``) is checked in test_schemas.py."""
    return r.status_code, {k: v for k, v in r.json().items() if k != "detail"}


def bad(kind: str, message: str, status: int = 400) -> tuple[int, dict]:
    return status, {"error": message, "kind": kind}


def invalid(message: str) -> tuple[int, dict]:
    return bad("invalid_request", message)


CLASSIFY_CASES = [  # every message comes from pydantic (tests/serving/test_schemas.py has them all)
    (b'{"texts": ["a"', bad("malformed_json", "body is not valid JSON: EOF while parsing a list at line 1 column 14")),
    (b"", invalid("texts: Field required")),
    (b'"just a string"', invalid("body must be a JSON object")),
    (b'{"texts": []}', invalid("texts: List should have at least 1 item after validation, not 0")),
    (
        b'{"texts": ["a", "b", "c", "d", "e"]}',
        invalid("texts: List should have at most 4 items after validation, not 5"),
    ),
    (b'{"texts": ["ok", 42]}', invalid("texts[1]: Input should be a valid string")),
    (b'{"texts": ["ok", "  \\n\\t "]}', invalid("texts[1]: is empty or whitespace only")),
    (('{"texts": ["' + "x" * 1001 + '"]}').encode(), invalid("texts[0]: String should have at most 1000 characters")),
    (('{"texts": ["' + "x" * 20001 + '"]}').encode(), bad("payload_too_large", "request body over 20000 bytes", 413)),
    (b'{"texts": ["ok"], "lang": "en"}', invalid("unknown field 'lang'")),
]


@pytest.mark.parametrize("body, expected", CLASSIFY_CASES)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_classify_client_errors(client, body, expected, content_type):
    r = client.post("/classify", content=body, headers={"Content-Type": content_type})
    assert error_of(r) == expected
    still_serving(client)


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "application/vnd.bentoml+pickle", "application/x-www-form-urlencoded"],
)
def test_classify_reads_any_content_type_as_json(client, content_type):
    """BentoML would pick another parser (or answer 415) by content type; the body is JSON whatever it says."""
    r = client.post("/classify", content=b'{"texts": ["The match"]}', headers={"Content-Type": content_type})
    assert r.status_code == 200 and len(r.json()) == 1
    r = client.post("/classify", content=b"--x\r\n", headers={"Content-Type": content_type})
    assert (r.status_code, r.json()["kind"]) == (400, "malformed_json")


GENERATE_CASES = [
    (b"{nope", bad("malformed_json", "body is not valid JSON: key must be a string at line 1 column 2")),
    (b"[]", invalid("body must be a JSON object")),
    (('{"prompt": "' + "y" * 201 + '"}').encode(), invalid("prompt: String should have at most 200 characters")),
    (b'{"prompt": "a", "max_chars": 301}', invalid("max_chars: Input should be less than or equal to 300")),
    (b'{"prompt": "a", "max_chars": "10"}', invalid("max_chars: Input should be a valid integer")),
    (b'{"prompt": "a", "temperature": NaN}', invalid("temperature: Input should be a finite number")),
    (b'{"prompt": "a", "top_k": true}', invalid("top_k: Input should be a valid integer")),
    (b'{"prompt": "a", "keep_session": 1}', invalid("keep_session: Input should be a valid boolean")),
    (b'{"prompt": "a", "maxchars": 3}', invalid("unknown field 'maxchars'")),
    (b'{"prompt": "a", "session_id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', (404, GONE)),
    (b'{"prompt": "a", "session_id": "../etc"}', (404, GONE)),
]


@pytest.mark.parametrize("body, expected", GENERATE_CASES)
def test_generate_client_errors(client, body, expected):
    r = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert error_of(r) == expected
    still_serving(client)


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"{", bad("malformed_json", "body is not valid JSON: EOF while parsing an object at line 1 column 1")),
        (b"{}", invalid("session_id: Field required")),
        (b'{"session_id": 5}', invalid("session_id: Input should be a valid string")),
        (b'{"session_id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', (404, GONE)),
    ],
)
def test_end_session_client_errors(client, body, expected):
    r = client.post("/end_session", content=body)
    assert error_of(r) == expected
    still_serving(client)


@pytest.mark.parametrize(
    "method, path", [("GET", "/classify"), ("GET", "/generate"), ("PUT", "/end_session"), ("DELETE", "/info")]
)
def test_wrong_method_is_405_json(client, method, path):
    r = client.request(method, path)
    want = {"/info": "POST or GET"}.get(path, "POST")
    assert (r.status_code, r.json()) == (405, {"error": f"{path} accepts {want} only", "kind": "method_not_allowed"})


UNAUTHORIZED = {
    "error": "missing or wrong API key (send 'Authorization: Bearer <key>' or 'X-API-Key: <key>')",
    "kind": "unauthorized",
}


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/classify", {"texts": ["a"]}),
        ("POST", "/generate", {"prompt": "a"}),
        ("POST", "/end_session", {"session_id": "A" * 32}),
        ("GET", "/info", None),
        ("GET", "/metrics", None),
        ("POST", "/info", None),
    ],
)
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


def test_the_static_pages_need_no_key(server):
    """The demo and API docs pages hold no data and ask for the key themselves (serving/pages.py); the docs page
    loads the schema and BentoML's Swagger UI files, so those are open too."""
    for path in ("/", "/demo", "/demo/demo.js", "/favicon.ico", "/docs.json", "/static_content/swagger-ui.css"):
        r = httpx.get(server.url + path, timeout=10)
        assert r.status_code == 200, path
    assert httpx.get(server.url + "/demo/missing.js", timeout=10).json() == {
        "error": "no such file: /demo/missing.js",
        "kind": "not_found",
    }


def new_session(client, prompt="Baker Street") -> str:
    events = sse_events(client.post("/generate", json={"prompt": prompt, "max_chars": 5, "keep_session": True}))
    return events[-1]["session_id"]


def cont(client, sid):
    return client.post("/generate", json={"session_id": sid, "max_chars": 3, "keep_session": True})


def test_sessions_expire_after_idle_ttl(client):
    sid = new_session(client)
    time.sleep(2.5)
    assert cont(client, sid).status_code == 200  # used within the TTL: kept, and the idle clock restarts
    time.sleep(2.5)
    assert cont(client, sid).status_code == 200  # 5 s after creation, but only 2.5 s idle
    time.sleep(4.5)
    r = cont(client, sid)
    assert (r.status_code, r.json()) == (404, GONE)


def test_least_recently_used_session_is_evicted(client):
    time.sleep(4.5)  # sessions of earlier tests have expired
    s1, s2, s3 = (new_session(client, p) for p in ("one", "two", "three"))
    assert cont(client, s1).status_code == 200  # s1 used again: s2 is now the least recently used
    s4 = new_session(client, "four")
    r = cont(client, s2)
    assert (r.status_code, r.json()) == (404, GONE)
    for sid in (s1, s3, s4):
        assert cont(client, sid).status_code == 200
    assert client.get("/info").json()["sessions"]["active"] == 3


def test_session_continuation_text_is_unaffected_by_other_sessions(client):
    a = client.post("/generate", json={"prompt": "Elementary", "max_chars": 60, "temperature": 0})
    first = client.post(
        "/generate", json={"prompt": "Elementary", "max_chars": 30, "temperature": 0, "keep_session": True}
    )
    sid = sse_events(first)[-1]["session_id"]
    new_session(client, "noise")
    second = client.post("/generate", json={"session_id": sid, "max_chars": 30, "temperature": 0})
    assert generated_text(sse_events(first)) + generated_text(sse_events(second)) == generated_text(sse_events(a))
