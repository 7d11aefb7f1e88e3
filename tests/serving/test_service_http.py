"""HTTP tests against a real ``bentoml serve`` subprocess serving the committed exported_models/.

One server for the whole module, with ONE worker, because several tests here count what one worker did (its
step-loop ticks, its active streams); tests/serving/test_service_workers.py covers several workers (the default).
Classification and its batching, streaming framing, greedy continuation across requests, sessions, client
errors, disconnects, metrics.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import time

import httpx
import pytest
from serving_helpers import client, generated_text, server, sse_events  # noqa: F401 (fixtures)

from loadtests.server import ONE_CLIENT_LIMITS

pytestmark = pytest.mark.slow
SERVER_ENV = {"RNNTEXT_WORKERS": "1", **ONE_CLIENT_LIMITS}  # 16 clients flat out from one address
LABELS = {"business", "entertainment", "politics", "sport", "tech"}
ARTICLE = (
    "Shares in the telecoms group rose sharply on Monday after it reported profits above forecasts.\n\n"
    "The company said strong demand for broadband and mobile contracts had lifted revenue, and the chief "
    "executive told investors that the outlook for the coming year remained good despite the slowdown "
    "in the wider economy. Analysts said the figures were a pleasant surprise. "
) * 3
TEXTS = [
    ARTICLE,
    "Chelsea won the cup final",
    "The film won three awards at the ceremony in London.",
    "Ministers said the election would be held in May. " * 20,
    "New phone software update released",
    ARTICLE[:300],
    "Profits fell.",
    "The striker scored twice in the second half. " * 8,
]


def classify(client, texts):
    r = client.post("/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    return r.json()


def generate(client, **body):
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return sse_events(r)


def check_result(res):
    assert res["label"] in LABELS
    probs = res["probabilities"]
    assert set(probs) == LABELS
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert abs(sum(probs.values()) - 1.0) < 1e-5
    assert res["label"] == max(probs, key=probs.get)


def test_classify_one_and_many(client):
    out = classify(client, TEXTS)
    assert isinstance(out, list) and len(out) == len(TEXTS)
    for res in out:
        check_result(res)
    assert classify(client, [ARTICLE])[0]["label"] == "business"


def test_concurrent_requests_batched_in_order_and_equal_to_single(client):
    singles = [classify(client, [t])[0] for t in TEXTS]
    requests = [[TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 4)] for i in range(64)]
    with cf.ThreadPoolExecutor(16) as pool:  # 16 concurrent clients
        replies = list(pool.map(lambda texts: client.post("/classify", json={"texts": texts}), requests))
    codes = [r.status_code for r in replies]
    assert codes.count(200) == len(requests), codes  # no 503 from the batcher, no error at all
    worst = 0.0
    for texts, reply in zip(requests, replies):
        out = reply.json()
        assert len(out) == len(texts)
        for text, res in zip(texts, out):
            ref = singles[TEXTS.index(text)]
            assert res["label"] == ref["label"]
            worst = max(worst, *(abs(res["probabilities"][k] - ref["probabilities"][k]) for k in LABELS))
    # batched with other requests' texts: the same label, and the same numbers as alone up to int8 dynamic
    # quantization, whose activation scales are per model call (docs/export_format.md; fp32 agrees to 1e-5)
    bound = 1e-5 if client.get("/info").json()["precision"]["classifier"] == "fp32" else 0.06
    assert worst < bound, worst
    metrics = client.get("/metrics").text
    batched = re.search(r"^rnntext_classify_batch_texts_count(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    texts_total = re.search(r"^rnntext_classified_texts_total(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    # more texts than batch calls: requests were merged into batches
    assert float(texts_total.group(1)) > float(batched.group(1))


def test_16_concurrent_clients_sustained_get_no_503(client):
    """16 clients in a closed loop for 8 s, 1 or 8 article-length texts per request: every reply is a 200."""

    def user(i: int) -> list[int]:
        codes, end = [], time.monotonic() + 8
        while time.monotonic() < end:
            texts = [ARTICLE] if i % 4 else [TEXTS[j % len(TEXTS)] for j in range(i, i + 8)]
            codes.append(client.post("/classify", json={"texts": texts}).status_code)
        return codes

    with cf.ThreadPoolExecutor(16) as pool:
        codes = [c for user_codes in pool.map(user, range(16)) for c in user_codes]
    assert len(codes) >= 16
    assert codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}


def test_stream_framing_and_done_event(client):
    r = client.post("/generate", json={"prompt": "Holmes", "max_chars": 50, "temperature": 0})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    raw = r.text
    assert re.fullmatch(r"(data: \{[^\n]*\}\n\n)+", raw), raw[:200]
    events = sse_events(r)
    *chunks, done = events
    assert chunks and all(set(e) == {"text"} and e["text"] for e in chunks)
    assert done == {"done": True, "chars": 50, "finish_reason": "length"}
    assert len(generated_text(events)) == 50


def test_greedy_continuation_equals_one_long_request(client):
    prompt = "To Sherlock Holmes she is always the woman. "
    whole = generated_text(generate(client, prompt=prompt, max_chars=200, temperature=0))
    first = generate(client, prompt=prompt, max_chars=100, temperature=0, keep_session=True)
    sid = first[-1]["session_id"]
    assert first[-1] == {"done": True, "chars": 100, "finish_reason": "length", "session_id": sid}
    second = generate(client, prompt="", max_chars=100, temperature=0, session_id=sid, keep_session=True)
    assert second[-1]["session_id"] == sid
    assert len(whole) == 200
    assert generated_text(first) + generated_text(second) == whole


def test_seeded_sampling_continues_its_random_stream(client):
    body = {"prompt": "It was a dark night", "temperature": 0.8, "top_k": 20, "top_p": 0.95, "seed": 1234}
    whole = generated_text(generate(client, max_chars=120, **body))
    assert generated_text(generate(client, max_chars=120, **body)) == whole  # same seed, same text
    first = generate(client, max_chars=60, keep_session=True, **body)
    rest = generate(
        client, prompt="", max_chars=60, session_id=first[-1]["session_id"], temperature=0.8, top_k=20, top_p=0.95
    )
    assert generated_text(first) + generated_text(rest) == whole
    assert "session_id" not in rest[-1]  # keep_session false: that was the session's last request


def test_a_kept_session_is_announced_in_a_header_before_the_first_event(client):
    with client.stream("POST", "/generate", json={"prompt": "Holmes", "max_chars": 30, "keep_session": True}) as r:
        announced = r.headers["x-rnntext-session-id"]  # read before any of the body
        events = sse_events(r.read() and r)
    assert len(announced) >= 22 and events[-1]["session_id"] == announced
    with client.stream("POST", "/generate", json={"session_id": announced, "max_chars": 5, "keep_session": True}) as r:
        assert r.headers["x-rnntext-session-id"] == announced  # continued: the same id
        assert sse_events(r.read() and r)[-1]["session_id"] == announced
    r = client.post("/generate", json={"prompt": "Holmes", "max_chars": 5})
    assert r.status_code == 200 and "x-rnntext-session-id" not in r.headers  # nothing kept, nothing announced
    r = client.post("/generate", json={"session_id": announced, "max_chars": 5})  # its last request: not kept
    assert r.status_code == 200 and "x-rnntext-session-id" not in r.headers
    assert client.post("/end_session", json={"session_id": announced}).status_code == 404


def test_session_ends_and_unknown_ids_are_404(client):
    sid = generate(client, prompt="Watson", max_chars=5, keep_session=True)[-1]["session_id"]
    assert len(sid) >= 22  # >= 128 bits in URL-safe base64
    r = client.post("/end_session", json={"session_id": sid})
    assert (r.status_code, r.json()) == (200, {"ended": sid})
    gone = {"error": "unknown or expired session_id", "kind": "unknown_session"}
    r = client.post("/end_session", json={"session_id": sid})
    assert (r.status_code, r.json()) == (404, gone)
    r = client.post("/generate", json={"prompt": "", "session_id": sid})
    assert (r.status_code, r.json()) == (404, gone)
    r = client.post("/generate", json={"prompt": "x", "session_id": "Q" * 32})
    assert (r.status_code, r.json()) == (404, gone)


def test_concurrent_use_of_one_session_is_409(client, server):
    sid = generate(client, prompt="The game is afoot", max_chars=5, keep_session=True)[-1]["session_id"]
    busy = {"error": "session is in use by another request; retry when it has finished", "kind": "session_busy"}
    with httpx.Client(base_url=server.url, timeout=120) as other:
        with client.stream(
            "POST", "/generate", json={"session_id": sid, "max_chars": 2000, "keep_session": True}
        ) as long:
            assert long.status_code == 200
            lines = long.iter_lines()  # keep this iterator: dropping it would close the response
            next(lines)  # the stream is running
            r = other.post("/generate", json={"session_id": sid, "max_chars": 5})
            assert (r.status_code, r.json()) == (409, busy)
            r = other.post("/end_session", json={"session_id": sid})
            assert (r.status_code, r.json()) == (409, busy)
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        assert events[-1] == {"done": True, "chars": 2000, "finish_reason": "length", "session_id": sid}
    assert generate(client, session_id=sid, max_chars=5)[-1] == {"done": True, "chars": 5, "finish_reason": "length"}


def info(client):
    r = client.get("/info")
    assert r.status_code == 200
    return r.json()


def test_disconnect_frees_slot_and_leaves_session_unchanged(client, server):
    prompt = "I had called upon my friend"
    a = generate(client, prompt=prompt, max_chars=10, temperature=0, keep_session=True)[-1]["session_id"]
    b = generate(client, prompt=prompt, max_chars=10, temperature=0, keep_session=True)[-1]["session_id"]
    with httpx.Client(base_url=server.url, timeout=60) as walker:
        with walker.stream(
            "POST", "/generate", json={"session_id": a, "max_chars": 2000, "temperature": 0, "keep_session": True}
        ) as r:
            lines = r.iter_lines()
            next(lines)
            assert info(client)["streams"]["active"] == 1
    t0 = time.monotonic()  # the client is gone: the slot must be free almost at once
    while info(client)["streams"]["active"] and time.monotonic() - t0 < 2:
        time.sleep(0.02)
    assert info(client)["streams"]["active"] == 0
    # the aborted request left session a as it was: it continues exactly like its twin b
    ta = generated_text(generate(client, session_id=a, max_chars=40, temperature=0))
    tb = generated_text(generate(client, session_id=b, max_chars=40, temperature=0))
    assert ta == tb and len(ta) == 40


def sixteen_streams(client, n: int) -> tuple[list, int, float]:
    ticks0 = info(client)["streams"]["ticks"]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: generate(client, prompt=f"Holmes {i}", max_chars=n, temperature=0.7, seed=i), range(16))
        )
    return results, info(client)["streams"]["ticks"] - ticks0, time.perf_counter() - t0


def test_step_batching_16_streams_share_steps(client):
    """16 concurrent streams advance together: about as many steps as ONE stream, not 16 times as many."""
    n = 150
    results, ticks, _ = sixteen_streams(client, n)
    assert [len(generated_text(ev)) for ev in results] == [n] * 16
    assert ticks < 2 * n, ticks  # 16 separate streams would take 16 * n = 2400 steps


@pytest.mark.latency
def test_step_batching_16_streams_cost_far_less_than_16_single(client):
    n = 150
    singles = []
    for _ in range(3):
        t0 = time.perf_counter()
        generate(client, prompt="Holmes", max_chars=n, temperature=0)
        singles.append(time.perf_counter() - t0)
    single = sorted(singles)[1]
    # the median of three, as for the single stream: one run of 16 varied from 8x to 12.3x a lone stream on the
    # same 2-core machine (12.3x failed a clean-clone CI run), the median of three stays within 8-10x
    runs = [sixteen_streams(client, n) for _ in range(3)]
    _, ticks, many = sorted(runs, key=lambda r: r[2])[1]
    print(f"1 stream: {single:.3f} s; 16 streams: {many:.3f} s; {ticks} batched steps")
    # a lone stream steps with every core (serving/board.py), 16 streams share one-thread steps: one after
    # another they would take 16x a lone one; batched, well under 12x
    assert many < 12 * single


def test_info_reports_providers_and_models(client):
    doc = info(client)
    assert doc["ready"] is True and doc["batcher_warm"] is True
    assert "CPUExecutionProvider" in doc["providers"]["classifier"]
    assert "CPUExecutionProvider" in doc["providers"]["generator"]
    assert set(doc["models"]["classifier"]["labels"]) == LABELS
    assert doc["models"]["classifier"]["metrics"] and doc["models"]["generator"]["metrics"]
    cls = doc["models"]["classifier"]  # the figures that rank models: CV beside the SVM, calibrated ECE
    assert cls["cv"]["folds"] == 5 and cls["cv"]["svm_accuracy_mean"] > 0.9 and cls["calibration"]["cv_ece"] <= 0.03
    assert doc["sessions"]["store"] == "sqlite"
    assert (doc["worker"], doc["workers"], doc["precision"]["classifier"]) == (1, 1, "int8")
    assert doc["device"]
    assert doc["settings"]["max_batch_size"] == 32 and doc["settings"]["max_latency_ms"] == 5000


def test_metrics_endpoint_has_custom_metrics(client):
    client.post("/classify", json={"texts": []})
    generate(client, prompt="abc", max_chars=3)
    text = client.get("/metrics").text
    for name in (
        "rnntext_classify_batch_texts_bucket",
        "rnntext_generate_step_streams_bucket",
        "rnntext_generated_chars_total",
        "rnntext_active_sessions",
        "rnntext_active_streams",
        'rnntext_errors_total{client="anonymous",kind="invalid_request"}',
    ):  # a client known by address
        assert name in text, name
    chars = re.search(r"^rnntext_generated_chars_total (\S+)$", text, re.M)
    assert float(chars.group(1)) >= 3
    # set at every batch's start and end (the warm-up ran batches): 0 once the batcher is idle
    queue = re.search(r"^rnntext_classify_queue (\S+)$", text, re.M)
    assert float(queue.group(1)) == 0.0


def test_health_endpoints(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_events_are_flushed_as_they_are_made(server):
    """BentoML's streaming path sends each event when it is yielded: over a ~1 s stream the events arrive spread
    over the whole time, the first one long before the end, not all at once when the stream is done."""
    arrivals = []
    t0 = time.perf_counter()
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/generate", json={"prompt": "Holmes", "max_chars": 2000, "temperature": 0}) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - t0)
    total = arrivals[-1]
    assert len(arrivals) >= 5, arrivals
    assert arrivals[0] < 0.25 * total, arrivals  # the first chunk does not wait for the rest
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert max(gaps) < 0.5 * total, arrivals  # no event held back until the end


def test_bentoml_clients_have_every_endpoint_and_stream_generate(server):
    import asyncio

    import bentoml

    with bentoml.SyncHTTPClient(server.url) as c:
        assert c.classify(texts=[ARTICLE])[0]["label"] == "business"
        chunks = list(c.generate(prompt="Holmes", max_chars=120, temperature=0, keep_session=True))
        events = [
            json.loads(line[len("data: ") :])
            for chunk in chunks
            for line in chunk.splitlines()
            if line.startswith("data: ")
        ]
        assert len(chunks) >= 2 and events[-1]["done"] is True and events[-1]["chars"] == 120
        assert c.end_session(session_id=events[-1]["session_id"]) == {"ended": events[-1]["session_id"]}
        assert c.info()["workers"] == 1

    async def main():
        async with bentoml.AsyncHTTPClient(server.url) as c:
            text = "".join([chunk async for chunk in c.generate(prompt="Holmes", max_chars=120, temperature=0)])
            return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]

    events_async = asyncio.run(main())
    assert generated_text(events_async) == generated_text(events)


def test_openapi_lists_every_endpoint_with_its_schema(client):
    doc = client.get("/docs.json").json()
    assert {"/classify", "/generate", "/end_session", "/info"} <= set(doc["paths"])
    ref = doc["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert body["properties"]["max_chars"]["maximum"] == 2000 and body["additionalProperties"] is False
    assert "text/event-stream" in doc["paths"]["/generate"]["post"]["responses"]["200"]["content"]
    assert client.get("/").status_code == 200 and "swagger" in client.get("/").text.lower()
