"""Graceful drain on SIGTERM (serving/patches/drain.py), on one ``bentoml serve``: /readyz turns 503 at once, new
streams get 503 ``draining`` with Retry-After while everything else is served, running streams finish within
RNNTEXT_DRAIN_S or are stopped then with their sessions saved exactly where they stopped, and the server exits 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from serving_helpers import Server, generated_text, sse_events

pytestmark = pytest.mark.slow
PROMPTS = ["Mr. Sherlock Holmes, who was usually very late in the mornings, ", "It was a cold morning, "]
ENV = {"RNNTEXT_PRECISION": "fp32", "RNNTEXT_MAX_CHARS": "60000"}  # fp32: greedy text independent of batch-mates


def streams(url: str, bodies: list[dict]) -> tuple[list[threading.Thread], list[dict]]:
    out: list[dict] = [{} for _ in bodies]

    def run(i: int) -> None:
        with httpx.stream("POST", url + "/generate", json=bodies[i], timeout=120) as r:
            events = sse_events(httpx.Response(r.status_code, content=r.read()))
        out[i] = {"events": events, "end": time.monotonic()}

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return threads, out


def wait_exit(server: Server, timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    code = server.proc.wait(timeout)
    return code, time.monotonic() - t0


def test_streams_past_the_limit_are_stopped_and_their_sessions_saved(tmp_path):
    env = {**ENV, "RNNTEXT_DRAIN_S": "2", "RNNTEXT_SESSION_DB": str(tmp_path / "sessions.db")}
    server = Server(env=env)
    try:
        server.wait_ready()
        bodies = [{"prompt": p, "max_chars": 50000, "temperature": 0, "keep_session": True} for p in PROMPTS * 2]
        threads, out = streams(server.url, bodies)
        time.sleep(1.0)
        term_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # to `bentoml serve`, as Kubernetes sends it
        time.sleep(0.3)
        assert httpx.get(server.url + "/readyz").status_code == 503
        r = httpx.post(server.url + "/generate", json={"prompt": "A", "max_chars": 5})
        assert (r.status_code, r.json()["kind"], r.headers["retry-after"]) == (503, "draining", "1")
        r = httpx.post(server.url + "/v1/completions", json={"model": "sherlock-char-lstm", "prompt": "A"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        assert r.json()["error"]["type"] == "overloaded_error"
        r = httpx.post(server.url + "/classify", json={"texts": ["Shares fell sharply"]})
        assert r.status_code == 200  # everything but new streams is still served
        info = httpx.get(server.url + "/info").json()
        assert (info["draining"], info["ready"]) == (True, False)
        for t in threads:
            t.join(60)
        code, _ = wait_exit(server, 30)
        ended = [o["end"] - term_at for o in out]
        print(f"\nstopped after {min(ended):.2f}-{max(ended):.2f} s (RNNTEXT_DRAIN_S=2); exit code {code}")
        assert code == 0
        assert all(1.9 < e < 4 for e in ended), ended
        dones = [o["events"][-1] for o in out]
        assert all(d["finish_reason"] == "stopped" and 0 < d["chars"] < 50000 for d in dones), dones
    finally:
        server.stop()

    # the next server on the same session file continues each session exactly after its last character
    server = Server(env=env)
    try:
        server.wait_ready()
        for body, o, d in zip(bodies, out, dones):
            r = httpx.post(server.url + "/generate", json={"session_id": d["session_id"], "max_chars": 40,
                                                           "temperature": 0}, timeout=60)  # fmt: skip
            assert r.status_code == 200, r.text
            whole = ref_head(server.url, body["prompt"], d["chars"] + 40)  # the same text in one request
            assert generated_text(o["events"]) + generated_text(sse_events(r)) == whole
    finally:
        server.stop()


def ref_head(url: str, prompt: str, chars: int) -> str:
    r = httpx.post(url + "/generate", json={"prompt": prompt, "max_chars": chars, "temperature": 0}, timeout=120)
    return generated_text(sse_events(r))


def test_streams_within_the_limit_finish_and_the_server_exits_at_once():
    server = Server(env={**ENV, "RNNTEXT_DRAIN_S": "30"})
    try:
        server.wait_ready()
        threads, out = streams(server.url, [{"prompt": p, "max_chars": 3000, "temperature": 0} for p in PROMPTS])
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        code, took = wait_exit(server, 30)
        print(f"\nstreams finished, server exited {took:.1f} s after them (code {code})")
        assert code == 0 and took < 10  # not the 30 s limit: the drain ends when the last stream has
        assert [(o["events"][-1]["finish_reason"], o["events"][-1]["chars"]) for o in out] == [("length", 3000)] * 2
    finally:
        server.stop()
