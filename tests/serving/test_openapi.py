"""The OpenAPI document (serving/openapi.py): valid OpenAPI 3.1 under openapi-spec-validator, every response with
the body actually sent, and schemathesis against a real ``bentoml serve`` finding nothing, with and without keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from serving_helpers import Server

from loadtests.server import ONE_CLIENT_LIMITS
from serving import openapi
from serving.config import Settings
from serving.errors import ClientError, normalize, quota_exceeded, rate_limited, session_busy, store_down
from serving.schemas import Schemas

ROOT = Path(__file__).resolve().parents[2]
# the JSON Schema 2020-12 keywords (and OpenAPI's own) a schema here may use: a misspelt constraint ("ge" for
# "minimum", as pydantic writes inside some unions) is valid JSON but constrains nothing for any client
KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "maxProperties",
    "items",
    "anyOf",
    "enum",
    "const",
    "$ref",
    "title",
    "description",
    "default",
    "examples",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "contentMediaType",
    "contentSchema",
}


def build(keyed: bool = False) -> dict:
    settings = Settings.from_env({"RNNTEXT_API_KEY": "k" * 24} if keyed else {})
    schemas = Schemas(settings)
    import bentoml

    from serving.service import RnnText

    base = bentoml.Service.openapi_spec.fget(RnnText).asdict()  # BentoML's own document, before ours
    return openapi.document(
        base, title=openapi.TITLE, version="9.9", description="d", keyed=keyed, **openapi.api_models(schemas)
    )


def subschemas(schema: dict, path: str):
    """Every schema inside a schema (properties, items, anyOf, additionalProperties, contentSchema)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from subschemas(sub, f"{path}/properties/{name}")
    for i, sub in enumerate(schema.get("anyOf", [])):
        yield from subschemas(sub, f"{path}/anyOf/{i}")
    for key in ("items", "additionalProperties", "contentSchema"):
        if isinstance(schema.get(key), dict):
            yield from subschemas(schema[key], f"{path}/{key}")


def test_bentomls_own_document_is_invalid_for_the_version_it_declares():
    """Why serving/openapi.py exists; when this fails, BentoML fixed it and the module can shrink."""
    import bentoml

    from serving.service import RnnText

    base = json.loads(json.dumps(bentoml.Service.openapi_spec.fget(RnnText).asdict()))
    assert base["openapi"] == "3.0.2"
    top_p = base["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert top_p["properties"]["top_p"]["exclusiveMinimum"] == 0  # 2020-12's numeric form; 3.0 wants a bool
    # BentoML's layout that serving/openapi.py relies on
    for name in ("classify", "generate", "end_session", "stop", "score", "info", "v1/completions"):
        op = base["paths"][f"/{name}"]["post"]
        name = name.removeprefix("v1/")
        assert op["operationId"] == f"rnntext__{name}" and op["tags"] == ["Service APIs"]
    assert {"/livez", "/readyz", "/healthz", "/metrics"} <= set(base["paths"])


@pytest.mark.parametrize("keyed", [False, True])
def test_the_served_document_is_valid_openapi_3_1(keyed):
    doc = build(keyed)
    assert doc["openapi"] == "3.1.0"
    errors = [str(e).splitlines()[0] for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == []
    for name, schema in doc["components"]["schemas"].items():
        for path, node in subschemas(schema, name):
            assert set(node) <= KEYWORDS, (path, set(node) - KEYWORDS)
    assert len(list(subschemas(doc["components"]["schemas"]["GenerateRequest"], ""))) > 10
    assert doc["info"] == {"title": openapi.TITLE, "version": "9.9", "description": "d"}


def test_every_operation_documents_the_statuses_it_can_answer():
    plain, keyed = build(False), build(True)
    expected = {
        "classify": {200, 400, 408, 413, 429, 503, 500},
        "info": {200, 400, 408, 413, 429, 503, 500},
        "generate": {200, 400, 404, 408, 409, 413, 429, 503, 500},
        "end_session": {200, 400, 404, 408, 409, 413, 429, 503, 500},
        "stop": {200, 400, 404, 408, 409, 413, 429, 503, 500},
        "score": {200, 400, 404, 408, 409, 413, 429, 503, 500},
        "v1/completions": {200, 400, 404, 408, 409, 413, 429, 503, 500},
    }
    for name, statuses in expected.items():
        assert {int(s) for s in plain["paths"][f"/{name}"]["post"]["responses"]} == statuses, name
        assert {int(s) for s in keyed["paths"][f"/{name}"]["post"]["responses"]} == statuses | {401}, name
        assert keyed["paths"][f"/{name}"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
        assert "security" not in plain["paths"][f"/{name}"]["post"]
    # the OpenAI-compatible routes document OpenAI's error body, the others this service's
    for name, model in (("v1/completions", "OpenAIError"), ("score", "Error")):
        for status, response in keyed["paths"][f"/{name}"]["post"]["responses"].items():
            if status not in ("200", "500"):
                assert response["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    completions = plain["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]
    assert set(completions) == {"application/json", "text/event-stream"}
    assert set(plain["paths"]["/v1/models"]["get"]["responses"]) == {"200"}
    assert set(keyed["paths"]["/v1/models"]["get"]["responses"]) == {"200", "401"}
    assert set(keyed["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "securitySchemes" not in plain["components"]
    assert {int(s) for s in plain["paths"]["/info"]["get"]["responses"]} == {200, 429, 503, 500}
    assert set(plain["paths"]["/readyz/sessions"]["get"]["responses"]) == {"200", "503"}
    ops = plain["paths"]["/classify"]["post"]["responses"]
    assert ops["429"]["headers"]["Retry-After"]["required"] is True
    assert keyed["paths"]["/classify"]["post"]["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]


def test_generate_is_an_event_stream_with_a_session_header_and_links_to_its_session():
    gen = build()["paths"]["/generate"]["post"]
    ok = gen["responses"]["200"]
    assert list(ok["content"]) == ["text/event-stream"]
    assert ok["headers"][openapi.SESSION_HEADER]["schema"] == {"type": "string"}
    assert {k: v["operationId"] for k, v in ok["links"].items()} == {
        "ContinueSession": "rnntext__generate",
        "StopSession": "rnntext__stop",
        "EndSession": "rnntext__end_session",
    }
    assert ok["links"]["EndSession"]["requestBody"] == {"session_id": f"$response.header.{openapi.SESSION_HEADER}"}
    # an empty body is all defaults (a new text from nothing), so the body is optional
    assert gen["requestBody"]["required"] is False
    assert build()["paths"]["/classify"]["post"]["requestBody"]["required"] is True


def error_validator(doc: dict) -> jsonschema.Draft202012Validator:
    schema = {"$ref": "#/components/schemas/Error", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_error_model_is_what_the_service_sends():
    validator = error_validator(build())
    s = Schemas(Settings.from_env({}))
    try:
        s.ClassifyRequest.model_validate_json(b'{"texts": [" "]}')
    except ValidationError as exc:
        raw = json.dumps({"error": "1 validation error", "detail": exc.errors()}).encode()
    bodies = [
        normalize(400, raw),
        normalize(400, b'{"detail": [{"type": "json_invalid", "loc": [], "msg": "x"}]}'),
        normalize(404, b"Not Found"),
        normalize(415, b'[{"error": "pickle"}]'),
        session_busy().body(),
        store_down().body(),
        quota_exceeded("x").body(),
        ClientError(408, "request_timeout", "late").body(),
    ]
    client = type("C", (), {"name": "bob", "limits": type("L", (), {"rate": 5.0, "burst": 10})()})()
    bodies.append(rate_limited(client, 0.3).body())
    assert isinstance(bodies[0]["detail"], list) and bodies[0]["detail"][0]["loc"] == ["texts", 0]
    for body in bodies:
        assert list(validator.iter_errors(body)) == [], body
    assert list(validator.iter_errors({"error": "x", "kind": "no_such_kind"}))  # the kinds are an enum
    assert list(validator.iter_errors({"error": "x", "kind": "invalid_request", "detail": "a string"}))


def test_integers_accept_json_numbers_without_a_fraction():
    """JSON Schema's integer is any number without a fraction: 1307.0 is valid for max_chars (schemathesis sends
    it), so the service accepts it; "7", true and 7.5 stay refused."""
    s = Schemas(Settings.from_env({}))
    req = s.GenerateRequest.model_validate_json(b'{"max_chars": 130.0, "top_k": 3.0, "seed": 7e0}')
    assert (req.max_chars, req.top_k, req.seed) == (130, 3, 7)
    assert all(type(v) is int for v in (req.max_chars, req.top_k, req.seed))
    for bad in (
        b'{"max_chars": "7"}',
        b'{"max_chars": true}',
        b'{"max_chars": 7.5}',
        b'{"top_k": 0.0}',
        b'{"seed": -1.0}',
        b'{"top_k": 2.5}',
        b'{"max_chars": 1e300}',
    ):
        with pytest.raises(ValidationError):
            s.GenerateRequest.model_validate_json(bad)


# --- schemathesis against a real server --------------------------------------------------------------------


def schemathesis(url: str, report_dir: Path, examples: int, headers: tuple[str, ...] = ()) -> dict:
    """One ``st run`` with every check and phase and a fixed seed; returns its JSON report."""
    cmd = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{url}/docs.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        "7",
        "--max-examples",
        str(examples),
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "json",
        "--report-dir",
        str(report_dir),
        "--request-timeout",
        "60",
        "--workers",
        "1",
    ]
    for h in headers:
        cmd += ["-H", h]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=report_dir)
    reports = sorted(report_dir.glob("json-*.json"))
    assert reports, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(reports[-1].read_text())
    assert run.returncode == 0, run.stdout[-6000:]
    return report


def requests_by_status(metrics: str, endpoint: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "bentoml_service_request_total" and sample.labels.get("endpoint") == endpoint:
                out[int(sample.labels["http_response_code"])] = sample.value
    return out


def check_report(report: dict) -> None:
    assert report["complete"] and report["exit_code"] == 0
    assert report["failures"] == [] and report["errors"] == []
    assert report["test_cases"]["with_failures"] == 0 and report["test_cases"]["errored"] == 0
    assert report["operations"]["tested"] == report["operations"]["total"] == 14
    assert all(p["status"] == "success" for p in report["phases"].values()), report["phases"]


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [False, True], ids=["default", "api-keys"])
def test_schemathesis_finds_nothing(keyed, tmp_path):
    """Every check, all four phases, seed 7. The per-client request rate is lifted: the whole run comes from one
    address, and 429s would only hide operations from the fuzzer (the 429 itself is documented and tested in
    test_tenancy.py). With keys, schemathesis also sends requests without and with a wrong key (ignored_auth)."""
    key = "k-schemathesis-0123456789"
    env = {"RNNTEXT_WORKERS": "1", **ONE_CLIENT_LIMITS, **({"RNNTEXT_API_KEYS": f"fuzzer:{key}"} if keyed else {})}
    srv = Server(env=env)
    try:
        srv.wait_ready()
        headers = (f"Authorization: Bearer {key}",) if keyed else ()
        report = schemathesis(srv.url, tmp_path, examples=40 if not keyed else 20, headers=headers)
        check_report(report)
        metrics = httpx.get(f"{srv.url}/metrics", headers=dict(h.split(": ", 1) for h in headers)).text
    finally:
        srv.stop()
    # the stateful phase followed the links into real sessions: some were ended (200), not only guessed (404)
    ended = requests_by_status(metrics, "/end_session")
    assert ended.get(200, 0) >= 1 and ended.get(404, 0) >= 1, ended
    generated = requests_by_status(metrics, "/generate")
    assert generated.get(200, 0) >= 20 and generated.get(500, 0) == 0, generated
    if keyed:
        assert requests_by_status(metrics, "/classify").get(401, 0) >= 1
    for endpoint in ("/classify", "/generate", "/end_session", "/stop", "/score", "/v1/completions", "/info"):
        answered = requests_by_status(metrics, endpoint)
        assert sum(answered.values()) >= 20 and answered.get(500, 0) == 0, (endpoint, answered)
