"""Service settings, read from environment variables (every one optional; defaults in ``DEFAULTS``).

The table in docs/serving.md lists the same names and defaults; keep the two in step. Reading the settings is
done by ``Settings.from_env()`` when the service module declares the service, never at import of this module.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# env var -> default (as the string a user would write)
DEFAULTS: dict[str, str] = {
    "RNNTEXT_MODELS": "exported_models",         # exported-models root; relative paths are from the project root
    "RNNTEXT_PROVIDER": "auto",                  # auto | cuda | cpu
    "RNNTEXT_WORKERS": "1",                      # >1 only with RNNTEXT_REDIS_URL (sessions must be shared)
    "RNNTEXT_THREADS": "0",                      # ONNX Runtime intra-op threads per session; 0 = cores / (2 workers)
    "RNNTEXT_MAX_BATCH_SIZE": "32",              # texts per classifier batch = one model call of the runtime
    "RNNTEXT_MAX_LATENCY_MS": "5000",            # batcher's latency ceiling; requests predicted to miss it get 503
    "RNNTEXT_MAX_TEXTS": "64",                   # texts per /classify request
    "RNNTEXT_MAX_TEXT_CHARS": "20000",           # characters per text
    "RNNTEXT_MAX_BODY_BYTES": "2097152",         # request body size (2 MiB) -> 413 above
    "RNNTEXT_MAX_PROMPT_CHARS": "4000",          # characters per /generate prompt
    "RNNTEXT_MAX_CHARS": "2000",                 # upper bound of /generate max_chars
    "RNNTEXT_DEFAULT_CHARS": "200",              # max_chars when the request leaves it out
    "RNNTEXT_MAX_STREAMS": "64",                 # concurrent generation streams per worker (503 above)
    "RNNTEXT_SESSION_TTL_S": "900",              # idle time after which a kept session expires (15 min)
    "RNNTEXT_MAX_SESSIONS": "10000",             # kept sessions; the least recently used is evicted above
    "RNNTEXT_REDIS_URL": "",                     # e.g. redis://host:6379/0; empty = in-process store
    "RNNTEXT_API_KEY": "",                       # when set, required on every endpoint but /livez /readyz /healthz
    "RNNTEXT_WARMUP": "1",                       # 0 skips the start-up warm-up (tests of start-up only)
    "RNNTEXT_READ_TIMEOUT_S": "30",              # a request head, and then its body, must arrive within this
    "RNNTEXT_MAX_CONNECTIONS": "1000",           # open connections per worker; 503 and closed above
    "RNNTEXT_TRACING": "0",                      # 1 keeps BentoML's OpenTelemetry tracing (off: OTEL_SDK_DISABLED)
}


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    models: Path
    provider: str
    workers: int
    threads: int
    max_batch_size: int
    max_latency_ms: int
    max_texts: int
    max_text_chars: int
    max_body_bytes: int
    max_prompt_chars: int
    max_chars: int
    default_chars: int
    max_streams: int
    session_ttl_s: float
    max_sessions: int
    redis_url: str
    api_key: str
    warmup: bool
    read_timeout_s: float
    max_connections: int
    tracing: bool

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        raw = {name: env.get(name, default).strip() for name, default in DEFAULTS.items()}
        models = Path(raw["RNNTEXT_MODELS"])
        provider = raw["RNNTEXT_PROVIDER"].lower()
        if provider not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"RNNTEXT_PROVIDER={provider!r}: expected auto, cuda or cpu")
        workers = _int(raw, "RNNTEXT_WORKERS", 1)
        # each worker runs two models at once (a classifier batch and a generation step), each with its own
        # intra-op pool: more threads than cores in total makes ONNX Runtime's spinning pools fight (measured
        # here: 2 threads per session on 2 busy cores generated 3x slower than 1)
        threads = _int(raw, "RNNTEXT_THREADS", 0) or max(1, (os.cpu_count() or 1) // (2 * workers))
        s = cls(
            models=models if models.is_absolute() else ROOT / models,
            provider=provider,
            workers=workers,
            threads=threads,
            max_batch_size=_int(raw, "RNNTEXT_MAX_BATCH_SIZE", 1),
            max_latency_ms=_int(raw, "RNNTEXT_MAX_LATENCY_MS", 1),
            max_texts=_int(raw, "RNNTEXT_MAX_TEXTS", 1),
            max_text_chars=_int(raw, "RNNTEXT_MAX_TEXT_CHARS", 1),
            max_body_bytes=_int(raw, "RNNTEXT_MAX_BODY_BYTES", 1024),
            max_prompt_chars=_int(raw, "RNNTEXT_MAX_PROMPT_CHARS", 1),
            max_chars=_int(raw, "RNNTEXT_MAX_CHARS", 1),
            default_chars=_int(raw, "RNNTEXT_DEFAULT_CHARS", 1),
            max_streams=_int(raw, "RNNTEXT_MAX_STREAMS", 1),
            session_ttl_s=_float(raw, "RNNTEXT_SESSION_TTL_S"),
            max_sessions=_int(raw, "RNNTEXT_MAX_SESSIONS", 1),
            redis_url=raw["RNNTEXT_REDIS_URL"],
            api_key=raw["RNNTEXT_API_KEY"],
            warmup=_flag(raw["RNNTEXT_WARMUP"]),
            read_timeout_s=_float(raw, "RNNTEXT_READ_TIMEOUT_S"),
            max_connections=_int(raw, "RNNTEXT_MAX_CONNECTIONS", 1),
            tracing=_flag(raw["RNNTEXT_TRACING"]),
        )
        if s.default_chars > s.max_chars:
            raise ConfigError("RNNTEXT_DEFAULT_CHARS must not exceed RNNTEXT_MAX_CHARS")
        if s.workers > 1 and not s.redis_url:
            # an in-process store per worker would 404 every continuation routed to another worker
            raise ConfigError("RNNTEXT_WORKERS > 1 needs RNNTEXT_REDIS_URL: sessions must be shared by all workers")
        return s

    def public(self) -> dict:
        """The settings as /info reports them (no secrets)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("api_key", "redis_url")}
        out["models"] = str(self.models)
        out["session_store"] = "redis" if self.redis_url else "memory"
        out["api_key_required"] = bool(self.api_key)
        return out


def _int(raw: dict[str, str], name: str, minimum: int) -> int:
    try:
        value = int(raw[name])
    except ValueError:
        raise ConfigError(f"{name}={raw[name]!r}: expected an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value}: must be at least {minimum}")
    return value


def _flag(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "off")


def _float(raw: dict[str, str], name: str) -> float:
    try:
        value = float(raw[name])
    except ValueError:
        raise ConfigError(f"{name}={raw[name]!r}: expected a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={value}: must be a positive number")
    return value
