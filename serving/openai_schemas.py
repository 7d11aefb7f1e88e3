"""OpenAI's completion request and response models (``/v1/completions``, ``/v1/models``) with this server's limits;
serving/completions.py runs the requests. They are what /docs.json documents for the OpenAI-compatible routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model

from .config import Settings
from .schemas import MAX_SEED, STOP_DOC, Int, OptionalInt, Stops


def _text_prompt(value: Any) -> Any:
    """Token ids are OpenAI's other prompt form; here a token is a character, so only text is taken."""
    if isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
        raise ValueError("a string or a list of strings (token ids are not taken: a token here is a character)")
    return value


NOT_HERE = "not supported by a character model: "  # OpenAI's fields that only their neutral value may have


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = Field(None, description="send a last chunk with the usage (and no choices)")
    continuous_usage_stats: bool | None = Field(None, description="accepted and ignored")


def completion_request(s: Settings) -> type[BaseModel]:
    """OpenAI's completion request with this server's limits. Unknown fields are ignored, as vLLM does."""
    prompt_text = Annotated[str, StringConstraints(max_length=s.max_prompt_chars)]
    return create_model(
        "CompletionRequest",
        __config__=ConfigDict(extra="ignore", strict=True),
        __doc__="OpenAI's completions request (one token = one character).",
        model=(str | None, Field(None, max_length=256, description="the id from /v1/models; null = that model")),
        prompt=(
            Annotated[
                prompt_text | Annotated[list[prompt_text], Field(min_length=1, max_length=s.max_choices)],
                BeforeValidator(_text_prompt),
            ],
            Field(
                examples=["To Sherlock Holmes she is always "],
                description=f"a string, or up to {s.max_choices} strings (n choices each); "
                "token-id prompts are refused (the tokens here are characters)",
            ),
        ),
        max_tokens=(
            OptionalInt,
            Field(16, ge=0, le=s.max_chars, examples=[200], description="characters to generate (OpenAI's default 16)"),
        ),
        temperature=(float | None, Field(1.0, ge=0, le=2, allow_inf_nan=False, description="0 = greedy")),
        top_p=(float | None, Field(1.0, gt=0, le=1, allow_inf_nan=False)),
        n=(Int, Field(1, ge=1, le=s.max_choices, description="choices per prompt, seeded seed, seed + 1, ...")),
        stream=(bool, Field(False, description="server-sent text_completion chunks, then `data: [DONE]`")),
        stream_options=(StreamOptions | None, None),
        logprobs=(
            OptionalInt,
            Field(None, ge=0, le=5, description="log-probabilities of each character and of this many alternatives"),
        ),
        echo=(bool, Field(False, description="return the prompt before the completion")),
        stop=(Stops, Field(None, examples=[["\n\n"]], description=STOP_DOC)),
        seed=(OptionalInt, Field(None, ge=0, le=MAX_SEED)),
        user=(str | None, Field(None, max_length=256, description="accepted and ignored")),
        top_k=(OptionalInt, Field(None, ge=-1, le=1_000_000, description="extra field; -1, 0 or null = no cut")),
        session_id=(str | None, Field(None, max_length=256, description="extra field: continue this kept session")),
        keep_session=(bool, Field(False, description="extra field: keep the state (X-Rnntext-Session-Id header)")),
        frequency_penalty=(float | None, Field(None, ge=0, le=0, description=NOT_HERE + "0 or null only")),
        presence_penalty=(float | None, Field(None, ge=0, le=0, description=NOT_HERE + "0 or null only")),
        logit_bias=(dict[str, float] | None, Field(None, max_length=0, description=NOT_HERE + "{} or null only")),
        suffix=(None, Field(None, description=NOT_HERE + "null only")),
        best_of=(OptionalInt, Field(None, ge=1, le=1, description="no server-side best-of: 1 or null only")),
    )


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(description="one character each")
    token_logprobs: list[float] = Field(description="natural-log probability of each (the model's, before sampling)")
    top_logprobs: list[dict[str, float]] = Field(description="the `logprobs` most likely characters, and the chosen")
    text_offset: list[int] = Field(description="each character's offset in the choice's text")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["length", "stop"] | None = Field(description="null until a streamed choice ends")
    stop_reason: str | None = Field(None, description="the stop sequence that ended it")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="prompt characters (each prompt once, whatever n)")
    completion_tokens: int = Field(description="characters generated, stop sequences included")
    total_tokens: int


class Completion(BaseModel):
    """The response, and each streamed chunk (``choices`` with text deltas; ``usage`` only in the last one)."""

    id: str = Field(examples=["cmpl-2f0c6c1f6fbb4f7e9a3c4d2b1a0e9f8d"])
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str = Field(examples=["sherlock-char-lstm"])
    choices: list[CompletionChoice]
    usage: Usage | None = None
    session_id: str | None = Field(None, description="the kept session (keep_session; not streamed: see the header)")


class ModelCard(BaseModel):
    id: str = Field(examples=["sherlock-char-lstm"])
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rnntext"
    root: str
    max_model_len: int = Field(description="the longest prompt plus completion, in characters")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(None, examples=["temperature"])
    code: str = Field(description="this service's error kind", examples=["invalid_request"])


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


def models(model_id: str, created: int, settings: Settings) -> dict[str, Any]:
    card = ModelCard(
        id=model_id, created=created, root=model_id, max_model_len=settings.max_prompt_chars + settings.max_chars
    )
    return ModelList(data=[card]).model_dump()
