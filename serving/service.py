"""The BentoML service: declarations only; the numerics are in classifier.py / generator.py (ONNX Runtime).

    POST /classify     {"texts": [...]}               -> [{"label", "probabilities"}, ...]  (adaptive batching)
    POST /generate     {"prompt", "max_chars", ...}   -> text/event-stream of ``data: <JSON>`` events
    POST /end_session  {"session_id"}                 -> {"ended": id}
    GET  /info                                        -> providers, model versions and metrics, limits
    /livez /readyz /healthz /metrics                  -> BentoML's probes and Prometheus metrics

Settings come from RNNTEXT_* environment variables (serving/config.py, docs/serving.md). No torch is imported.
"""
from __future__ import annotations

import asyncio
import os

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from . import connections, upstream
from .config import Settings
from .gate import Gate, error_response
from .validation import ClientError, parse_json_object, validate_end_session, validate_generate

SETTINGS = Settings.from_env()      # the decorators below need the batching and worker settings

# Imported in each worker before BentoML builds its ASGI app and uvicorn server, so these take effect there.
# Tracing without an exporter only costs CPU and memory per request; RNNTEXT_TRACING=1 leaves OpenTelemetry
# to BentoML's tracing config and the OTEL_* variables.
if not SETTINGS.tracing:
    os.environ["OTEL_SDK_DISABLED"] = "true"
upstream.install()
connections.install(SETTINGS.max_connections, SETTINGS.read_timeout_s)


def _svc():
    return bentoml.get_current_service()


def _count_error(kind: str) -> None:
    try:
        _svc().metrics.error(kind)
    except Exception:   # before the service is up: nothing to count into yet
        pass


async def _json(request: Request) -> dict:
    # the gate has read the body (size limit, deadline) and replays it in one message
    return parse_json_object(await request.body(), SETTINGS.max_body_bytes)


async def generate(request: Request):
    try:
        req = validate_generate(await _json(request), SETTINGS.max_prompt_chars, SETTINGS.max_chars,
                                SETTINGS.default_chars)
        generation = _svc().generation
        ticket = await generation.begin(req)
    except ClientError as err:
        return error_response(err, _count_error)
    return EventStream(generation, ticket)


class EventStream(StreamingResponse):
    """The generation's events; its slot and session are given back however the response ends."""

    def __init__(self, generation, ticket) -> None:
        super().__init__(generation.events(ticket), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.generation, self.ticket = generation, ticket

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.generation.release(self.ticket)


async def end_session(request: Request):
    try:
        sid = validate_end_session(await _json(request))
        await _svc().generation.end_session(sid)
    except ClientError as err:
        return error_response(err, _count_error)
    return JSONResponse({"ended": sid})


async def info(request: Request):
    return JSONResponse(await _svc().info())


http_routes = Starlette(routes=[Route("/generate", generate, methods=["POST"]),
                                Route("/end_session", end_session, methods=["POST"]),
                                Route("/info", info, methods=["GET"])])


@bentoml.service(
    name="rnntext",
    workers=SETTINGS.workers,
    # only the time to the response's first byte (long event streams are not cut); BentoML's default, above
    # the body deadline; it also bounds how long anything BentoML keeps per request lives
    traffic={"timeout": 60},
)
@bentoml.asgi_app(http_routes, path="/")   # matched only for its own paths, after BentoML's routes
class RnnText:
    def __init__(self) -> None:
        from .app_state import AppState  # the runtimes: loaded (and their sha256 checked) here, in the worker

        self.state = AppState(SETTINGS)
        self.metrics = self.state.metrics
        self.generation = self.state.generation

    @bentoml.on_deployment
    def _preflight() -> None:
        """Once, in the main ``bentoml serve`` process, before any worker starts: a model file that does not
        match its manifest (or 'cuda' without CUDA) stops the server with one clear message; a worker failing
        in ``__init__`` would only be restarted over and over."""
        from .app_state import preflight

        preflight(SETTINGS)

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def classify(self, texts: list[str]) -> list[dict]:
        """One adaptive batch of texts (from several requests); results in input order."""
        return self.state.classify(texts)

    @bentoml.on_startup
    async def _start(self) -> None:
        # the batcher can only be warmed through HTTP, once BentoML has attached the in-process client
        self._warm = asyncio.get_running_loop().create_task(self.state.warm_up(lambda: getattr(
            self, "__self_proxy__", None)))

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        await self.state.aclose()

    async def __is_ready__(self) -> bool:
        return await self.state.ready()

    async def info(self) -> dict:
        return await self.state.info()


RnnText.add_asgi_middleware(Gate, api_key=SETTINGS.api_key, max_body_bytes=SETTINGS.max_body_bytes,
                            max_texts=SETTINGS.max_texts, max_text_chars=SETTINGS.max_text_chars,
                            read_timeout_s=SETTINGS.read_timeout_s, on_error=_count_error)
