"""Two costs that BentoML 1.4 adds to every request, removed when the service module is imported.

Measured with py-spy on one worker under 32 closed-loop /classify clients (docs/benchmarks.md, "Where a
request's time goes"):

* ``APIMethod.__get__`` rebuilds the API's local caller on every request: ``inspect.signature`` of the method,
  a new wrapper and ``functools.wraps`` (~3.5% of the worker's CPU). ``cache_api_callers`` builds it once per
  service instance; the caller depends on nothing but the method and the instance.
* The OpenTelemetry ASGI middleware runs on every request even when tracing is off (``OTEL_SDK_DISABLED``): a
  no-op span is still started, attached and fed every message (~7%). ``drop_tracing_middleware`` leaves it out
  of the middleware stack; ``RNNTEXT_TRACING=1`` keeps it.
"""
from __future__ import annotations

from typing import Any

_installed: dict[str, Any] = {}


def cache_api_callers() -> None:
    from _bentoml_sdk.method import APIMethod

    if "local_call" in _installed:
        return
    build = _installed["local_call"] = APIMethod._local_call

    def cached(self: Any, instance: Any) -> Any:
        callers = instance.__dict__.setdefault("_rnntext_api_callers", {})
        if self.name not in callers:
            callers[self.name] = build(self, instance)
        return callers[self.name]

    APIMethod._local_call = cached


def drop_tracing_middleware() -> None:
    from _bentoml_impl.server.app import ServiceAppFactory

    if "middlewares" in _installed:
        return
    prop = _installed["middlewares"] = ServiceAppFactory.middlewares

    def middlewares(self: Any) -> list:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return [m for m in prop.fget(self) if m.cls is not OpenTelemetryMiddleware]

    ServiceAppFactory.middlewares = property(middlewares)
