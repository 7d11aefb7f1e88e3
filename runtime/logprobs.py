"""Log-probabilities of characters, and stop sequences: the pieces of scoring and of OpenAI-style generation that
need no model (numpy only).

Log-probabilities are natural logs of the model's own distribution (softmax of the logits), before temperature,
top-k or top-p: what vLLM returns by default (``logprobs_mode="raw_logprobs"``) and what scoring a text needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LN2 = math.log(2)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., V) logits -> (..., V) natural-log probabilities, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@dataclass(frozen=True)
class CharLogprob:
    """One position: the character id read or written there, its log-probability, and the ``top`` most likely
    ids with theirs (most likely first; empty when no alternatives were asked for)."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def char_logprob(logits: np.ndarray, chosen: int, top: int = 0) -> CharLogprob:
    """The log-probability of ``chosen`` under ``logits`` (V,), with the ``top`` most likely alternatives."""
    lp = log_softmax(logits)
    best = ()
    if top > 0:
        order = np.argsort(-lp, kind="stable")[:top]  # ties: the lower id first, as in sampling
        best = tuple((int(i), float(lp[i])) for i in order)
    return CharLogprob(int(chosen), float(lp[chosen]), best)


def bits_per_char(logprobs: list[CharLogprob]) -> float:
    """Mean -log2 p over the positions (0.0 for none)."""
    if not logprobs:
        return 0.0
    return -sum(x.logprob for x in logprobs) / len(logprobs) / LN2


@dataclass
class StopText:
    """Text released to a client while generation may still end at a stop sequence (which is not returned).

    ``push`` gives back what is certainly not part of a stop sequence and holds back the longest end of the text
    that could still become one (``"\\n"`` while ``"\\n\\n"`` is a stop sequence); ``finish`` gives back the rest,
    without the stop sequence that ended the generation when one did. So a client never sees any part of a stop
    sequence, however the text was split into chunks (vLLM does the same).
    """

    stops: tuple[str, ...] = ()
    held: str = ""
    released: int = field(default=0)  # characters given back so far

    def push(self, text: str) -> str:
        text = self.held + text
        keep = self._open_end(text)
        self.held = text[len(text) - keep :] if keep else ""
        out = text[: len(text) - keep]
        self.released += len(out)
        return out

    def finish(self, hit: str | None = None) -> str:
        """The held text; without its end ``hit`` (the stop sequence that ended the generation)."""
        out = self.held
        if hit and out.endswith(hit):
            out = out[: len(out) - len(hit)]
        self.held = ""
        self.released += len(out)
        return out

    def _open_end(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins a stop sequence (or is one: generation ends there,
        and ``finish`` then drops it)."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop), len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


def first_stop(text: str, stops: tuple[str, ...]) -> str | None:
    """The stop sequence that ``text`` ends with, if any (the first listed when several do)."""
    return next((s for s in stops if text.endswith(s)), None)
