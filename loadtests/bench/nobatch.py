"""The "batching off" baseline for the HTTP benchmark: the service's own ClassifierRuntime behind a
non-batchable BentoML endpoint, so each request runs its own model call (concurrently, in BentoML's thread pool).

Used because the service has no setting that turns adaptive batching off: BentoML rejects
``max_batch_size=1`` ("'max_batch_size' must be > 1"), so RNNTEXT_MAX_BATCH_SIZE=1 does not start.
Same settings as the service, read the same way (serving.config.Settings): models folder (RNNTEXT_MODELS),
provider (RNNTEXT_PROVIDER), precision (RNNTEXT_PRECISION), intra-op threads (RNNTEXT_THREADS) and worker count
(RNNTEXT_WORKERS, default: the service's own default, one per usable core), same request and reply format, and
the same ``X-Rnntext-Worker`` response header, so the benchmark can say how connections were spread over the
workers. Serve it with ``bentoml serve loadtests.bench.nobatch:NoBatch`` (loadtests.bench does). No torch.
"""
from __future__ import annotations

import os

import bentoml

from runtime.manifest import model_dir
from serving import config as _config


def usable_cores() -> int:
    """The service's count of usable cores (serving.config.usable_cores), else the CPU affinity mask."""
    helper = getattr(_config, "usable_cores", None)
    if helper is not None:
        return int(helper())
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def settings(env: dict[str, str] | None = None):
    """The service's settings for this environment; the worker count resolved as the service resolves it."""
    env = dict(os.environ if env is None else env)
    try:
        s = _config.Settings.from_env(env)
    except _config.ConfigError:
        # an older config refused >1 worker without a shared session store; this service keeps no sessions
        s = _config.Settings.from_env({**env, "RNNTEXT_WORKERS": "1"})
    workers = int(getattr(s, "workers", 0) or 0)
    if workers <= 0:      # a config that leaves "0 = default" unresolved
        default = getattr(_config, "default_workers", None)
        workers = int(default(s.provider)) if default is not None else usable_cores()
    return s, workers


SETTINGS, WORKERS = settings()
WORKER_HEADER = b"x-rnntext-worker"


class WorkerHeader:
    """ASGI middleware: ``X-Rnntext-Worker: <worker index>`` on every response, as the service sends it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        value = str(bentoml.server_context.worker_index).encode()

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (WORKER_HEADER, value)]}
            await send(message)

        await self.app(scope, receive, send_with_header)


@bentoml.service(name="rnntext-nobatch", workers=WORKERS, traffic={"timeout": 300})
class NoBatch:
    def __init__(self) -> None:
        from loadtests.bench.ceiling import precision_kwargs
        from runtime.classifier import ClassifierRuntime

        precision = getattr(SETTINGS, "precision", None) or os.environ.get("RNNTEXT_PRECISION")
        self.runtime = ClassifierRuntime(model_dir(SETTINGS.models, "classifier"), SETTINGS.provider,
                                         SETTINGS.threads, **precision_kwargs(ClassifierRuntime, precision))
        self.runtime.predict_proba(["warm up the session " * 50, "a short one"])

    @bentoml.api
    def classify(self, texts: list[str]) -> list[dict]:
        return self.runtime.classify(texts)

    @bentoml.api
    def info(self) -> dict:
        """What this baseline runs with, in the service's /info field names."""
        return {"worker": bentoml.server_context.worker_index, "workers": WORKERS,
                "precision": {"classifier": getattr(self.runtime, "precision", "fp32")},
                "providers": {"classifier": self.runtime.session.get_providers()},
                "settings": {"threads": SETTINGS.threads, "provider": SETTINGS.provider}}


NoBatch.add_asgi_middleware(WorkerHeader)
