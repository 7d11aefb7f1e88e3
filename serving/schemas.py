"""The API's request and response models (pydantic): BentoML validates every request body against them and
publishes them, with their limits and examples, in the OpenAPI schema (``/docs.json``, Swagger UI at ``/``).

The limits come from the settings, so the models are built per ``Settings`` by ``Schemas(settings)``.
Fields are strict (``true`` is not an integer, ``"5"`` is not a number) and unknown fields are refused, so a
typo such as ``"maxchars"`` is a 400 instead of being silently ignored. A failed check is answered
``{"error", "kind", "detail"}`` with status 400 (serving/errors.py turns pydantic's report into that body).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model

from .config import Settings

MAX_SEED = 2**63 - 1
STRICT = ConfigDict(extra="forbid", strict=True)
ARTICLE = (
    "Shares in BT rose after profits beat forecasts, helped by strong broadband sales and lower costs, "
    "the company said on Thursday."
)


def _whole(value: Any) -> Any:
    """1307.0 is the integer 1307 in JSON (and JSON Schema's "integer" type); strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# an integer field: JSON numbers without a fraction (7, 7.0, 7e0) are accepted, "7", true and 7.5 are not
Int = Annotated[int, BeforeValidator(_whole)]
# the validator outside the union: inside it, pydantic 2.14 writes a Field's ge/le into the JSON schema as "ge"/"le"
# (not minimum/maximum), which no client or fuzzer understands (tests/serving/test_openapi.py looks for them)
OptionalInt = Annotated[int | None, BeforeValidator(_whole)]


class Prediction(BaseModel):
    label: str = Field(description="the most likely topic", examples=["business"])
    probabilities: dict[str, float] = Field(
        description="every topic's probability; they sum to 1",
        examples=[{"business": 0.85, "entertainment": 0.04, "politics": 0.02, "sport": 0.05, "tech": 0.03}],
    )


SessionId = Annotated[str, Field(max_length=256, examples=["Wm1pX0l8n2rXq6yZJ0cF3c2Yb2sVh1QeAbCdEfGh"])]


class EndSessionRequest(BaseModel):
    model_config = STRICT
    session_id: SessionId = Field(description="a session_id from a /generate done event")


class EndSessionResponse(BaseModel):
    ended: str = Field(description="the session that was ended")


class Info(BaseModel):
    """What this worker serves: readiness, providers and precision, model metadata, sessions, settings."""

    ready: bool
    draining: bool = Field(False, description="shutting down (SIGTERM): /readyz is 503 and new streams are refused")
    replica: str = Field(description="this server's name (RNNTEXT_REPLICA, else the host name), as X-Rnntext-Replica")
    server_pid: int = Field(description="the `bentoml serve` main process (signal it to stop or drain the server)")
    batcher_warm: bool
    worker: int | None = Field(description="the BentoML worker (1-based) that answered")
    pid: int = Field(description="the worker's process id")
    workers: int
    device: str = Field(description="the CPU model, or the GPU's name on CUDA")
    providers: dict[str, list[str]]
    precision: dict[str, str] = Field(examples=[{"classifier": "int8", "generator": "int8"}])
    models: dict[str, Any]
    sessions: dict[str, Any]
    streams: dict[str, Any]
    client: dict[str, Any] | None = Field(
        None, description="you, as this server knows you: name, how you were identified, your limits and kept sessions"
    )
    clients: dict[str, Any] = Field(default_factory=dict, description="how clients are identified (no keys shown)")
    settings: dict[str, Any]


MAX_STOPS, MAX_STOP_CHARS = 4, 64
StopText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
# a stop sequence or up to MAX_STOPS of them, as in OpenAI's API
Stops = StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None
STOP_DOC = (
    f"stop sequences (a string, or up to {MAX_STOPS} of 1 to {MAX_STOP_CHARS} characters): generation ends at the "
    "first one, which is not returned (the session has read it)"
)


class StopRequest(BaseModel):
    model_config = STRICT
    session_id: SessionId = Field(
        description="the kept session whose running stream to end (its X-Rnntext-Session-Id header)"
    )


class StopResponse(BaseModel):
    session_id: str = Field(description="the session whose stream is ending")
    stopping: bool = Field(
        True,
        description="always true: the stream ends at its next character; its done event says after how many "
        'characters (`"finish_reason": "stopped"`), and the session continues exactly from there',
    )


class CharScore(BaseModel):
    char: str = Field(description="the character of the text", examples=["e"])
    logprob: float = Field(description="its natural-log probability", examples=[-0.21])
    top: dict[str, float] | None = Field(
        None, description="the top_logprobs most likely characters here, with theirs", examples=[{"e": -0.21}]
    )


class ScoreResponse(BaseModel):
    chars: int = Field(description="characters scored", examples=[32])
    bits_per_char: float = Field(description="mean -log2 p(char | all before it)", examples=[1.43])
    logprob: float = Field(description="the text's total natural-log probability", examples=[-31.7])
    unknown: int = Field(description="characters outside the model's vocabulary (scored as its unknown character)")
    logprobs: list[CharScore] | None = Field(None, description="per character, when logprobs was true")


class Schemas:
    """The request models whose limits are settings."""

    def __init__(self, s: Settings):
        from .openai_schemas import completion_request  # it builds on this module's types

        self.CompletionRequest = completion_request(s)
        text = Annotated[str, StringConstraints(min_length=1, max_length=s.max_text_chars, pattern=r"\S")]
        self.ClassifyRequest = create_model(
            "ClassifyRequest",
            __config__=STRICT,
            __doc__="Texts to classify, one result per text, in order.",
            texts=(
                list[text],
                Field(
                    min_length=1,
                    max_length=s.max_texts,
                    examples=[[ARTICLE]],
                    description=f"1 to {s.max_texts} texts, each 1 to {s.max_text_chars} "
                    "characters and not only whitespace",
                ),
            ),
        )
        self.GenerateRequest = create_model(
            "GenerateRequest",
            __config__=STRICT,
            __doc__="One streamed generation (server-sent events).",
            prompt=(
                str,
                Field(
                    "",
                    max_length=s.max_prompt_chars,
                    examples=["To Sherlock Holmes she is always "],
                    description="read before generating; empty = continue the session as it stopped",
                ),
            ),
            max_chars=(
                Int,
                Field(s.default_chars, ge=1, le=s.max_chars, examples=[200], description="characters to generate"),
            ),
            temperature=(
                float,
                Field(1.0, ge=0, allow_inf_nan=False, examples=[0.8], description="0 = greedy (argmax)"),
            ),
            top_k=(
                OptionalInt,
                Field(
                    None,
                    ge=1,
                    le=1_000_000,
                    examples=[20],
                    description="keep the k most likely characters; null = no cut",
                ),
            ),
            top_p=(float, Field(1.0, gt=0, le=1, allow_inf_nan=False, examples=[0.95], description="nucleus sampling")),
            seed=(
                OptionalInt,
                Field(
                    None,
                    ge=0,
                    le=MAX_SEED,
                    examples=[7],
                    description="seeds the sampler; null = random for a new session",
                ),
            ),
            session_id=(str | None, Field(None, max_length=256, description="continue this kept session")),
            keep_session=(bool, Field(False, description="keep the state; the done event then has session_id")),
            stop=(Stops, Field(None, examples=[["\n\n"]], description=STOP_DOC)),
        )
        self.ScoreRequest = create_model(
            "ScoreRequest",
            __config__=STRICT,
            __doc__="A text to score: its bits per character and, on request, every character's log-probability.",
            text=(
                str,
                Field(
                    min_length=1,
                    max_length=s.max_score_chars,
                    examples=["I have no doubt that"],
                    description=f"1 to {s.max_score_chars} characters, each scored given all before it",
                ),
            ),
            context=(
                str,
                Field(
                    "",
                    max_length=s.max_prompt_chars,
                    examples=[""],
                    description="read first, not scored (as a /generate prompt): the text is scored after it",
                ),
            ),
            session_id=(
                str | None,
                Field(
                    None, max_length=256, description="score as a continuation of this kept session (left unchanged)"
                ),
            ),
            logprobs=(bool, Field(False, description="return every character's log-probability")),
            top_logprobs=(
                Int,
                Field(0, ge=0, le=5, description="with logprobs: also the most likely characters at each position"),
            ),
        )
