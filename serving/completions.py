"""OpenAI-compatible text completions (``POST /v1/completions``, ``GET /v1/models``) on the same generation code.

The protocol is OpenAI's legacy completions API as vLLM's OpenAI server implements it; one token is one character.
Every choice is one stream of serving/generation.py, so the same slots, client quotas, sessions and step batching
serve both APIs, and greedy or seeded text is the same through ``/generate`` and here. Where this differs from
vLLM (docs/serving.md "OpenAI-compatible API" lists it all):

* ``n`` choices of one prompt are seeded ``seed``, ``seed + 1``, ...: choice 0 is the text ``/generate`` writes
  with ``seed``; prompts times ``n`` is at most RNNTEXT_MAX_CHOICES;
* with ``echo`` and ``logprobs`` the first prompt character has a log-probability too (it is read after the
  model's start-of-text state, a newline), so ``echo: true, max_tokens: 0, logprobs: 1`` scores a text as
  ``POST /score`` does;
* ``top_k``, ``session_id`` and ``keep_session`` are extra fields (``extra_body``); a kept session's id comes in
  the ``X-Rnntext-Session-Id`` header (and ``session_id`` in a non-streamed body);
* a stream ended by ``POST /stop`` finishes with ``finish_reason: "stop"`` (``stop_reason: null``);
* errors are ``{"error": {"message", "type", "param", "code"}}`` with ``code`` this service's error kind.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, create_model

from runtime.logprobs import CharLogprob

from .clients import Client
from .config import Settings
from .errors import ClientError, openai_body
from .generation import ANONYMOUS, Chunk, Done, Generation, Job, Prompt, Ticket
from .schemas import MAX_SEED, STOP_DOC, Int, OptionalInt, Stops


def _only(value: Any, neutral: tuple, what: str) -> Any:
    if value not in neutral:
        raise ValueError(f"{what} is not supported by a character model; leave it out or send {neutral[0]!r}")
    return value


def _neutral(neutral: tuple, what: str):
    return AfterValidator(lambda v: _only(v, neutral, what))


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
            prompt_text | Annotated[list[prompt_text], Field(min_length=1, max_length=s.max_choices)],
            Field(
                examples=["To Sherlock Holmes she is always "],
                description=f"a string, or up to {s.max_choices} strings (one choice each); "
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
        frequency_penalty=(Annotated[float | None, _neutral((0, None), "frequency_penalty")], None),
        presence_penalty=(Annotated[float | None, _neutral((0, None), "presence_penalty")], None),
        logit_bias=(Annotated[dict[str, float] | None, _neutral(({}, None), "logit_bias")], None),
        suffix=(Annotated[str | None, _neutral((None,), "suffix")], None),
        best_of=(OptionalInt, Field(None, ge=1, description="must equal n (no server-side best-of)")),
    )


# ------------------------------------------------------------------ response models (documented in /docs.json)
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


# ------------------------------------------------------------------ requests -> jobs, events -> OpenAI chunks
def jobs(req: dict[str, Any], model_id: str, max_choices: int) -> tuple[list[str], list[Job]]:
    """The prompts and one Job per choice (prompt-major, as OpenAI indexes them); ClientError 4xx if refused."""
    if req.get("model") not in (None, model_id):
        raise ClientError(
            404, "model_not_found", f"the model {req['model']!r} does not exist (this server has {model_id!r})"
        )
    prompts = [req["prompt"]] if isinstance(req["prompt"], str) else list(req["prompt"])
    n = req.get("n", 1)
    if len(prompts) * n > max_choices:
        raise ClientError(400, "invalid_request", f"prompts times n is {len(prompts) * n}; at most {max_choices}")
    if req.get("best_of") not in (None, n):
        raise ClientError(400, "invalid_request", "best_of must equal n (no server-side best-of)")
    if (req.get("session_id") is not None or req.get("keep_session")) and len(prompts) * n > 1:
        raise ClientError(400, "invalid_request", "session_id and keep_session need one prompt and n = 1")
    stop = req.get("stop")
    stop = tuple([stop] if isinstance(stop, str) else stop or ())
    seed, top_k = req.get("seed"), req.get("top_k")
    out = []
    for prompt in prompts:
        for j in range(n):
            out.append(
                Job(
                    prompt=prompt,
                    max_chars=16 if req.get("max_tokens") is None else req["max_tokens"],
                    temperature=1.0 if req.get("temperature") is None else req["temperature"],
                    top_k=None if top_k in (None, -1, 0) else top_k,
                    top_p=1.0 if req.get("top_p") is None else req["top_p"],
                    seed=None if seed is None else (seed + j) % (MAX_SEED + 1),
                    session_id=req.get("session_id"),
                    keep_session=bool(req.get("keep_session")),
                    stop=stop,
                    top=req.get("logprobs"),
                    score_prompt=bool(req.get("echo")) and req.get("logprobs") is not None,
                )
            )
    return prompts, out


class Choice:
    """One choice's text and log-probabilities as they are built (offsets run over the echoed prompt too)."""

    def __init__(self, index: int, vocab: list[str]):
        self.index, self.vocab, self.offset = index, vocab, 0

    def logprobs(self, chars: str, records: list[CharLogprob] | None) -> dict[str, Any] | None:
        if records is None:
            self.offset += len(chars)
            return None
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for ch, r in zip(chars, records):
            out["tokens"].append(ch)
            out["token_logprobs"].append(r.logprob)
            out["top_logprobs"].append({**{self.vocab[i]: lp for i, lp in r.top}, self.vocab[r.id]: r.logprob})
            out["text_offset"].append(self.offset)
            self.offset += 1
        return out


def merge_logprobs(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return {k: [x for p in parts for x in p[k]] for k in parts[0]}


class Completer:
    """Runs one /v1/completions request's tickets, as one body or as a stream of chunks."""

    def __init__(self, gen: Generation, req: dict[str, Any], model_id: str, prompts: list[str], tickets: list[Ticket]):
        self.gen, self.req, self.prompts, self.tickets = gen, req, prompts, tickets
        self.head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_id,
        }
        self.echo = bool(req.get("echo"))
        n = req.get("n", 1)
        self.choice_prompt = [prompts[i // n] for i in range(len(tickets))]

    async def release(self) -> None:
        for t in self.tickets:
            await self.gen.release(t)

    def usage(self, dones: list[Done]) -> dict[str, int]:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(d.chars for d in dones)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def events(self) -> AsyncIterator[tuple[int, Any]]:
        """Every ticket's events as (choice index, event), as they come; all tickets released at the end."""
        if len(self.tickets) == 1:
            try:
                async with aclosing(self.gen.run(self.tickets[0])) as events:
                    async for e in events:
                        yield 0, e
            finally:
                await self.gen.release(self.tickets[0])
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, t: Ticket) -> None:
            try:
                async for e in self.gen.run(t):
                    await queue.put((i, e))
            except Exception as exc:  # handed to the consumer, which raises it
                await queue.put((i, exc))

        tasks = [asyncio.create_task(pump(i, t)) for i, t in enumerate(self.tickets)]
        try:
            left = len(tasks)
            while left:
                i, e = await queue.get()
                if isinstance(e, BaseException):
                    raise e
                if isinstance(e, Done):
                    left -= 1
                yield i, e
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in self.tickets:
                await self.gen.release(t)

    def _choice_start(self, i: int, choice: Choice, prompt_records: list[CharLogprob] | None) -> tuple[str, Any]:
        """The echoed prompt of choice ``i``: its text and log-probabilities (when asked)."""
        if not self.echo:
            return "", None
        prompt = self.choice_prompt[i]
        want = self.req.get("logprobs") is not None
        return prompt, choice.logprobs(prompt, prompt_records if want else None)

    async def body(self) -> dict[str, Any]:
        """The non-streamed response; a ClientError when a choice failed."""
        vocab = self.gen.runtime.vocab
        choices = [Choice(i, vocab) for i in range(len(self.tickets))]
        texts: list[list[str]] = [[] for _ in self.tickets]
        lps: list[list[Any]] = [[] for _ in self.tickets]
        dones: list[Done | None] = [None] * len(self.tickets)
        echoed = [False] * len(self.tickets)
        async for i, e in self.events():
            if isinstance(e, Prompt):
                text, lp = self._choice_start(i, choices[i], e.logprobs)
                texts[i].append(text), lps[i].append(lp)
                echoed[i] = True
                continue
            if not echoed[i]:
                text, lp = self._choice_start(i, choices[i], None)
                texts[i].append(text), lps[i].append(lp)
                echoed[i] = True
            if isinstance(e, Chunk):
                texts[i].append(e.text)
                lps[i].append(choices[i].logprobs(e.text, e.logprobs))
            elif isinstance(e, Done):
                if e.error is not None:
                    raise e.error
                dones[i] = e
        body = {
            **self.head,
            "choices": [
                {
                    "index": i,
                    "text": "".join(texts[i]),
                    "logprobs": merge_logprobs(lps[i]) if self.req.get("logprobs") is not None else None,
                    "finish_reason": "length" if d.reason == "length" else "stop",
                    "stop_reason": d.stop,
                }
                for i, d in enumerate(dones)
            ],
            "usage": self.usage(dones),
        }
        if self.tickets[0].kept:
            body["session_id"] = self.tickets[0].kept
        return body

    async def stream(self) -> AsyncIterator[bytes]:
        """``data: <chunk>`` server-sent events, the usage chunk when asked, then ``data: [DONE]``."""
        vocab = self.gen.runtime.vocab
        include_usage = bool((self.req.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        choices = [Choice(i, vocab) for i in range(len(self.tickets))]
        echoed = [False] * len(self.tickets)
        dones: list[Done] = []

        def chunk(i: int, text: str, lp: Any, finish: str | None = None, stop: str | None = None) -> bytes:
            doc = {
                **self.head,
                "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish, "stop_reason": stop}],
                **extra,
            }
            return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"

        async for i, e in self.events():
            if not echoed[i]:
                echoed[i] = True
                if self.echo:
                    text, lp = self._choice_start(i, choices[i], e.logprobs if isinstance(e, Prompt) else None)
                    yield chunk(i, text, lp)
            if isinstance(e, Chunk):
                yield chunk(i, e.text, choices[i].logprobs(e.text, e.logprobs))
            elif isinstance(e, Done):
                if e.error is not None:
                    err = openai_body(e.error.status, e.error.kind, e.error.message)
                    yield b"data: " + json.dumps(err).encode() + b"\n\n"
                    yield b"data: [DONE]\n\n"
                    return
                dones.append(e)
                yield chunk(i, "", None, "length" if e.reason == "length" else "stop", e.stop)
        if include_usage:
            doc = {**self.head, "choices": [], "usage": self.usage(dones)}
            yield b"data: " + json.dumps(doc).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


async def begin(
    gen: Generation, req: dict[str, Any], model_id: str, max_choices: int, client: Client = ANONYMOUS
) -> Completer:
    """Every choice's stream begun (or none: a ClientError, before any byte is sent)."""
    prompts, todo = jobs(req, model_id, max_choices)
    tickets: list[Ticket] = []
    try:
        for job in todo:
            tickets.append(await gen.begin(job, client))
    except BaseException:
        for t in tickets:
            await gen.release(t)
        raise
    return Completer(gen, req, model_id, prompts, tickets)
