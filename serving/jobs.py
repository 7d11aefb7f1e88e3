"""What the generation code works on: a ``Job`` (one generation or scoring, whichever API asked for it), the
``Ticket`` of a begun one, and the events its stream yields (``Chunk``, ``Prompt``, ``Done``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.logprobs import CharLogprob

from .clients import Client
from .errors import ClientError
from .stepper import Stream

ANONYMOUS = Client("local", False, None)  # unit tests and callers without clients: no quotas


def stops(value: str | list[str] | None) -> tuple[str, ...]:
    """The ``stop`` field of either API (a string, a list or null) as a tuple of stop sequences."""
    return (value,) if isinstance(value, str) else tuple(value or ())


@dataclass
class Job:
    """One generation or scoring as this module runs it, whichever API asked for it."""

    prompt: str = ""
    max_chars: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    session_id: str | None = None
    keep_session: bool = False
    stop: tuple[str, ...] = ()  # stop sequences: generation ends at the first; it is not returned
    top: int | None = None  # record each generated character's log-probability, with this many alternatives
    score_prompt: bool = False  # read the prompt through the step batcher, recording its log-probabilities
    context: str = ""  # read (prefill) before the prompt and not scored (POST /score)
    readonly: bool = False  # the session is read, never saved nor deleted (POST /score)

    @classmethod
    def of(cls, request: dict[str, Any]) -> Job:
        """The job of a /generate request (its validated fields)."""
        return cls(**{**request, "stop": stops(request.get("stop"))})

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


@dataclass
class Chunk:
    text: str
    logprobs: list[CharLogprob] | None = None  # one per character of text (Job.top)


@dataclass
class Prompt:
    """The prompt's log-probabilities (Job.score_prompt), before any Chunk."""

    logprobs: list[CharLogprob]


@dataclass
class Done:
    chars: int  # characters generated, a stop sequence that ended them included
    reason: str  # "length", "stop", "stopped" (POST /stop) or "error"
    session_id: str | None = None  # the kept session
    stop: str | None = None  # the stop sequence (reason "stop")
    error: ClientError | None = None  # reason "error"; kind "internal" for a defect


@dataclass
class Ticket:
    job: Job
    stream: Stream
    token: str | None  # the lock token of ``locked``
    client: Client = ANONYMOUS
    slot: str | None = None  # the client's stream-quota slot
    released: bool = False
    kept: str | None = None  # with keep_session: the id the session is saved under (known before the stream)
    locked: str | None = None  # the session this stream holds the lock of (continued, or kept new)
    # a new kept session saved at begin (so that /stop knows its owner): dropped unless the stream finished
    placeholder: bool = False
    finished: bool = False
