"""Service settings from ``RNNTEXT_*`` environment variables, validated by pydantic (every one optional).

Each field's alias is its variable and its default is the default a user gets; docs/serving.md lists the same
names. ``Settings.from_env()`` is called when the service module declares the service, never at import of this
module. A value the service cannot use stops it with one line naming the variable (``ConfigError``).
"""

from __future__ import annotations

import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.hardware import cuda_available, gpu_count, usable_cores

ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


def default_workers(provider: str = "auto") -> int:
    """One worker per GPU on CUDA, else one per usable core: every worker holds its own copy of both models
    (tens of MB) and runs them on one core, so this keeps every core busy without oversubscribing any."""
    if provider != "cpu" and cuda_available():
        return gpu_count()
    return usable_cores()


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    models: Path = Field(
        Path("exported_models"),
        alias="RNNTEXT_MODELS",
        description="exported-models root; relative paths are from the project root",
    )
    provider: Literal["auto", "cuda", "cpu"] = Field("auto", alias="RNNTEXT_PROVIDER")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        alias="RNNTEXT_PRECISION",
        description="auto = int8 on CPU where its measured quality holds, fp32 on CUDA",
    )
    workers: int = Field(0, ge=0, alias="RNNTEXT_WORKERS", description="0 = one per usable core (CPU) / per GPU")
    threads: int = Field(
        0,
        ge=0,
        alias="RNNTEXT_THREADS",
        description="ONNX Runtime intra-op threads per session; 0 = cores / (2 x workers), at least 1",
    )
    batching: bool = Field(
        True, alias="RNNTEXT_BATCHING", description="adaptive batching of /classify; 0 = one model call per request"
    )
    max_batch_size: int = Field(32, ge=2, alias="RNNTEXT_MAX_BATCH_SIZE")  # BentoML rejects 1
    max_latency_ms: int = Field(5000, ge=1, alias="RNNTEXT_MAX_LATENCY_MS")
    max_texts: int = Field(64, ge=1, alias="RNNTEXT_MAX_TEXTS")
    max_text_chars: int = Field(20000, ge=1, alias="RNNTEXT_MAX_TEXT_CHARS")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, alias="RNNTEXT_MAX_BODY_BYTES")
    max_prompt_chars: int = Field(4000, ge=1, alias="RNNTEXT_MAX_PROMPT_CHARS")
    max_chars: int = Field(2000, ge=1, alias="RNNTEXT_MAX_CHARS")
    default_chars: int = Field(200, ge=1, alias="RNNTEXT_DEFAULT_CHARS")
    max_streams: int = Field(64, ge=1, alias="RNNTEXT_MAX_STREAMS")
    max_score_chars: int = Field(
        8000, ge=1, alias="RNNTEXT_MAX_SCORE_CHARS", description="the longest text POST /score reads (one step a char)"
    )
    max_choices: int = Field(
        4,
        ge=1,
        le=64,
        alias="RNNTEXT_MAX_CHOICES",
        description="/v1/completions: the largest n and the most prompts (each choice a stream)",
    )
    session_ttl_s: float = Field(900.0, gt=0, allow_inf_nan=False, alias="RNNTEXT_SESSION_TTL_S")
    max_sessions: int = Field(10000, ge=1, alias="RNNTEXT_MAX_SESSIONS")
    session_lease_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        alias="RNNTEXT_SESSION_LEASE_S",
        description="a stream's hold on its session; a killed worker's lapses after this",
    )
    session_db: str = Field(
        "",
        alias="RNNTEXT_SESSION_DB",
        description="SQLite file shared by the workers; empty = a new one per server start",
    )
    redis_url: str = Field("", alias="RNNTEXT_REDIS_URL", description="e.g. redis://host:6379/0; replaces SQLite")
    api_key: str | None = Field(
        None, alias="RNNTEXT_API_KEY", description="one key, the client 'default'; set but blank is an error"
    )
    api_keys: str = Field("", alias="RNNTEXT_API_KEYS", description="name:key[:option=value,...], comma-separated")
    api_keys_file: str = Field("", alias="RNNTEXT_API_KEYS_FILE", description="one name:key[:options] per line")
    trusted_proxies: str = Field(
        "", alias="RNNTEXT_TRUSTED_PROXIES", description="CIDRs whose X-Forwarded-For names the client (without keys)"
    )
    client_rate: float = Field(
        100.0,
        ge=0,
        allow_inf_nan=False,
        alias="RNNTEXT_CLIENT_RATE",
        description="API requests per second per client (token bucket); 0 = unlimited",
    )
    client_burst: int = Field(200, ge=1, alias="RNNTEXT_CLIENT_BURST")
    client_max_streams: int = Field(
        0, ge=0, alias="RNNTEXT_CLIENT_MAX_STREAMS", description="0 = a quarter of RNNTEXT_MAX_STREAMS"
    )
    client_max_sessions: int = Field(
        0, ge=0, alias="RNNTEXT_CLIENT_MAX_SESSIONS", description="0 = a tenth of RNNTEXT_MAX_SESSIONS"
    )
    client_max_connections: int = Field(
        0,
        ge=0,
        alias="RNNTEXT_CLIENT_MAX_CONNECTIONS",
        description="per address and worker; 0 = a quarter of RNNTEXT_MAX_CONNECTIONS",
    )
    redis_prefix: str = Field(
        "rnntext:",
        min_length=1,
        max_length=64,
        pattern=r"^[\x21-\x7e]+$",
        alias="RNNTEXT_REDIS_PREFIX",
        description="key prefix, so that deployments can share one Redis database",
    )
    warmup: bool = Field(True, alias="RNNTEXT_WARMUP")
    drain_s: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        alias="RNNTEXT_DRAIN_S",
        description="on SIGTERM, how long running streams may finish before they are stopped (their sessions saved)",
    )
    replica: str = Field(
        "",
        max_length=64,
        pattern=r"^[\x21-\x7e]*$",
        alias="RNNTEXT_REPLICA",
        description="this server's name in X-Rnntext-Replica and /info; empty = the host name (a pod's name)",
    )
    read_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False, alias="RNNTEXT_READ_TIMEOUT_S")
    max_connections: int = Field(1000, ge=1, alias="RNNTEXT_MAX_CONNECTIONS")
    tracing: bool = Field(False, alias="RNNTEXT_TRACING")
    access_log: bool = Field(
        False,
        alias="RNNTEXT_ACCESS_LOG",
        description="BentoML's log line per request (costs ~3% of /classify throughput here)",
    )
    patches_off: tuple[str, ...] = Field(
        (),
        alias="RNNTEXT_PATCHES_OFF",
        description="patches of dependencies to leave out, comma-separated (serving/patches; docs/serving.md)",
    )

    @field_validator("patches_off", mode="before")
    @classmethod
    def _patch_names(cls, value: object) -> tuple[str, ...]:
        from .patches import NAMES  # the names only: serving.patches imports neither BentoML nor uvicorn

        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
        names = [n for n in names if n]
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise ValueError(f"unknown patch {unknown[0]!r} (the patches: {', '.join(NAMES)})")
        return tuple(dict.fromkeys(names))

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        if self.default_chars > self.max_chars:
            raise ValueError("RNNTEXT_DEFAULT_CHARS must not exceed RNNTEXT_MAX_CHARS")
        if not self.models.is_absolute():
            self.models = ROOT / self.models
        if self.workers == 0:
            self.workers = default_workers(self.provider)
        if not self.replica:
            self.replica = socket.gethostname()[:64] or "rnntext"
        # per-client shares of the global caps (docs/serving.md "Clients, quotas and limits")
        self.client_max_streams = self.client_max_streams or max(1, self.max_streams // 4)
        self.client_max_sessions = self.client_max_sessions or max(1, self.max_sessions // 10)
        self.client_max_connections = self.client_max_connections or max(1, self.max_connections // 4)
        if self.threads == 0:
            # each worker runs two models at once (a classifier batch and a generation step), each with its own
            # intra-op pool: more threads than cores in total makes ONNX Runtime's spinning pools fight
            self.threads = max(1, usable_cores() // (2 * self.workers))
        return self

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        names = {f.alias for f in cls.model_fields.values()}
        raw = {k: v.strip() for k, v in env.items() if k in names}
        try:
            settings = cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = err["loc"][0] if err["loc"] else ""
            value = f"={raw[name]!r}" if name in raw and "KEY" not in name else ""
            raise ConfigError(f"{name}{value}: {err['msg']}".lstrip(": ")) from None
        _ = settings.directory  # a key list it cannot use stops the service here, with its one line
        return settings

    def limits(self):
        from .clients import Limits

        return Limits(
            rate=self.client_rate,
            burst=self.client_burst,
            streams=self.client_max_streams,
            sessions=self.client_max_sessions,
        )

    @cached_property
    def directory(self):
        """The clients (serving/clients.py): named keys, or addresses behind the trusted proxies. Built once
        per Settings, so the gate, the connection guard and the endpoints share one (and its address cache)."""
        from .clients import Directory, KeysError, load_keys, parse_proxies

        try:
            return Directory(
                load_keys(self.api_key, self.api_keys, self.api_keys_file),
                self.limits(),
                parse_proxies(self.trusted_proxies),
            )
        except KeysError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def session_store(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    def public(self) -> dict:
        """The settings as /info reports them (no secrets)."""
        out = self.model_dump(mode="json", exclude={"api_key", "api_keys", "api_keys_file", "redis_url"})
        out["session_store"] = self.session_store
        out["api_key_required"] = self.directory.keyed
        return out
