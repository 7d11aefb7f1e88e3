"""The OpenAI-compatible API (``/v1/models``, ``/v1/completions``) through real clients on a real ``bentoml serve``
with an API key: the ``openai`` package, curl and raw httpx, next to this service's own API (``/generate``,
``/score``) and BentoML's Python client, which must keep working for every endpoint.

Greedy and seeded text must be the same through every API, and the log-probabilities ``/v1/completions`` returns
the numbers ``/score`` gives for the same text after the same prompt (one stream alone: the same step batcher,
the same start state). The server runs the default precision (int8 on CPU). ``n`` choices share every step; a
stream's numbers do not depend on the other streams in its step at either precision (docs/serving.md,
"Precision"), so choice j is exactly the n=1 text of ``seed + j``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import bentoml
import httpx
import openai
import pytest
from bentoml.exceptions import BentoMLException
from openai import OpenAI
from serving_helpers import Server, client, generated_text, server, sse_events  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
KEY = "KEY-A"
SERVER_ENV = {"RNNTEXT_WORKERS": "1", "RNNTEXT_API_KEYS": f"alice:{KEY}:rate=1000,burst=1000"}
CLIENT_HEADERS = {"Authorization": f"Bearer {KEY}"}
MODEL = "sherlock-char-lstm"
PROMPT = "To Sherlock Holmes she is always "
# greedy from this prompt, a blank line comes after 99 characters (checked in the test)
BLANK_LINE_PROMPT = '"Where is she?" said Holmes.'
SCORED = "     It was a dark and stormy night, said Holmes."
TOL = 1e-4


@pytest.fixture(scope="module")
def oai(server):
    with OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def generate(http: httpx.Client, **body) -> tuple[str, dict]:
    """/generate's text and its done event."""
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    events = sse_events(r)
    assert events[-1]["done"] is True
    return generated_text(events), events[-1]


def score(http: httpx.Client, **body) -> dict:
    r = http.post("/score", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def greedy(oai: OpenAI, prompt: str, n: int) -> str:
    out = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0)
    assert len(out.choices[0].text) == n
    return out.choices[0].text


def assert_matches_score(lp, scored: dict) -> None:
    """/v1 logprobs (``logprobs=N``) against /score's (``top_logprobs=N``) for the same characters."""
    assert lp.tokens == [c["char"] for c in scored["logprobs"]]
    for i, (tok, tok_lp, top, ref) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, scored["logprobs"])):
        assert tok_lp == pytest.approx(ref["logprob"], abs=TOL), i
        # the top alternatives, and the chosen character among them (one more entry when it is not one of them)
        assert set(top) == set(ref["top"]) | {tok}, (i, top, ref["top"])
        assert len(top) == len(ref["top"]) + (tok not in ref["top"]), i
        assert top[tok] == tok_lp
        for ch, value in ref["top"].items():
            assert top[ch] == pytest.approx(value, abs=TOL), (i, ch)


# ---------------------------------------------------------------------------------------------- /v1/models
def test_models_lists_the_one_generator(oai, client):
    models = oai.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = models.data[0]
    assert (card.object, card.owned_by, card.model_extra["root"]) == ("model", "rnntext", MODEL)
    assert card.created > 0
    settings = client.get("/info").json()["settings"]
    assert card.model_extra["max_model_len"] == settings["max_prompt_chars"] + settings["max_chars"]


# ------------------------------------------------------------------------------------------ same text everywhere
def test_greedy_text_is_the_same_through_openai_generate_and_a_stream(oai, client):
    out = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=120, temperature=0)
    (choice,) = out.choices
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "length", None)
    assert getattr(choice, "stop_reason", None) is None
    assert len(choice.text) == 120
    assert (out.object, out.model) == ("text_completion", MODEL)
    assert out.id.startswith("cmpl-")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        len(PROMPT),
        120,
        len(PROMPT) + 120,
    )

    text, done = generate(client, prompt=PROMPT, max_chars=120, temperature=0)
    assert text == choice.text
    assert done == {"done": True, "chars": 120, "finish_reason": "length"}

    chunks = list(oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=120, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert chunks[-1].choices[0].text == ""
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.usage is None for c in chunks)

    chunks = list(
        oai.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=120,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *texts, last = chunks
    assert "".join(c.choices[0].text for c in texts) == choice.text
    assert texts[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in texts)
    assert last.choices == []
    assert last.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == {
        "prompt_tokens": len(PROMPT),
        "completion_tokens": 120,
        "total_tokens": len(PROMPT) + 120,
    }


def test_seeded_text_is_the_same_through_openai_and_generate(oai, client):
    params = {"temperature": 0.8, "seed": 7, "top_p": 0.95}
    out = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=120, **params)
    text, _ = generate(client, prompt=PROMPT, max_chars=120, **params)
    assert out.choices[0].text == text
    assert len(text) == 120
    assert oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=120, **params).choices[0].text == text
    assert greedy(oai, PROMPT, 120) != text


def test_n_choices_are_seeded_seed_plus_index_and_reproducible(oai):
    """On the default int8 (numbers independent of the other streams in a step): choice j of ``seed`` is the n=1
    text of ``seed + j``, and the same request gives the same choices again."""
    params = {"model": MODEL, "prompt": PROMPT, "max_tokens": 120, "temperature": 0.8, "top_p": 0.95}
    alone = [oai.completions.create(seed=s, **params).choices[0].text for s in (7, 8)]
    out = oai.completions.create(n=2, seed=7, **params)
    again = oai.completions.create(n=2, seed=7, **params)
    texts = [c.text for c in out.choices]
    assert [c.index for c in out.choices] == [0, 1]
    assert texts[0] != texts[1]
    assert texts == alone
    assert [c.text for c in again.choices] == texts
    assert [c.finish_reason for c in out.choices] == ["length", "length"]
    # the prompt counts once, whatever n
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        len(PROMPT),
        240,
        len(PROMPT) + 240,
    )


# ---------------------------------------------------------------------------------------------- stop sequences
def test_a_stop_sequence_ends_the_text_before_it_in_both_apis(oai, client):
    whole, _ = generate(client, prompt=BLANK_LINE_PROMPT, max_chars=600, temperature=0)
    assert "\n\n" in whole
    before = whole[: whole.index("\n\n")]
    assert len(before) == 110  # a blank line well inside the text, not at its start (int8 row-wise step graph)

    out = oai.completions.create(model=MODEL, prompt=BLANK_LINE_PROMPT, max_tokens=600, temperature=0, stop=["\n\n"])
    (choice,) = out.choices
    assert choice.text == before
    assert choice.finish_reason == "stop"
    assert choice.model_extra.get("stop_reason") == "\n\n"
    assert out.usage.completion_tokens == len(before) + 2  # the stop sequence was generated (and not returned)

    text, done = generate(client, prompt=BLANK_LINE_PROMPT, max_chars=600, temperature=0, stop=["\n\n"])
    assert text == before
    assert done == {"done": True, "chars": len(before) + 2, "finish_reason": "stop", "stop": "\n\n"}


# ---------------------------------------------------------------------------------------------- log-probabilities
def test_greedy_logprobs_match_score_and_the_choice_is_the_most_likely(oai, client):
    out = oai.completions.create(model=MODEL, prompt="Holmes", max_tokens=60, temperature=0, logprobs=5)
    (choice,) = out.choices
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(choice.text) == 60
    assert lp.text_offset == list(range(60))
    assert all(len(top) in (5, 6) and tok in top for tok, top in zip(lp.tokens, lp.top_logprobs))
    assert_matches_score(lp, score(client, context="Holmes", text=choice.text, logprobs=True, top_logprobs=5))
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert top[tok] == max(top.values()), (tok, top)
    assert all(len(top) == 5 for top in lp.top_logprobs)  # greedy: the choice is always one of the top 5


def test_sampled_logprobs_are_the_models_before_temperature(oai, client):
    """At a high temperature some chosen characters are outside the top 5: those positions list 6."""
    out = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=80, temperature=1.8, seed=3, logprobs=5)
    (choice,) = out.choices
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(choice.text) == 80
    assert_matches_score(lp, score(client, context=PROMPT, text=choice.text, logprobs=True, top_logprobs=5))
    assert {len(top) for top in lp.top_logprobs} == {5, 6}

    # streamed, the same numbers arrive chunk by chunk, with offsets running over the whole text
    chunks = list(
        oai.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=80, temperature=1.8, seed=3, logprobs=5, stream=True
        )
    )
    parts = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs is not None]
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [x for p in parts for x in p.token_logprobs] == lp.token_logprobs
    assert [x for p in parts for x in p.top_logprobs] == lp.top_logprobs
    assert [x for p in parts for x in p.text_offset] == lp.text_offset == list(range(80))


def test_echo_with_no_tokens_scores_the_prompt_as_score_does(oai, client):
    out = oai.completions.create(model=MODEL, prompt=SCORED, max_tokens=0, echo=True, logprobs=1)
    (choice,) = out.choices
    assert choice.text == SCORED
    assert choice.finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        len(SCORED),
        0,
        len(SCORED),
    )
    lp = choice.logprobs
    assert lp.tokens == list(SCORED)
    assert lp.text_offset == list(range(len(SCORED)))
    assert all(isinstance(x, float) for x in lp.token_logprobs)  # the first character's too (not null)
    assert all(len(top) in (1, 2) and tok in top for tok, top in zip(lp.tokens, lp.top_logprobs))

    scored = score(client, text=SCORED, logprobs=True)
    assert scored["chars"] == len(SCORED)
    assert [c["char"] for c in scored["logprobs"]] == lp.tokens
    assert lp.token_logprobs == pytest.approx([c["logprob"] for c in scored["logprobs"]], abs=TOL)
    bits = -sum(lp.token_logprobs) / len(SCORED) / math.log(2)
    assert bits == pytest.approx(scored["bits_per_char"], rel=1e-6)


# ---------------------------------------------------------------------------------------------- errors
def test_errors_are_openais_exceptions(server, oai):
    with OpenAI(base_url=server.url + "/v1", api_key="WRONG", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as err:
            wrong.completions.create(model=MODEL, prompt="Holmes", max_tokens=5)
        assert err.value.status_code == 401
        assert err.value.body["code"] == "unauthorized"
        assert err.value.body["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()

    def refused(exc: type[openai.APIStatusError], **kw) -> openai.APIStatusError:
        with pytest.raises(exc) as err:
            oai.completions.create(**{"model": MODEL, "prompt": "Holmes", "max_tokens": 5, **kw})
        return err.value

    e = refused(openai.BadRequestError, temperature=3)
    assert (e.status_code, e.param, e.code, e.type) == (400, "temperature", "invalid_request", "invalid_request_error")
    e = refused(openai.NotFoundError, model="gpt-4")
    assert (e.status_code, e.code, e.type) == (404, "model_not_found", "not_found_error")
    e = refused(openai.BadRequestError, n=9)
    assert (e.status_code, e.param, e.code) == (400, "n", "invalid_request")
    e = refused(openai.BadRequestError, frequency_penalty=0.5)
    assert (e.status_code, e.param, e.code) == (400, "frequency_penalty", "invalid_request")
    e = refused(openai.BadRequestError, prompt=[1, 2, 3])
    assert (e.status_code, e.code) == (400, "invalid_request")
    e = refused(openai.BadRequestError, logprobs=6)
    assert (e.status_code, e.param, e.code) == (400, "logprobs", "invalid_request")


def test_token_id_prompts_are_refused_naming_the_prompt(oai):
    """The error names the field the client sent (``prompt``), not pydantic's name for a branch of its union."""
    for prompt in ([1, 2, 3], [[1, 2, 3]]):
        with pytest.raises(openai.BadRequestError) as err:
            oai.completions.create(model=MODEL, prompt=prompt, max_tokens=5)
        assert err.value.param == "prompt", err.value.body
        assert err.value.body["message"] == (
            "prompt: a string or a list of strings (token ids are not taken: a token here is a character)"
        )


def test_the_raw_error_body_is_exactly_openais(server):
    r = httpx.post(
        server.url + "/v1/completions",
        json={"model": MODEL, "prompt": "Holmes", "temperature": 3},
        headers=CLIENT_HEADERS,
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    assert body == {
        "error": {
            "message": body["error"]["message"],
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_request",
        }
    }
    assert "temperature" in body["error"]["message"]


# ---------------------------------------------------------------------------------------------- sessions
def test_a_kept_session_continues_through_openai(oai):
    whole = greedy(oai, "Holmes", 150)
    raw = oai.completions.with_raw_response.create(
        model=MODEL, prompt="Holmes", max_tokens=50, temperature=0, extra_body={"keep_session": True}
    )
    sid = raw.headers["x-rnntext-session-id"]
    assert sid
    first = raw.parse()
    assert first.model_extra["session_id"] == sid
    assert first.choices[0].text == whole[:50]

    raw = oai.completions.with_raw_response.create(
        model=MODEL, prompt="", max_tokens=50, temperature=0, extra_body={"session_id": sid, "keep_session": True}
    )
    assert raw.headers["x-rnntext-session-id"] == sid
    second = raw.parse()
    assert first.choices[0].text + second.choices[0].text == whole[:100]
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (0, 50)

    third = oai.completions.create(model=MODEL, prompt="", max_tokens=50, temperature=0, extra_body={"session_id": sid})
    assert first.choices[0].text + second.choices[0].text + third.choices[0].text == whole
    # a continuation without keep_session ends the session after it (docs/serving.md "Sessions")
    with pytest.raises(openai.NotFoundError) as err:
        oai.completions.create(model=MODEL, prompt="", max_tokens=1, extra_body={"session_id": sid})
    assert (err.value.status_code, err.value.code) == (404, "unknown_session")


# ---------------------------------------------------------------------------------------------- other clients
def test_curl_streams_openai_events_ending_with_done(server, oai):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 120, "temperature": 0, "stream": True}
    out = subprocess.run(
        [
            curl,
            "-sN",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            server.url + "/v1/completions",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.endswith("data: [DONE]\n\n"), repr(out[-200:])
    blocks = out[: -len("data: [DONE]\n\n")].split("\n\n")
    assert blocks[-1] == ""
    events = []
    for block in blocks[:-1]:
        assert block.startswith("data: ") and "\n" not in block, repr(block)
        events.append(json.loads(block[len("data: ") :]))
    assert len({e["id"] for e in events}) == 1
    assert all(e["object"] == "text_completion" and e["model"] == MODEL for e in events)
    assert all(len(e["choices"]) == 1 and e["choices"][0]["index"] == 0 for e in events)
    assert "".join(e["choices"][0]["text"] for e in events) == greedy(oai, PROMPT, 120)
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * (len(events) - 1) + ["length"]


def bentoml_events(chunks) -> list[dict]:
    """BentoML's client yields the event stream as it arrives: each item one or more ``data: <JSON>`` events."""
    body = "".join(chunks)
    assert body.endswith("\n\n")
    return [json.loads(block.removeprefix("data: ")) for block in body[:-2].split("\n\n")]


def test_bentomls_client_still_serves_every_endpoint(server, client):
    with bentoml.SyncHTTPClient(server.url, token=KEY) as bc:
        (prediction,) = bc.classify(texts=["Chelsea won the cup final after extra time."])
        assert prediction["label"] == "sport"
        assert len(prediction["probabilities"]) == 5
        assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-5)

        events = bentoml_events(bc.generate(prompt="Holmes", max_chars=20, temperature=0))
        text, done = generate(client, prompt="Holmes", max_chars=20, temperature=0)
        assert generated_text(events) == text
        assert events[-1] == done == {"done": True, "chars": 20, "finish_reason": "length"}

        scored = bc.score(text="Holmes", logprobs=True)
        assert scored["chars"] == 6 and [c["char"] for c in scored["logprobs"]] == list("Holmes")

        events = bentoml_events(bc.generate(prompt="Holmes", max_chars=5, temperature=0, keep_session=True))
        sid = events[-1]["session_id"]
        with pytest.raises(BentoMLException) as err:
            bc.stop(session_id=sid)  # nothing is running in it
        assert err.value.error_code == 409
        assert json.loads(err.value.message)["kind"] == "not_generating"
        assert bc.end_session(session_id=sid) == {"ended": sid}
        with pytest.raises(BentoMLException) as err:
            bc.end_session(session_id=sid)
        assert err.value.error_code == 404
        assert json.loads(err.value.message)["kind"] == "unknown_session"

        assert bc.info()["ready"] is True


def test_bentomls_client_scores_without_logprobs(server):
    """``/score`` without ``logprobs`` leaves the field out: BentoML's client decodes the body by its published
    output schema, where an optional list is a list (it fails on null)."""
    with bentoml.SyncHTTPClient(server.url, token=KEY) as bc:
        scored = bc.score(text="Holmes")
    assert scored["chars"] == 6 and scored["unknown"] == 0
    assert "logprobs" not in scored


def test_routes_this_server_lacks_are_openai_404s(server, oai):
    """An OpenAI client asking for chat gets a 404 it understands, not a 405 from the catch-all."""
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Holmes?"}])
    assert err.value.body == {
        "message": "no route /v1/chat/completions (this server has /v1/completions and /v1/models)",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }
    r = httpx.post(server.url + "/v1/models", json={}, headers=CLIENT_HEADERS)
    assert (r.status_code, r.headers["allow"], r.json()["error"]["code"]) == (405, "GET", "method_not_allowed")
    r = httpx.get(server.url + "/v1/models")  # no key
    assert (r.status_code, r.json()["error"]["type"]) == (401, "authentication_error")
