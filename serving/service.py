"""The BentoML service: typed API declarations only; the numerics are in runtime/ (ONNX Runtime, no torch).

    POST /classify     {"texts": [...]}               -> [{"label", "probabilities"}, ...]  (adaptive batching)
    POST /generate     {"prompt", "max_chars", ...}   -> text/event-stream of ``data: <JSON>`` events
    POST /end_session  {"session_id"}                 -> {"ended": id}
    POST /stop         {"session_id"}                 -> {"session_id", "stopping": true}  (ends its running stream)
    POST /score        {"text", "context"?, ...}      -> {"bits_per_char", "chars", "logprobs"?, ...}
    POST /v1/completions, GET /v1/models              -> OpenAI's completions API (serving/completions.py)
    POST /info  (GET /info too)                       -> readiness, worker, providers, precision, models, settings
    /livez /readyz /healthz /metrics                  -> BentoML's probes and Prometheus metrics
    GET /readyz/sessions                              -> 200 while the session store answers, else 503
    GET /demo, GET /                                  -> the demo page and the API docs (serving/pages.py)

Request and response models are in serving/schemas.py (Swagger UI at ``/``, the schema at ``/docs.json``);
settings come from RNNTEXT_* environment variables (serving/config.py, docs/serving.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from runtime.logprobs import bits_per_char

from . import __version__, completions, model_store, openai_schemas, openapi, pages, patches
from .board import WorkerBoard
from .config import Settings
from .errors import ClientError, error_response
from .gate import Gate, client_of
from .jobs import Job
from .patches import drain
from .schemas import (
    CharScore,
    EndSessionRequest,
    EndSessionResponse,
    Info,
    Prediction,
    Schemas,
    ScoreResponse,
    StopRequest,
    StopResponse,
)

SETTINGS = Settings.from_env()  # the decorators below need the limits, the batching and worker settings
SCHEMAS = Schemas(SETTINGS)
# the models in BentoML's model store (registered from exported_models/ on first use; a Bento packs them);
# none when RNNTEXT_MODELS points at another folder, which is then served as it is (serving/model_store.py)
MODELS = model_store.declared_models(SETTINGS.models)

# Imported in each worker before BentoML builds its ASGI app and uvicorn server, so these take effect there.
# Tracing without an exporter only costs CPU and memory per request; RNNTEXT_TRACING=1 leaves OpenTelemetry
# to BentoML's tracing config and the OTEL_* variables.
if not SETTINGS.tracing:
    os.environ["OTEL_SDK_DISABLED"] = "true"
BOARD = None
if os.environ.get("RNNTEXT_RUN_DIR") and bentoml.server_context.worker_index:
    # in a worker (the main process imports this module too), with the folder made by _preflight
    BOARD = WorkerBoard(
        os.path.join(os.environ["RNNTEXT_RUN_DIR"], "workers.bin"),
        SETTINGS.workers,
        bentoml.server_context.worker_index - 1,
    )
# every change to BentoML's, uvicorn's and asyncio's behaviour (serving/patches/): checked against the versions
# they were verified on (else the server refuses to start, in the main process already), then installed
PATCHES = patches.install(SETTINGS, board=BOARD)


STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # event streams: no cache, no proxy buffer


def _svc():
    return bentoml.get_current_service()


def _count_error(kind: str, client: str = "-") -> None:
    try:
        _svc().metrics.error(kind, client)
    except Exception:  # before the service is up: nothing to count into yet
        pass


def _quotas():
    try:
        return _svc().state.quotas
    except Exception:  # before the service is up: the gate checks no rate yet
        return None


def _client(ctx: bentoml.Context):
    """The caller, as the gate identified it (serving/gate.py, serving/clients.py)."""
    return _svc().state.directory.lookup(client_of(ctx.request.headers))


def _refused(ctx: bentoml.Context, client, err: ClientError, openai: bool = False) -> JSONResponse:
    """The JSON error answer of an endpoint (OpenAI's shape with ``openai``), counted. With a ctx parameter BentoML
    gives every response ctx's status (_bentoml_impl/server/app.py), so it is set there too."""
    ctx.response.status_code = err.status
    return error_response(err, lambda kind: _count_error(kind, client.label), openai=openai)


async def info_get(request) -> JSONResponse:
    """GET /info for curl and browsers; the typed API is POST /info."""
    return JSONResponse(await _svc().state.info(client_of(request.headers)))


async def sessions_ready(request) -> JSONResponse:
    """GET /readyz/sessions: whether kept sessions can be served now (the store answers). /readyz itself says
    whether the worker can classify, and stays 200 while only the session store is down."""
    try:
        ok = await _svc().state.sessions_ready()
    except Exception:
        ok = False
    return JSONResponse(
        {"sessions": "ok" if ok else "unavailable"},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "1"},
    )


async def models_get(request) -> JSONResponse:
    """GET /v1/models: the generator, as OpenAI's model list."""
    state = _svc().state
    return JSONResponse(openai_schemas.models(state.model_id, state.model_created, SETTINGS))


class CompletionStream(StreamingResponse):
    """A /v1/completions event stream that gives its streams back however the response ends, even when the client
    left before the first chunk (a generator never started never runs its ``finally``)."""

    def __init__(self, run: completions.Completer, headers: dict[str, str]):
        super().__init__(run.stream(), media_type="text/event-stream", headers=headers)
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.run.release()


# GET /info, the session probe, the demo page (/demo) and the API docs page (/) in place of BentoML's index
aliases = Starlette(
    routes=[
        Route("/info", info_get, methods=["GET"]),
        Route("/readyz/sessions", sessions_ready, methods=["GET", "HEAD"]),
        Route("/v1/models", models_get, methods=["GET"]),
        *pages.ROUTES,
    ]
)


@bentoml.service(
    name="rnntext",
    workers=SETTINGS.workers,
    # only the time to the response's first byte (long event streams are not cut); BentoML's default, above
    # the body deadline; it also bounds how long anything BentoML keeps per request lives
    traffic={"timeout": 60},
    logging={"access": {"enabled": SETTINGS.access_log}},
    service_class=openapi.documented_service(__version__, SETTINGS.directory.keyed, SCHEMAS),
)
@bentoml.asgi_app(aliases, path="/")  # matched only for its own paths, after BentoML's routes
class RnnText:
    classifier_model = MODELS.get("classifier")
    generator_model = MODELS.get("generator")

    def __init__(self) -> None:
        from .app_state import AppState  # the runtimes: loaded (and their sha256 checked) here, in the worker

        self.state = AppState(
            SETTINGS,
            worker=bentoml.server_context.worker_index,
            model_dirs=model_store.resolve(SETTINGS.models, MODELS, RnnText.bento),
            board=BOARD,
        )
        self.metrics = self.state.metrics
        self.generation = self.state.generation
        drain.register(self.state.drain)  # what SIGTERM starts in this worker (serving/patches/drain.py)
        if "dispatcher" in PATCHES:
            from .patches import dispatcher

            dispatcher.observe_queue(self.metrics.classify_queue.set)

    @bentoml.on_deployment
    def _preflight() -> None:
        """Once, in the main ``bentoml serve`` process, before any worker starts: a model file that does not
        match its manifest (or 'cuda' without CUDA) stops the server with one clear message (a worker failing
        in ``__init__`` would only be restarted over and over); the workers' shared session file is made."""
        from .app_state import preflight

        preflight(SETTINGS, model_store.resolve(SETTINGS.models, MODELS, RnnText.bento))

    @bentoml.api(
        batchable=SETTINGS.batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
        input_spec=SCHEMAS.ClassifyRequest,
    )
    def classify(self, texts: list[str]) -> Annotated[list[Prediction], ContentType("application/json")]:
        """Topic of each text (business, entertainment, politics, sport, tech) with every topic's probability,
        in input order. Requests are merged by BentoML's adaptive batcher (timing: serving/patches/dispatcher.py)."""
        return self.state.classify(texts)

    @bentoml.api(input_spec=SCHEMAS.GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **request: Any) -> AsyncGenerator[str, None]:
        """Sherlock Holmes-style text, streamed as server-sent events: ``data: {"text": ...}`` chunks, then
        ``data: {"done": true, "chars": N, "finish_reason": ...}`` (with ``session_id`` when ``keep_session``,
        ``stop`` when a stop sequence ended it). With a kept session
        the next request continues exactly where this one stopped."""
        client = _client(ctx)
        try:
            ticket = await self.generation.begin(Job.of(request), client)
        except ClientError as err:  # before the first byte: a JSON error with its own status
            _count_error(err.kind, client.label)
            ctx.response.status_code = err.status
            ctx.response.headers.update({"content-type": "application/json", **(err.headers() or {})})
            yield json.dumps(err.body())
            return
        ctx.response.headers.update(STREAM_HEADERS)
        if ticket.kept:  # the kept session's id before the stream ends (serving/openapi.py links to it)
            ctx.response.headers[openapi.SESSION_HEADER] = ticket.kept
        async for event in self.generation.events(ticket):
            yield event

    @bentoml.api(input_spec=EndSessionRequest)
    async def end_session(self, ctx: bentoml.Context, session_id: str) -> EndSessionResponse:
        """End one of your kept sessions now (it would otherwise expire after RNNTEXT_SESSION_TTL_S idle
        seconds). Another client's session is unknown to you (404)."""
        client = _client(ctx)
        try:
            await self.generation.end_session(session_id, client)
        except ClientError as err:
            return _refused(ctx, client, err)
        return EndSessionResponse(ended=session_id)

    @bentoml.api(input_spec=StopRequest)
    async def stop(self, ctx: bentoml.Context, session_id: str) -> StopResponse:
        """End the running stream of one of your kept sessions at its next character: the stream still sends its
        last characters and a done event with ``"finish_reason": "stopped"`` and ``chars``, and the session is kept
        exactly after them (continue it as after any request). 409 ``not_generating`` when nothing is running."""
        client = _client(ctx)
        try:
            await self.generation.stop(session_id, client)
        except ClientError as err:
            return _refused(ctx, client, err)
        return StopResponse(session_id=session_id)

    @bentoml.api(input_spec=SCHEMAS.ScoreRequest)
    async def score(self, ctx: bentoml.Context, **request: Any) -> ScoreResponse:
        """Bits per character of a text (each character given all before it, after ``context`` and the session's
        state) and, with ``logprobs``, every character's log-probability. The session is not changed."""
        client = _client(ctx)
        top = request["top_logprobs"] if request["logprobs"] else 0
        job = Job(
            prompt=request["text"],
            max_chars=0,
            session_id=request["session_id"],
            top=top,
            score_prompt=True,
            context=request["context"],
            readonly=True,
        )
        try:
            records, unknown = await self.generation.score(job, client)
        except ClientError as err:
            return _refused(ctx, client, err)
        total = sum(r.logprob for r in records)
        vocab = self.generation.runtime.vocab
        # no "logprobs": null: BentoML's client reads an optional list as a list (_bentoml_sdk/method.py keeps the
        # first member of the union) and fails on null; a missing field it leaves out
        scored = ScoreResponse(
            chars=len(records),
            bits_per_char=bits_per_char(records),
            logprob=total,
            unknown=unknown,
            logprobs=[
                CharScore(char=ch, logprob=r.logprob, top={vocab[i]: lp for i, lp in r.top} if top else None)
                for ch, r in zip(request["text"], records)
            ]
            if request["logprobs"]
            else None,
        )
        return JSONResponse(scored.model_dump(exclude_none=not request["logprobs"]))

    @bentoml.api(route="/v1/completions", input_spec=SCHEMAS.CompletionRequest)
    async def completions(self, ctx: bentoml.Context, **request: Any) -> dict:
        """OpenAI-compatible completions (one token = one character): JSON, or text_completion chunks as server-sent
        events with ``stream``. Errors in OpenAI's shape (serving/completions.py, docs/serving.md)."""
        client = _client(ctx)
        request = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in request.items()}
        try:
            run = await completions.begin(self.generation, request, self.state.model_id, client)
            headers = {}
            if run.tickets[0].kept:
                headers[openapi.SESSION_HEADER] = run.tickets[0].kept
            if request["stream"]:
                headers.update(STREAM_HEADERS)
                return CompletionStream(run, headers)
            return JSONResponse(await run.body(), headers=headers)
        except ClientError as err:
            return _refused(ctx, client, err, openai=True)

    @bentoml.api
    async def info(self, ctx: bentoml.Context) -> Info:
        """This worker: readiness, providers and precision, model versions and metrics, sessions, settings, and
        who you are to it (your client name and limits)."""
        return Info(**await self.state.info(client_of(ctx.request.headers)))

    @bentoml.on_startup
    async def _start(self) -> None:
        # the batcher can only be warmed through HTTP, once BentoML has attached the in-process client
        self.state.start_warm_up(lambda: getattr(self, "__self_proxy__", None))

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        await self.state.aclose()

    async def __is_ready__(self) -> bool:
        return await self.state.ready()


RnnText.add_asgi_middleware(
    Gate,
    directory=SETTINGS.directory,
    max_body_bytes=SETTINGS.max_body_bytes,
    read_timeout_s=SETTINGS.read_timeout_s,
    on_error=_count_error,
    worker=lambda: bentoml.server_context.worker_index,
    quotas=_quotas,
    access_log=SETTINGS.access_log,
    replica=SETTINGS.replica,
)
