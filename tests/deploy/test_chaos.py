"""Chaos against a real local cluster (deploy/cluster.py: redis-server, 3 ``bentoml serve`` replicas, nginx): what a
client sees when a replica dies mid-stream, when replicas are restarted one by one, when Redis restarts or is down
when the replicas start. Every figure the tests measure is printed (``-s``) and recorded in docs/cluster.md.

The replicas run fp32, whose greedy and seeded text does not depend on which streams share a step (int8's does:
issue 26), so that "continues exactly" can be checked under load; and a 3 s session lease, so that the sessions a
killed replica was streaming are free again 3 s later instead of the default 30 s.
"""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest
from serving_helpers import generated_text, sse_events

from deploy.cluster import Cluster
from loadtests.server import ONE_CLIENT_LIMITS, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.skipif(not (shutil.which("nginx") and shutil.which("redis-server")), reason="needs nginx, redis"),
]
PROMPTS = [
    "Mr. Sherlock Holmes, who was usually very late in the mornings, ",
    "It was a cold morning of the early spring, ",
    "I had called upon my friend ",
    "The lamp had been lit, and ",
]
LEASE_S = 3
ENV = {
    **ONE_CLIENT_LIMITS,  # all load arrives from nginx as one client (127.0.0.1)
    "RNNTEXT_PRECISION": "fp32",
    "RNNTEXT_SESSION_LEASE_S": str(LEASE_S),
    "RNNTEXT_DRAIN_S": "20",
    "RNNTEXT_MAX_CHARS": "20000",
    "RNNTEXT_THREADS": "1",
}
HEAD = 40  # characters each prepared session has read before the chaos
STREAM = 10000  # characters of each stream in flight when a replica is killed (long enough to be cut)
REFERENCE = HEAD + STREAM + 60


@pytest.fixture(scope="module")
def cluster():
    with Cluster(replicas=3, port=free_port(), env=ENV) as c:
        yield c


@pytest.fixture(autouse=True)
def whole_again(cluster):
    """Each test starts from the whole cluster, whatever the one before it killed or stopped (even if it failed)."""
    yield
    if not cluster.redis.alive:
        cluster.start_redis()
    for i, replica in enumerate(cluster.replicas):
        if not replica.alive:
            cluster.start_replica(i)


def gen(url: str, **body) -> tuple[list[dict], str]:
    r = httpx.post(url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return sse_events(r), r.headers["x-rnntext-replica"]


def continue_until_free(url: str, sid: str, chars: int, timeout: float = 30) -> tuple[str, float]:
    """Continue a session greedily, retrying while it is still leased by a stream that died with its replica."""
    t0 = time.monotonic()
    while True:
        r = httpx.post(url + "/generate", json={"session_id": sid, "max_chars": chars, "temperature": 0,
                                               "keep_session": True}, timeout=60)  # fmt: skip
        if r.status_code == 200:
            return generated_text(sse_events(r)), time.monotonic() - t0
        assert (r.status_code, r.json()["kind"]) == (409, "session_busy"), r.text
        assert time.monotonic() - t0 < timeout, "the dead replica's lease never lapsed"
        time.sleep(0.25)


class Load:
    """Threads of /classify through nginx, and optionally streams (continuing prepared sessions), recording every
    request's outcome: (start, end, status or exception name, replica)."""

    def __init__(self, url: str, classify_threads: int = 3, streams: dict[str, int] | None = None, looping: int = 0):
        self.url, self.stop = url, threading.Event()
        self.classified: list[tuple[float, float, object, str]] = []
        self.streamed: dict[str, dict] = {}  # sid -> {"text", "done", "replica", "error"}
        self.looped: list[tuple[float, object, str]] = []  # (start, status or exception, replica) of looping streams
        self.threads = [threading.Thread(target=self._classify, daemon=True) for _ in range(classify_threads)]
        for sid, n in (streams or {}).items():
            self.threads.append(threading.Thread(target=self._stream, args=(sid, n), daemon=True))
        self.threads += [threading.Thread(target=self._loop, daemon=True) for _ in range(looping)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def _classify(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(self.url + "/classify", json={"texts": ["The match ended in a draw after extra time"]})
                    out, rep = r.status_code, r.headers.get("x-rnntext-replica", "?")
                except httpx.HTTPError as exc:
                    out, rep = type(exc).__name__, "?"
                self.classified.append((t0, time.monotonic(), out, rep))

    def _stream(self, sid: str, chars: int) -> None:
        rec = self.streamed[sid] = {"text": "", "done": None, "replica": None, "error": None}
        body = {"session_id": sid, "max_chars": chars, "temperature": 0, "keep_session": True}
        try:
            with httpx.stream("POST", self.url + "/generate", json=body, timeout=120) as r:
                rec["replica"] = r.headers.get("x-rnntext-replica")
                rec["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        event = httpx.Response(200, content=line[6:]).json()
                        rec["text"] += event.get("text", "")
                        if event.get("done"):
                            rec["done"] = event
        except httpx.HTTPError as exc:
            rec["error"] = type(exc).__name__

    def _loop(self) -> None:
        """Back to back until stopped: a new kept session of 400 characters, then 100 more of it (each request on
        whichever replica nginx picks)."""
        while not self.stop.is_set():
            sid = None
            for body in ({"prompt": "The ", "max_chars": 400, "keep_session": True}, {"max_chars": 100}):
                t0 = time.monotonic()
                try:
                    r = httpx.post(self.url + "/generate", json={**body, **({"session_id": sid} if sid else {})},
                                   timeout=120)  # fmt: skip
                    events = sse_events(r) if r.status_code == 200 else [{}]
                    ok = r.status_code == 200 and events[-1].get("done") and "error" not in events[-1]
                    out, sid = (200 if ok else r.status_code), events[-1].get("session_id", sid)
                    rep = r.headers.get("x-rnntext-replica", "?")
                except httpx.HTTPError as exc:
                    out, rep = type(exc).__name__, "?"
                self.looped.append((t0, out, rep))
                if out != 200:
                    break

    def failures(self, after: float = 0.0) -> list[tuple[float, float, object, str]]:
        return [c for c in self.classified if c[2] != 200 and c[1] >= after]


def prepare(cluster: Cluster, n: int) -> dict[str, tuple[int, str]]:
    """n greedy sessions that have read HEAD characters, saved through nginx (so by every replica): sid -> (prompt
    index, saving replica)."""
    out = {}
    for i in range(n):
        events, replica = gen(cluster.url, prompt=PROMPTS[i % len(PROMPTS)], max_chars=HEAD, temperature=0,
                              keep_session=True)  # fmt: skip
        out[events[-1]["session_id"]] = (i % len(PROMPTS), replica)
    return out


@pytest.fixture(scope="module")
def reference(cluster):
    """Each prompt's greedy text in one request (the four at once): what every continuation must reproduce."""
    from concurrent.futures import ThreadPoolExecutor

    def one(prompt: str) -> str:
        return generated_text(gen(cluster.url, prompt=prompt, max_chars=REFERENCE, temperature=0)[0])

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return dict(enumerate(pool.map(one, PROMPTS)))


def test_any_session_continues_on_any_replica(cluster):
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}):
        whole = generated_text(gen(cluster.replica_url(0), prompt=PROMPTS[0], max_chars=300, **sampling)[0])
        parts, served, sid = [], [], None
        for i in range(3):  # the three parts on the three replicas, straight to their ports
            body = {"max_chars": 100, "keep_session": True, "temperature": sampling["temperature"]}
            # a continued session carries on with its own random generator: the seed only starts it
            body.update({"prompt": PROMPTS[0], "seed": sampling.get("seed")} if sid is None else {"session_id": sid})
            events, replica = gen(cluster.replica_url(i), **body)
            sid = events[-1]["session_id"]
            parts.append(generated_text(events))
            served.append(replica)
        assert served == cluster.names
        assert "".join(parts) == whole, sampling


def test_nginx_names_the_client_and_the_replica(cluster):
    """The service trusts nginx's X-Forwarded-For (RNNTEXT_TRUSTED_PROXIES=127.0.0.1/32): a client connecting from
    127.0.0.5 is 127.0.0.5 to every replica, whatever X-Forwarded-For it sends itself."""
    transport = httpx.HTTPTransport(local_address="127.0.0.5")
    with httpx.Client(transport=transport, timeout=30) as c:
        seen = set()
        for _ in range(6):
            r = c.get(cluster.url + "/info", headers={"X-Forwarded-For": "10.9.9.9"})
            assert r.json()["client"]["name"] == "127.0.0.5" and r.json()["replica"] == r.headers["x-rnntext-replica"]
            seen.add(r.headers["x-rnntext-replica"])
        assert seen == set(cluster.names)  # least_conn with idle replicas spreads the requests over all three
        r = c.post(cluster.url + "/classify", content=b"x" * (2 * 1024 * 1024 + 1))  # over the body limit
        assert r.status_code == 413 and "x-rnntext-replica" not in r.headers  # refused by nginx, no replica read it


def test_a_replica_killed_mid_stream(cluster, reference):
    sessions = prepare(cluster, 16)
    victim = 1
    with Load(cluster.url, classify_threads=3, streams={sid: STREAM for sid in sessions}) as load:
        time.sleep(1.5)
        killed_at = time.monotonic()
        cluster.kill(victim)  # SIGKILL to its main process and workers at once
        dead_at = time.monotonic()  # every process of it reaped
        time.sleep(4)
    failed = load.failures()
    after = [c for c in load.classified if c[0] > dead_at]
    recovered_at = max((c[1] for c in failed), default=killed_at)
    on_victim = {s for s, r in load.streamed.items() if r["replica"] == cluster.names[victim]}
    cut = {s for s, r in load.streamed.items() if r["done"] is None}
    print(f"\nkilled {cluster.names[victim]} (reaped in {dead_at - killed_at:.2f} s): {len(failed)} of "
          f"{len(load.classified)} /classify failed "
          f"({[c[2] for c in failed]}), {len(cut)} of {len(sessions)} streams cut; all requests succeed "
          f"{recovered_at - killed_at:.2f} s after the kill; {len(after)} /classify after it")  # fmt: skip
    # only requests in flight on the dead replica fail: its streams, and at most one /classify per load thread
    assert cut == on_victim and on_victim
    assert len(failed) <= 3 and all(c[0] <= dead_at for c in failed), failed
    assert recovered_at - killed_at < 2.0
    # nginx sends them to the two left (least_conn: mostly to the one holding fewer streams)
    assert after and all(c[2] == 200 and c[3] in (cluster.names[0], cluster.names[2]) for c in after)

    # every kept session continues exactly from its last saved state, on the replicas left
    waits = []
    for sid, (p, saved_by) in sessions.items():
        text, waited = continue_until_free(cluster.url, sid, 50)
        waits.append(waited)
        done = load.streamed[sid]["done"]
        start = HEAD if sid in cut else HEAD + done["chars"]  # a cut stream never saved: the state before it
        assert text == reference[p][start : start + 50], (sid, saved_by, sid in cut)
    print(f"sessions the dead replica was streaming continued after {max(waits):.1f} s (lease {LEASE_S} s)")
    assert any(saved_by == cluster.names[victim] for _, saved_by in sessions.values())


def test_redis_down_when_a_replica_starts(cluster):
    cluster.stop_redis()
    cluster.drain(2)
    t0 = time.monotonic()
    cluster.start_replica(2)  # ready (it can classify) with no Redis
    url = cluster.replica_url(2)
    print(f"\nreplica started without Redis, ready in {time.monotonic() - t0:.1f} s")
    assert httpx.post(url + "/classify", json={"texts": ["Shares fell"]}).status_code == 200
    r = httpx.get(url + "/readyz/sessions")
    assert (r.status_code, r.json()) == (503, {"sessions": "unavailable"})
    r = httpx.post(url + "/generate", json={"prompt": "A", "max_chars": 5, "keep_session": True})
    assert (r.status_code, r.json()["kind"]) == (503, "store_unavailable")
    cluster.start_redis()
    t1 = time.monotonic()
    while httpx.get(url + "/readyz/sessions").status_code != 200:
        assert time.monotonic() - t1 < 10
        time.sleep(0.1)
    events, _ = gen(url, prompt="A", max_chars=5, keep_session=True)
    print(f"sessions back {time.monotonic() - t1:.2f} s after redis-server started")
    assert events[-1]["session_id"]


def test_redis_restarted_under_load(cluster, reference):
    saved = prepare(cluster, 4)
    outcomes: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def session_ops() -> None:
        while not stop.is_set():
            r = httpx.post(cluster.url + "/generate", json={"prompt": "The ", "max_chars": 20, "keep_session": True},
                           timeout=60)  # fmt: skip
            kind = r.json()["kind"] if r.headers["content-type"].startswith("application/json") else ""
            if r.status_code == 200 and '"error"' in r.text:  # the save failed at the end of the stream
                kind = sse_events(r)[-1]["kind"]
            outcomes.append((time.monotonic(), r.status_code, kind))
            time.sleep(0.05)

    ops = threading.Thread(target=session_ops, daemon=True)
    with Load(cluster.url, classify_threads=2) as load:
        ops.start()
        time.sleep(1)
        down_at = time.monotonic()
        cluster.stop_redis()  # SIGTERM: Redis fsyncs its AOF and exits
        time.sleep(3)
        up_at = time.monotonic()
        cluster.start_redis()
        time.sleep(3)
        stop.set()
        ops.join(60)
    down = [o for o in outcomes if down_at + 0.5 < o[0] < up_at]
    back = next((o[0] for o in outcomes if o[0] > up_at and o[1] == 200 and not o[2]), None)
    print(f"\nredis down {up_at - down_at:.1f} s: {len(down)} session requests meanwhile, kinds "
          f"{sorted({(o[1], o[2]) for o in down})}; sessions back {back - up_at:.2f} s after redis-server started; "
          f"/classify {len(load.classified)} requests, {len(load.failures())} failed")  # fmt: skip
    assert down and all(o[2] == "store_unavailable" and o[1] in (200, 503) for o in down)
    assert all(o[1] in (200, 503) for o in outcomes)  # never another 5xx
    assert load.failures() == [] and back is not None and back - up_at < 5
    for sid, (p, _) in saved.items():  # saved before the restart: continued exactly after it (AOF)
        text, _ = continue_until_free(cluster.url, sid, 50)
        assert text == reference[p][HEAD : HEAD + 50]


def test_rolling_restart_loses_no_request(cluster):
    with Load(cluster.url, classify_threads=3, looping=6) as load:
        time.sleep(1)
        restarts = [cluster.rolling_restart(i) for i in range(3)]
        time.sleep(1)
    failed = [o for o in load.looped if o[1] != 200]
    print(f"\nrolling restart {[(r['replica'], r['exit_code'], round(r['total_s'], 1)) for r in restarts]}: "
          f"{len(load.failures())} of {len(load.classified)} /classify and {len(failed)} of {len(load.looped)} "
          f"stream requests failed")  # fmt: skip
    assert [r["exit_code"] for r in restarts] == [0, 0, 0]
    assert load.failures() == [] and failed == []
    assert {c[3] for c in load.classified} == set(cluster.names) and len(load.looped) > 20
