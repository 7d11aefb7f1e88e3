"""The Redis session store end to end: a real redis-server (started here on a free port) shared by two
``bentoml serve`` replicas; a session continues on either replica, and across a restart of the service."""

from __future__ import annotations

import httpx
import pytest
from serving_helpers import Server, generated_text, sse_events

pytestmark = [pytest.mark.slow, pytest.mark.redis]
PROMPT = "Mr. Sherlock Holmes, who was usually very late in the mornings, "


@pytest.fixture(scope="module")
def replicas(redis_server):
    env = {"RNNTEXT_REDIS_URL": redis_server.url}
    servers = [Server(env=env), Server(env=env)]
    try:
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


def gen(url: str, **body) -> list[dict]:
    r = httpx.post(url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return sse_events(r)


def test_session_continues_on_the_other_replica_and_after_a_restart(redis_server, replicas):
    a, b = replicas
    whole = generated_text(gen(a.url, prompt=PROMPT, max_chars=90, temperature=0))
    first = gen(a.url, prompt=PROMPT, max_chars=30, temperature=0, keep_session=True)
    sid = first[-1]["session_id"]
    second = gen(b.url, prompt="", max_chars=30, temperature=0, session_id=sid, keep_session=True)
    assert second[-1]["session_id"] == sid
    assert httpx.get(b.url + "/info", timeout=30).json()["sessions"]["store"] == "redis"

    a.stop()  # restart the service in the middle of the session
    replicas[0] = a = Server(env={"RNNTEXT_REDIS_URL": redis_server.url}, port=a.port)
    a.wait_ready()
    third = gen(a.url, prompt="", max_chars=30, temperature=0, session_id=sid, keep_session=True)
    assert generated_text(first) + generated_text(second) + generated_text(third) == whole

    r = httpx.post(b.url + "/end_session", json={"session_id": sid}, timeout=30)
    assert (r.status_code, r.json()) == (200, {"ended": sid})
    r = httpx.post(a.url + "/generate", json={"session_id": sid}, timeout=30)
    assert (r.status_code, r.json()) == (404, {"error": "unknown or expired session_id", "kind": "unknown_session"})


def test_busy_session_is_409_on_the_other_replica(replicas):
    a, b = replicas
    sid = gen(a.url, prompt=PROMPT, max_chars=5, keep_session=True)[-1]["session_id"]
    with (
        httpx.Client(timeout=120) as c,
        c.stream("POST", a.url + "/generate", json={"session_id": sid, "max_chars": 2000}) as long,
    ):
        assert long.status_code == 200
        lines = long.iter_lines()  # keep this iterator: dropping it would close the response
        next(lines)
        r = httpx.post(b.url + "/generate", json={"session_id": sid, "max_chars": 5}, timeout=30)
        assert (r.status_code, r.json()["kind"]) == (409, "session_busy")


def _fault_replies(url: str, sid: str) -> list[tuple[int, str]]:
    """Status and kind of every session operation (a mid-stream error counts as its event's kind)."""
    out = []
    for body in (
        {"prompt": "x", "max_chars": 5, "keep_session": True},
        {"session_id": sid, "max_chars": 5},
        {"session_id": sid, "max_chars": 5, "keep_session": True},
    ):
        r = httpx.post(url + "/generate", json=body, timeout=60)
        if r.headers["content-type"].startswith("text/event-stream"):
            last = sse_events(r)[-1]
            out.append((r.status_code, last.get("kind", "ok")))
        else:
            out.append((r.status_code, r.json()["kind"]))
    r = httpx.post(url + "/end_session", json={"session_id": sid}, timeout=60)
    out.append((r.status_code, r.json().get("kind", "ok")))
    return out


@pytest.mark.parametrize("fault", ["maxmemory", "acl"])
def test_redis_refusing_writes_is_503_never_500_and_classify_goes_on(redis_server, replicas, fault):
    """OOM at maxmemory (noeviction) and an ACL that takes the service's permissions away: every session operation
    is a 503 store_unavailable (or the stream's last event says so); the service keeps serving, and recovers."""
    import redis

    a, _ = replicas
    sid = gen(a.url, prompt=PROMPT, max_chars=5, keep_session=True)[-1]["session_id"]
    kept = gen(a.url, prompt=PROMPT, max_chars=5, keep_session=True)[-1]["session_id"]  # untouched meanwhile
    admin = redis.Redis(host="127.0.0.1", port=redis_server.port)
    admin.execute_command("ACL", "SETUSER", "admin", "on", ">adminpw", "~*", "&*", "+@all")
    admin = redis.Redis(host="127.0.0.1", port=redis_server.port, username="admin", password="adminpw")
    try:
        if fault == "maxmemory":
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", max(1, int(admin.info("memory")["used_memory"]) - 1024))
        else:
            admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "-@all", "+ping")
        replies = _fault_replies(a.url, sid)
        assert all(status < 500 or (status, kind) == (503, "store_unavailable") for status, kind in replies), replies
        assert (503, "store_unavailable") in replies or (200, "store_unavailable") in replies, replies
        r = httpx.post(a.url + "/classify", json={"texts": ["Shares fell"]}, timeout=60)
        assert r.status_code == 200 and httpx.get(a.url + "/readyz", timeout=30).status_code == 200
    finally:
        admin.config_set("maxmemory", 0)
        admin.execute_command("ACL", "SETUSER", "default", "on", "nopass", "~*", "&*", "+@all")
        admin.execute_command("ACL", "DELUSER", "admin")
    # the store is back: sessions work again, and the one saved before the fault continues
    assert len(generated_text(gen(a.url, session_id=kept, max_chars=5, keep_session=True))) == 5
    assert httpx.get(a.url + "/readyz/sessions", timeout=30).status_code == 200


def test_redis_down_is_503_not_500_and_only_the_sessions_probe_says_so(redis_server, replicas):
    a, _ = replicas
    sid = gen(a.url, prompt=PROMPT, max_chars=5, keep_session=True)[-1]["session_id"]
    redis_server.stop()
    r = httpx.post(a.url + "/generate", json={"session_id": sid, "max_chars": 5}, timeout=60)
    assert (r.status_code, r.json()) == (503, {"error": "session store unavailable", "kind": "store_unavailable"})
    # /readyz is about classifying, which needs no store: a load balancer keeps sending /classify here
    assert httpx.get(a.url + "/readyz", timeout=30).status_code == 200
    r = httpx.get(a.url + "/readyz/sessions", timeout=30)
    assert (r.status_code, r.json(), r.headers["retry-after"]) == (503, {"sessions": "unavailable"}, "1")
    info = httpx.get(a.url + "/info", timeout=30).json()
    assert info["sessions"]["available"] is False and info["sessions"]["active"] is None
    r = httpx.post(a.url + "/classify", json={"texts": ["Shares fell"]}, timeout=60)
    assert r.status_code == 200  # classification does not need the store
