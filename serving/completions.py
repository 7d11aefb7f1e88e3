"""OpenAI-compatible text completions (``POST /v1/completions``) on the same generation code (the request and
response models: serving/openai_schemas.py).

The protocol is OpenAI's legacy completions API as vLLM's OpenAI server implements it; one token is one character.
Every choice is one stream of serving/generation.py, so the same slots, client quotas, sessions and step batching
serve both APIs, and greedy or seeded text is the same through ``/generate`` and here. Where this differs from
vLLM (docs/serving.md "OpenAI-compatible API" lists it all):

* ``n`` choices of one prompt are seeded ``seed``, ``seed + 1``, ...: choice 0 is the text ``/generate`` writes
  with ``seed`` (on fp32; int8 numbers depend on the streams that share a step, and the choices always do);
  ``n`` and the number of prompts are each at most RNNTEXT_MAX_CHOICES, and every choice is a stream (the
  client's stream quota counts them);
* with ``session_id`` every choice starts from the session; choice 0 alone keeps it (``keep_session``) or ends it;
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
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from runtime.logprobs import CharLogprob

from .clients import Client
from .errors import ClientError, openai_body
from .generation import Generation, sse
from .jobs import ANONYMOUS, Chunk, Done, Job, Prompt, Ticket, stops
from .schemas import MAX_SEED

DONE = b"data: [DONE]\n\n"


def jobs(req: dict[str, Any], model_id: str) -> tuple[list[str], list[Job]]:
    """The prompts and one Job per choice (prompt-major, as OpenAI indexes them); ClientError 4xx if refused."""
    if req.get("model") not in (None, model_id):
        raise ClientError(
            404, "model_not_found", f"the model {req['model']!r} does not exist (this server has {model_id!r})"
        )
    prompts = [req["prompt"]] if isinstance(req["prompt"], str) else list(req["prompt"])
    n = req.get("n", 1)
    stop = stops(req.get("stop"))
    seed, top_k, sid = req.get("seed"), req.get("top_k"), req.get("session_id")
    out = []
    for prompt in prompts:
        for j in range(n):
            first = not out  # with a session, every choice starts from it; only choice 0 keeps (or ends) it
            out.append(
                Job(
                    prompt=prompt,
                    max_chars=16 if req.get("max_tokens") is None else req["max_tokens"],
                    temperature=1.0 if req.get("temperature") is None else req["temperature"],
                    top_k=None if top_k in (None, -1, 0) else top_k,
                    top_p=1.0 if req.get("top_p") is None else req["top_p"],
                    seed=None if seed is None else (seed + j) % (MAX_SEED + 1),
                    session_id=sid,
                    keep_session=bool(req.get("keep_session")) and first,
                    stop=stop,
                    top=req.get("logprobs"),
                    score_prompt=bool(req.get("echo")) and req.get("logprobs") is not None,
                    readonly=sid is not None and not first,
                )
            )
    return prompts, out


class Choice:
    """One choice's text and log-probabilities as they are built (offsets run over the echoed prompt too)."""

    def __init__(self, vocab: list[str]):
        self.vocab, self.offset = vocab, 0

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
            await self.release()

    async def pieces(self) -> AsyncIterator[tuple[int, str, dict[str, Any] | None, Done | None]]:
        """(choice, text, its OpenAI logprobs or None, None) as each choice's text comes, the echoed prompt first;
        then (choice, "", None, Done) when it ends."""
        choices = [Choice(self.gen.runtime.vocab) for _ in self.tickets]
        echoed = [not self.echo] * len(self.tickets)
        async with aclosing(self.events()) as events:  # closed with this one: the client has gone
            async for i, e in events:
                if not echoed[i]:  # a Prompt comes first when the prompt's log-probabilities were asked for
                    echoed[i] = True
                    prompt = self.choice_prompt[i]
                    yield i, prompt, choices[i].logprobs(prompt, e.logprobs if isinstance(e, Prompt) else None), None
                if isinstance(e, Chunk):
                    yield i, e.text, choices[i].logprobs(e.text, e.logprobs), None
                elif isinstance(e, Done):
                    yield i, "", None, e

    async def body(self) -> dict[str, Any]:
        """The non-streamed response; a ClientError when a choice failed."""
        texts: list[list[str]] = [[] for _ in self.tickets]
        lps: list[list[Any]] = [[] for _ in self.tickets]
        dones: list[Done | None] = [None] * len(self.tickets)
        async with aclosing(self.pieces()) as pieces:
            async for i, text, lp, done in pieces:
                if done is None:
                    texts[i].append(text)
                    lps[i].append(lp)
                elif done.error is not None:
                    raise done.error
                else:
                    dones[i] = done
        body = {
            **self.head,
            "choices": [
                {
                    "index": i,
                    "text": "".join(texts[i]),
                    "logprobs": merge_logprobs(lps[i]) if self.req.get("logprobs") is not None else None,
                    "finish_reason": finish_reason(d),
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
        include_usage = bool((self.req.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        dones: list[Done] = []

        def chunk(i: int, text: str, lp: Any, finish: str | None = None, stop: str | None = None) -> bytes:
            choice = {"index": i, "text": text, "logprobs": lp, "finish_reason": finish, "stop_reason": stop}
            return sse({**self.head, "choices": [choice], **extra})

        async with aclosing(self.pieces()) as pieces:
            async for i, text, lp, done in pieces:
                if done is None:
                    yield chunk(i, text, lp)
                elif done.error is not None:
                    yield sse(openai_body(done.error.status, done.error.kind, done.error.message))
                    yield DONE
                    return
                else:
                    dones.append(done)
                    yield chunk(i, "", None, finish_reason(done), done.stop)
        if include_usage:
            yield sse({**self.head, "choices": [], "usage": self.usage(dones)})
        yield DONE


def finish_reason(done: Done) -> str:
    """OpenAI's two reasons: a stop sequence and POST /stop are both "stop"."""
    return "length" if done.reason == "length" else "stop"


async def begin(gen: Generation, req: dict[str, Any], model_id: str, client: Client = ANONYMOUS) -> Completer:
    """Every choice's stream begun (or none: a ClientError, before any byte is sent)."""
    prompts, todo = jobs(req, model_id)
    tickets: dict[int, Ticket] = {}
    try:
        # choice 0 last: it holds a continued session's lock while it streams, and the others read the session first
        for i in [*range(1, len(todo)), 0]:
            tickets[i] = await gen.begin(todo[i], client)
    except BaseException:
        for t in tickets.values():
            await gen.release(t)
        raise
    return Completer(gen, req, model_id, prompts, [tickets[i] for i in range(len(todo))])
