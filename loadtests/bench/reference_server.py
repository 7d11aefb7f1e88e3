"""A minimal reference server for /classify: what the same model does behind plain uvicorn, no framework.

``make bench`` (loadtests/bench/run.py, http section) starts it next to the service and drives it with the same
client (http_load.py) at the same client counts, so the service's /classify throughput reads as a ratio to it:
what BentoML, adaptive batching, the quotas and the middleware cost or gain.

    python -m loadtests.bench.reference_server --port 8001 --workers 2 --precision auto

What it is: uvicorn with a Starlette app (``create_app``), ``--workers`` uvicorn worker processes (the bench gives
it as many as the service has), each holding one ``runtime.classifier.ClassifierRuntime`` on
``<models>/classifier`` with 1 intra-op thread and the given precision. One request is one model call
(``ClassifierRuntime.classify``, exactly what the service runs on a batch), made on the event loop itself: no
batching, no thread pool, no per-client limits (the service's are lifted for the bench too:
loadtests.server.ONE_CLIENT_LIMITS), no access log.

    POST /classify  {"texts": [...]}  -> [{"label", "probabilities"}, ...]  (the service's JSON shape); a body
                    that is not JSON: 400; not 1 to --max-texts non-blank strings of at most --max-text-chars: 422
    GET  /readyz    200 once the answering worker has loaded and warmed up its model
    GET  /info      {"precision", "provider", "providers", "threads", "workers", "pid"} of the answering worker

Every response names its worker process (pid) in ``X-Rnntext-Worker``, as the service names its worker, so the
bench reports how the clients' connections were spread over the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from loadtests import ROOT
from loadtests.bench.http_load import WORKER_HEADER  # the header the bench counts workers by
from loadtests.server import free_port, stop_group, wait_ready
from serving.config import Settings

MODULE = "loadtests.bench.reference_server"  # not __name__: that is "__main__" when run with -m
# the service's defaults (RNNTEXT_MAX_TEXTS, RNNTEXT_MAX_TEXT_CHARS)
MAX_TEXTS = Settings.model_fields["max_texts"].default
MAX_TEXT_CHARS = Settings.model_fields["max_text_chars"].default
# the workers (uvicorn spawns them) read their settings from these
ENV = {
    "models": "RNNTEXT_REFERENCE_MODELS",
    "provider": "RNNTEXT_REFERENCE_PROVIDER",
    "precision": "RNNTEXT_REFERENCE_PRECISION",
    "workers": "RNNTEXT_REFERENCE_WORKERS",
    "max_texts": "RNNTEXT_REFERENCE_MAX_TEXTS",
    "max_text_chars": "RNNTEXT_REFERENCE_MAX_TEXT_CHARS",
}
_NOT_BLANK = re.compile(r"\S")
_WARM = "Shares in BT rose after profits beat forecasts, helped by strong broadband sales and lower costs. "


def invalid(body: object, max_texts: int, max_text_chars: int) -> str | None:
    """Why a decoded JSON body is not a /classify request (the service's rules), or None."""
    if not isinstance(body, dict) or set(body) != {"texts"}:
        return 'the body must be an object with one field, "texts"'
    texts = body["texts"]
    if not isinstance(texts, list) or not 1 <= len(texts) <= max_texts:
        return f'"texts" must be a list of 1 to {max_texts} texts'
    for t in texts:
        if not isinstance(t, str) or not 1 <= len(t) <= max_text_chars or not _NOT_BLANK.search(t):
            return f"each text must be a string of 1 to {max_text_chars} characters, not only whitespace"
    return None


class NoDelayHTTPProtocol(AutoHTTPProtocol):
    """uvicorn's HTTP protocol with TCP_NODELAY on every connection. With ``--workers`` > 1 uvicorn binds the
    listening socket itself, as ``socket.socket(family)`` (proto 0), and asyncio sets TCP_NODELAY only on sockets
    whose proto is IPPROTO_TCP: the accepted connections kept Nagle's algorithm, and uvicorn's two writes per
    response (head, body) met the client's delayed ACK, ~44 ms per request whatever the model did (measured:
    /classify p50 44 ms with 2 workers, 2 ms with 1)."""

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def create_app(
    models: str | os.PathLike | None = None,
    provider: str | None = None,
    precision: str | None = None,
    workers: int | None = None,
    max_texts: int | None = None,
    max_text_chars: int | None = None,
):
    """The Starlette app of one worker, its model loaded and warmed up; arguments left out come from ENV (how
    uvicorn's worker processes get them), then the defaults."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from runtime.classifier import ClassifierRuntime

    env = os.environ
    models = Path(models or env.get(ENV["models"]) or ROOT / "exported_models")
    provider = provider or env.get(ENV["provider"], "auto")
    precision = precision or env.get(ENV["precision"], "auto")
    workers = workers or int(env.get(ENV["workers"], "1"))
    max_texts = max_texts or int(env.get(ENV["max_texts"], MAX_TEXTS))
    max_text_chars = max_text_chars or int(env.get(ENV["max_text_chars"], MAX_TEXT_CHARS))

    rt = ClassifierRuntime(models / "classifier", provider, intra_threads=1, precision=precision)
    for n in (1, 2, 4, 8):  # ONNX Runtime's first runs of each shape allocate and pick kernels
        rt.classify([_WARM * (k + 1) * 8 for k in range(n)])
    pid = str(os.getpid())
    headers = {WORKER_HEADER: pid}

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"error": detail}, status_code=status, headers=headers)

    async def classify(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "the body is not JSON")
        why = invalid(body, max_texts, max_text_chars)
        if why:
            return error(422, why)
        # one request, one model call, on the event loop: the worker does nothing else meanwhile anyway
        return Response(json.dumps(rt.classify(body["texts"])), media_type="application/json", headers=headers)

    async def readyz(request: Request) -> Response:
        return Response("ready\n", media_type="text/plain", headers=headers)

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "precision": rt.precision,
                "provider": rt.provider,
                "providers": rt.session.get_providers(),
                "threads": 1,
                "workers": workers,
                "pid": int(pid),
            },
            headers=headers,
        )

    return Starlette(
        routes=[
            Route("/classify", classify, methods=["POST"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/info", info, methods=["GET"]),
        ]
    )


def serve(host: str, port: int, workers: int, log_level: str = "warning") -> None:
    """uvicorn with ``workers`` processes (one: this process), each running ``create_app`` with ENV."""
    import uvicorn

    uvicorn.run(
        f"{MODULE}:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=f"{MODULE}:NoDelayHTTPProtocol",
        log_level=log_level,
        access_log=False,
    )


class ReferenceServer:
    """``python -m loadtests.bench.reference_server`` as a subprocess in its own process group, on a free port
    (the interface of loadtests.server.Server: url, proc, wait_ready, stop, a context manager)."""

    def __init__(
        self,
        models: str | os.PathLike,
        workers: int,
        precision: str = "auto",
        provider: str = "auto",
        port: int | None = None,
        log_path: Path | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers, self.precision, self.provider = workers, precision, provider
        self.cmd = [
            sys.executable,
            "-m",
            MODULE,
            "--models",
            str(models),
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--precision",
            precision,
            "--provider",
            provider,
        ]
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
        return wait_ready(self.url, self.proc, timeout, name="reference server", log_path=self.log_path)

    def stop(self) -> None:
        """uvicorn's supervisor and its workers share a process group: loadtests.server.stop_group."""
        stop_group(self.proc, self._log)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.bench.reference_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--models", type=Path, default=ROOT / "exported_models", help="exported-models root")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    ap.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto", help="classifier precision")
    ap.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--max-texts", type=int, default=MAX_TEXTS)
    ap.add_argument("--max-text-chars", type=int, default=MAX_TEXT_CHARS)
    ap.add_argument("--log-level", default="warning", help="uvicorn's (default warning)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    os.environ.update(
        {
            ENV["models"]: str(args.models.resolve()),
            ENV["provider"]: args.provider,
            ENV["precision"]: args.precision,
            ENV["workers"]: str(args.workers),
            ENV["max_texts"]: str(args.max_texts),
            ENV["max_text_chars"]: str(args.max_text_chars),
        }
    )
    serve(args.host, args.port, args.workers, args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
