"""POST /stop and POST /score against a real ``bentoml serve`` with two workers and two clients: a graceful stop
continues exactly whichever worker it reaches, follows the ownership rules, and scoring agrees with the
``evaluate-generator`` command and leaves sessions as they were."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from serving_helpers import generated_text, server, sse_events  # noqa: F401 (fixtures)

from tests.conftest import training_cli
from training.common.files import read_text

pytestmark = pytest.mark.slow
LONG = 20000
SERVER_ENV = {
    "RNNTEXT_WORKERS": "2",
    "RNNTEXT_API_KEYS": "alice:KEY-A:rate=1000,burst=1000,bob:KEY-B:rate=1000,burst=1000",
    "RNNTEXT_MAX_CHARS": str(LONG),
}
ALICE, BOB = {"Authorization": "Bearer KEY-A"}, {"X-API-Key": "KEY-B"}


def post(server, path: str, body: dict, headers: dict) -> httpx.Response:
    """On a new connection each time, so that requests spread over both workers."""
    return httpx.post(server.url + path, json=body, headers=headers, timeout=120)


def greedy(server, n: int, prompt: str = "Holmes") -> str:
    r = post(server, "/generate", {"prompt": prompt, "max_chars": n, "temperature": 0}, ALICE)
    assert r.status_code == 200, r.text
    return generated_text(sse_events(r))


def stopped_stream(server, body: dict, stop_headers: dict = ALICE) -> tuple[str, dict, list[httpx.Response]]:
    """A stream stopped through POST /stop once its first chunk has arrived: (its text, its done event, the
    /stop responses: one per attempt until one says 200 or 409)."""
    text, done, stops = "", None, []
    with httpx.stream("POST", server.url + "/generate", json=body, headers=ALICE, timeout=120) as r:
        assert r.status_code == 200
        sid, worker = r.headers["x-rnntext-session-id"], r.headers["x-rnntext-worker"]
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: ") :])
            text += event.get("text", "")
            if event.get("done"):
                done = {**event, "worker": worker}  # the worker that ran the stream
            elif not stops:
                stops.append(post(server, "/stop", {"session_id": sid}, stop_headers))
    return text, done, stops


def test_stop_then_continue_gives_the_one_greedy_text_whichever_worker_the_stop_reaches(server):
    paths, rounds = set(), 0
    # each /stop on a new connection: it lands on the stream's worker or, mostly (a busy worker leaves accepting
    # to an idle one: serving/patches/accept.py), the other one; the stop served on the stream's own worker is
    # tested in-process (tests/serving/test_generation.py)
    while "through the store" not in paths or rounds < 3:
        rounds += 1
        assert rounds <= 20, paths
        text, done, stops = stopped_stream(
            server, {"prompt": "Holmes", "max_chars": LONG, "temperature": 0, "keep_session": True}
        )
        (stop,) = stops
        sid = done["session_id"]
        assert (stop.status_code, stop.json()) == (200, {"session_id": sid, "stopping": True})
        assert done["finish_reason"] == "stopped" and 0 < done["chars"] == len(text) < LONG
        paths.add("local" if stop.headers["x-rnntext-worker"] == done["worker"] else "through the store")
        r = post(server, "/generate", {"session_id": sid, "max_chars": 300, "temperature": 0}, ALICE)
        rest = generated_text(sse_events(r))
        assert text + rest == greedy(server, done["chars"] + 300)
    assert "through the store" in paths  # a stop served by another worker reached the stream by a store flag


def test_stop_follows_the_session_rules(server):
    r = post(server, "/generate", {"prompt": "The ", "max_chars": 10, "keep_session": True}, ALICE)
    sid = sse_events(r)[-1]["session_id"]
    idle = post(server, "/stop", {"session_id": sid}, ALICE)
    assert idle.status_code == 409 and idle.json()["kind"] == "not_generating"
    for who, headers in (("unknown", ALICE), ("bob", BOB)):
        session = "no-such-session" if who == "unknown" else sid
        r = post(server, "/stop", {"session_id": session}, headers)
        assert (r.status_code, r.json()) == (404, {"error": "unknown or expired session_id", "kind": "unknown_session"})
    # bob cannot stop alice's running stream: his /stop is a 404 and her stream runs to its end
    text, done, stops = stopped_stream(
        server, {"session_id": sid, "max_chars": 3000, "temperature": 0, "keep_session": True}, stop_headers=BOB
    )
    assert stops[0].status_code == 404
    assert (done["finish_reason"], done["chars"], len(text)) == ("length", 3000, 3000)
    assert post(server, "/end_session", {"session_id": sid}, ALICE).status_code == 200


def test_an_aborted_first_stream_keeps_no_session(server):
    with httpx.stream(
        "POST", server.url + "/generate", json={"max_chars": LONG, "keep_session": True}, headers=ALICE, timeout=60
    ) as r:
        sid = r.headers["x-rnntext-session-id"]
        next(r.iter_raw())  # running; then the client goes away
    deadline = time.monotonic() + 10
    while (r := post(server, "/end_session", {"session_id": sid}, ALICE)).status_code == 409:
        assert time.monotonic() < deadline, "the cut stream's session was never given back"
        time.sleep(0.05)
    assert (r.status_code, r.json()["kind"]) == (404, "unknown_session")  # never kept: the abort undid it


def test_score_agrees_with_evaluate_generator(server, canon_path, tmp_path):
    text = read_text(canon_path)[200_000:202_000]  # as the command reads files (the canon has a stray Latin-1 byte)
    path = tmp_path / "passage.txt"
    path.write_text(text, encoding="utf-8")
    precision = httpx.get(server.url + "/info", headers=ALICE).json()["precision"]["generator"]
    r = post(server, "/score", {"text": text, "logprobs": True, "top_logprobs": 3}, ALICE)
    assert r.status_code == 200, r.text
    scored = r.json()
    cli = training_cli("evaluate-generator", "--text", str(path), "--streams", "1", "--precision", precision)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    assert expected["n_chars"] == scored["chars"] == len(text) and expected["precision"] == precision
    assert abs(scored["bits_per_char"] - expected["bits_per_char"]) < 1e-4
    assert 0.5 < scored["bits_per_char"] < 3.0  # a real passage of the canon: the model knows it
    lps = scored["logprobs"]
    assert [x["char"] for x in lps] == list(text)
    assert sum(x["logprob"] for x in lps) == pytest.approx(scored["logprob"])
    assert all(len(x["top"]) == 3 and max(x["top"].values()) >= x["logprob"] - 1e-9 for x in lps)


def test_score_reads_a_session_as_it_is_and_changes_nothing(server):
    r = post(server, "/generate", {"prompt": "Holmes", "max_chars": 50, "temperature": 0, "keep_session": True}, ALICE)
    sid = sse_events(r)[-1]["session_id"]
    continued = greedy(server, 80)[50:]  # what the session writes next
    as_session = post(server, "/score", {"text": continued, "session_id": sid}, ALICE).json()
    as_context = post(server, "/score", {"text": continued, "context": "Holmes" + greedy(server, 50)}, ALICE).json()
    assert as_session["chars"] == 30 and "logprobs" not in as_session
    # the session's state was stepped by the row-wise int8 step graph, the context's read by the per-tensor int8
    # prefill graph: two quantizations of one model (0.006 bits/char apart here; fp32: 1e-5)
    assert as_session["bits_per_char"] == pytest.approx(as_context["bits_per_char"], abs=0.02)
    assert as_session["bits_per_char"] < 1.0  # its own greedy text is likely
    for headers, status in ((BOB, 404), (ALICE, 200)):
        assert post(server, "/score", {"text": "x", "session_id": sid}, headers).status_code == status
    r = post(server, "/generate", {"session_id": sid, "max_chars": 30, "temperature": 0}, ALICE)
    assert generated_text(sse_events(r)) == continued  # scoring did not move the session


@pytest.mark.parametrize(
    ("body", "where"),
    [({"text": ""}, "text"), ({"text": "x" * 8001}, "text"), ({"text": "x", "top_logprobs": 6}, "top_logprobs")],
)
def test_score_refuses_what_its_limits_refuse(server, body, where):
    r = post(server, "/score", body, ALICE)
    assert r.status_code == 400 and r.json()["kind"] == "invalid_request"
    assert r.json()["detail"][0]["loc"] == [where]
