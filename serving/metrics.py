"""The service's own Prometheus metrics, exported by BentoML's /metrics next to its built-in ones.

``Metrics()`` must be built inside the worker (the service's ``__init__``), not at import: BentoML sets
PROMETHEUS_MULTIPROC_DIR in the worker after importing the service module, and prometheus_client decides
between single- and multi-process mode when it is first imported.
"""

from __future__ import annotations


class Metrics:
    def __init__(self, max_batch_size: int, max_streams: int):
        import prometheus_client as prom

        self.classify_batch = prom.Histogram(
            "rnntext_classify_batch_texts",
            "Texts per classifier batch (BentoML adaptive batching)",
            buckets=_buckets(max_batch_size),
        )
        self.classified = prom.Counter("rnntext_classified_texts", "Texts classified")
        self.step_batch = prom.Histogram(
            "rnntext_generate_step_streams",
            "Streams advanced together per generation step",
            buckets=_buckets(max_streams),
        )
        self.chars = prom.Counter("rnntext_generated_chars", "Characters generated (streamed to clients)")
        # one worker (in-process store) or shared Redis: the largest live value is the right total in both cases
        self.sessions = prom.Gauge(
            "rnntext_active_sessions", "Kept generation sessions in the store", multiprocess_mode="livemax"
        )
        self.streams = prom.Gauge(
            "rnntext_active_streams", "Generation streams running now", multiprocess_mode="livesum"
        )
        # the adaptive batcher's queue when the model is free to take it (serving/patches/dispatcher.py): what gathered
        # during the last model call; a sustained value near RNNTEXT_MAX_BATCH_SIZE means add replicas
        self.classify_queue = prom.Gauge(
            "rnntext_classify_queue",
            "/classify requests waiting for the model when a batch starts (adaptive batcher)",
            multiprocess_mode="livesum",
        )
        # client: the API key's name, "anonymous" for clients known by address (one series per address would be
        # unbounded), "-" before the client is known (a 401)
        self.errors = prom.Counter(
            "rnntext_errors", "Requests answered with an error, by kind and client", ["kind", "client"]
        )

    def on_tick(self, streams: int, chars: int) -> None:
        self.step_batch.observe(streams)
        if chars:
            self.chars.inc(chars)

    def on_batch(self, texts: int) -> None:
        self.classify_batch.observe(texts)
        self.classified.inc(texts)

    def error(self, kind: str, client: str = "-") -> None:
        self.errors.labels(kind=kind, client=client).inc()


def _buckets(top: int) -> list[float]:
    """1, 2, 4, … up to and including ``top``."""
    out, b = [], 1
    while b < top:
        out.append(float(b))
        b *= 2
    out.append(float(top))
    return out
