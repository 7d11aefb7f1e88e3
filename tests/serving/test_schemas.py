"""The request models (serving/schemas.py) and the error bodies made from pydantic's report (serving/errors.py),
without BentoML: the exact ``{"error", "kind"}`` a client gets for each mistake, and the OpenAPI constraints."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serving.config import Settings
from serving.errors import normalize
from serving.schemas import EndSessionRequest, Schemas

S = Schemas(
    Settings.from_env(
        {
            "RNNTEXT_MAX_TEXTS": "4",
            "RNNTEXT_MAX_TEXT_CHARS": "1000",
            "RNNTEXT_MAX_PROMPT_CHARS": "200",
            "RNNTEXT_MAX_CHARS": "300",
            "RNNTEXT_DEFAULT_CHARS": "20",
        }
    )
)


def reply(model, body: bytes) -> dict | None:
    """What the client gets: BentoML's 400 body for the ValidationError (its api_endpoint_wrapper), normalized."""
    try:
        model.model_validate_json(body or b"{}")  # BentoML reads an empty body as {}
    except ValidationError as exc:
        bentoml_body = {
            "error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False),
        }
        raw = json.dumps(bentoml_body).encode()
        doc = normalize(400, raw)
        if doc["kind"] == "invalid_request":  # pydantic's full report stays available to the client
            assert doc["detail"] == json.loads(raw)["detail"]
        return {k: doc[k] for k in ("error", "kind")}
    return None


def invalid(message: str) -> dict:
    return {"error": message, "kind": "invalid_request"}


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            b'{"texts": ["a"',
            {"error": "body is not valid JSON: EOF while parsing a list at line 1 column 14", "kind": "malformed_json"},
        ),
        (b"", invalid("texts: Field required")),
        (b'"just a string"', invalid("body must be a JSON object")),
        (b'{"texts": "one text"}', invalid("texts: Input should be a valid array")),
        (b'{"texts": []}', invalid("texts: List should have at least 1 item after validation, not 0")),
        (
            b'{"texts": ["a", "b", "c", "d", "e"]}',
            invalid("texts: List should have at most 4 items after validation, not 5"),
        ),
        (b'{"texts": ["ok", 42]}', invalid("texts[1]: Input should be a valid string")),
        (b'{"texts": [""]}', invalid("texts[0]: String should have at least 1 character")),
        (b'{"texts": ["ok", "  \\n\\t "]}', invalid("texts[1]: is empty or whitespace only")),
        (
            ('{"texts": ["' + "x" * 1001 + '"]}').encode(),
            invalid("texts[0]: String should have at most 1000 characters"),
        ),
        (b'{"texts": ["ok"], "lang": "en"}', invalid("unknown field 'lang'")),
        (b'{"texts": ["ok", "x"]}', None),
    ],
)
def test_classify_request(body, expected):
    assert reply(S.ClassifyRequest, body) == expected


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"[]", invalid("body must be a JSON object")),
        (b'{"prompt": 12}', invalid("prompt: Input should be a valid string")),
        (('{"prompt": "' + "y" * 201 + '"}').encode(), invalid("prompt: String should have at most 200 characters")),
        (b'{"max_chars": 0}', invalid("max_chars: Input should be greater than or equal to 1")),
        (b'{"max_chars": 301}', invalid("max_chars: Input should be less than or equal to 300")),
        (b'{"max_chars": "10"}', invalid("max_chars: Input should be a valid integer")),
        (b'{"max_chars": 10.5}', invalid("max_chars: Input should be a valid integer")),
        (b'{"temperature": -1}', invalid("temperature: Input should be greater than or equal to 0")),
        (b'{"temperature": NaN}', invalid("temperature: Input should be a finite number")),
        (b'{"temperature": 1e999}', invalid("temperature: Input should be a finite number")),
        (b'{"temperature": "warm"}', invalid("temperature: Input should be a valid number")),
        (b'{"top_p": 0}', invalid("top_p: Input should be greater than 0")),
        (b'{"top_p": 1.01}', invalid("top_p: Input should be less than or equal to 1")),
        (b'{"top_k": 0}', invalid("top_k: Input should be greater than or equal to 1")),
        (b'{"top_k": true}', invalid("top_k: Input should be a valid integer")),
        (b'{"seed": -5}', invalid("seed: Input should be greater than or equal to 0")),
        (b'{"seed": 9223372036854775808}', invalid("seed: Input should be less than or equal to 9223372036854775807")),
        (b'{"keep_session": 1}', invalid("keep_session: Input should be a valid boolean")),
        (b'{"session_id": ["x"]}', invalid("session_id: Input should be a valid string")),
        (b'{"maxchars": 3}', invalid("unknown field 'maxchars'")),
        (
            b'{"stop": ["a", "b", "c", "d", "e"]}',
            invalid("stop: List should have at most 4 items after validation, not 5"),
        ),
        (b'{"stop": 7}', invalid("stop: Input should be a valid string")),
        (b'{"stop": ""}', invalid("stop: String should have at least 1 character")),
        (b'{"stop": ["ok", ""]}', invalid("stop[1]: String should have at least 1 character")),
        (b'{"stop": "\\n\\n"}', None),
        (b'{"stop": ["\\n\\n", "Holmes"]}', None),
        (b'{"temperature": 1, "top_k": null}', None),
    ],
)
def test_generate_request(body, expected):
    assert reply(S.GenerateRequest, body) == expected


def test_generate_defaults_come_from_the_settings():
    r = S.GenerateRequest.model_validate_json(b"{}")
    assert (r.prompt, r.max_chars, r.temperature, r.top_k, r.top_p, r.seed, r.session_id, r.keep_session) == (
        "",
        20,
        1.0,
        None,
        1.0,
        None,
        None,
        False,
    )
    assert r.stop is None


def openai_reply(body: bytes) -> dict | None:
    """What an OpenAI client gets from /v1/completions for a body: OpenAI's error (or None: accepted)."""
    from serving.errors import from_error_doc

    doc = reply(S.CompletionRequest, body)
    if doc is None:
        return None
    try:
        S.CompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        doc["detail"] = exc.errors(include_context=False, include_input=False)
    return from_error_doc(400, doc)["error"]


@pytest.mark.parametrize(
    "body, message, param",
    [
        (
            b'{"prompt": [1, 2, 3]}',
            "prompt: a string or a list of strings (token ids are not taken: a token here is a character)",
            "prompt",
        ),
        (b'{"prompt": "x", "temperature": 2.5}', "temperature: Input should be less than or equal to 2", "temperature"),
        (b'{"prompt": "x", "max_tokens": 301}', "max_tokens: Input should be less than or equal to 300", "max_tokens"),
        (b'{"prompt": "x", "n": 5}', "n: Input should be less than or equal to 4", "n"),
        (b'{"prompt": "x", "logprobs": 6}', "logprobs: Input should be less than or equal to 5", "logprobs"),
        (
            b'{"prompt": "x", "frequency_penalty": 0.5}',
            "frequency_penalty: Input should be less than or equal to 0",
            "frequency_penalty",
        ),
        (b'{"prompt": "x", "suffix": "end"}', "suffix: Input should be null", "suffix"),
        (b'{"prompt": "x", "best_of": 2}', "best_of: Input should be less than or equal to 1", "best_of"),
        (
            b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}',
            "stop: List should have at most 4 items after validation, not 5",
            "stop",
        ),
        (
            b'{"prompt": "x", "stream_options": {"include_usage": "yes"}}',
            "stream_options.include_usage: Input should be a valid boolean",
            "stream_options.include_usage",
        ),
        (b'{"max_tokens": 5}', "prompt: Field required", "prompt"),
    ],
)
def test_completion_request_errors_name_the_field_as_openai_clients_sent_it(body, message, param):
    assert openai_reply(body) == {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_request",
    }


def test_completion_request_takes_what_openai_clients_send():
    # LangChain's legacy OpenAI LLM sends every neutral default; unknown fields are ignored, as vLLM does
    body = {
        "model": "m",
        "prompt": ["a", "b"],
        "max_tokens": 0,
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "best_of": 1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "logit_bias": {},
        "stream": True,
        "logprobs": 0,
        "stream_options": {"include_usage": True, "continuous_usage_stats": False},
        "echo": True,
        "stop": "\n",
        "seed": 3,
        "user": "u",
        "suffix": None,
        "top_k": -1,
        "session_id": None,
        "keep_session": False,
        "some_future_field": 1,
    }
    assert openai_reply(json.dumps(body).encode()) is None
    r = S.CompletionRequest.model_validate_json(json.dumps(body))
    assert (r.max_tokens, r.n, r.temperature) == (0, 1, 0) and not hasattr(r, "some_future_field")


def test_end_session_request():
    assert reply(EndSessionRequest, b"{}") == invalid("session_id: Field required")
    assert reply(EndSessionRequest, b'{"session_id": 5}') == invalid("session_id: Input should be a valid string")
    assert reply(EndSessionRequest, b'{"session_id": "abc"}') is None


def test_openapi_schema_carries_the_limits_and_examples():
    gen = S.GenerateRequest.model_json_schema()["properties"]
    assert (gen["max_chars"]["minimum"], gen["max_chars"]["maximum"], gen["max_chars"]["default"]) == (1, 300, 20)
    assert (gen["prompt"]["maxLength"], gen["top_p"]["exclusiveMinimum"], gen["top_p"]["maximum"]) == (200, 0, 1)
    assert gen["temperature"]["examples"] == [0.8]
    texts = S.ClassifyRequest.model_json_schema()["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 4, 1000)
    assert len(texts["examples"][0]) == 1


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (
            415,
            b'[{"error": "application/vnd.bentoml+pickle is not allowed in main server"}]',
            {"error": "application/vnd.bentoml+pickle is not allowed in main server", "kind": "unsupported_media_type"},
        ),
        (404, b"Not Found", {"error": "Not Found", "kind": "not_found"}),
        (409, b'{"error": "busy", "kind": "session_busy"}', None),  # already ours: left as it is
    ],
)
def test_other_bentoml_errors_get_the_same_shape(status, body, expected):
    assert normalize(status, body) == expected
