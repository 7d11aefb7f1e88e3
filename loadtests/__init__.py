"""Load tests (locust) and benchmarks for the serving stack.

    python -m loadtests.run     # = make loadtest: start the server, run locust headless, check the SLOs
    python -m loadtests.bench   # = make bench: ORT vs TorchScript vs eager, batching, generation, sessions

Shared here: the texts that the clients send (real BBC articles and Sherlock Holmes prose from $DATA_DIR when
present, otherwise generated text of the same length) and a small SSE parser. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import random
from functools import lru_cache
from pathlib import Path

from training.common import read_text as _read  # UTF-8, else Latin-1 (no torch imported)

ROOT = Path(__file__).resolve().parents[1]

_WORDS = ("the government said on monday that the company would report higher profits after strong sales of its "
          "new phones while the film won three awards and the team beat their rivals in the final match of the "
          "season as ministers warned of rising prices and slower growth in the economy next year").split()


def data_dir() -> Path:
    env = os.environ.get("DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def synthetic_article(rng: random.Random, n_words: int = 380) -> str:
    """A made-up article (headline line + body) of about the median BBC length (~400 tokens, ~2,000 chars)."""
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    head = " ".join(words[:8]).capitalize()
    body = " ".join(words[8:]).capitalize() + "."
    return f"{head}\n\n{body}\n"


@lru_cache(maxsize=None)
def articles(limit: int = 500, seed: int = 0) -> tuple[tuple[str, str], ...]:
    """(topic, text) pairs: a deterministic sample of real BBC articles, or generated ones (topic "")."""
    root = data_dir() / "bbc"
    files = sorted(root.glob("*/*.txt")) if root.is_dir() else []
    rng = random.Random(seed)
    if files:
        rng.shuffle(files)
        return tuple((f.parent.name, _read(f)) for f in files[:limit])
    return tuple(("", synthetic_article(rng)) for _ in range(min(limit, 200)))


@lru_cache(maxsize=None)
def prose() -> str:
    """Sherlock Holmes text for prompts and session histories (generated words when the corpus is absent)."""
    path = data_dir() / "sherlock" / "canon.txt"
    if path.is_file():
        return _read(path)
    rng = random.Random(1)
    return " ".join(rng.choice(_WORDS) for _ in range(200_000))


def prose_slice(rng: random.Random, n_chars: int) -> str:
    text = prose()
    start = rng.randrange(0, max(1, len(text) - n_chars))
    return text[start:start + n_chars]


def sse_events(lines):
    """Parse ``data: <JSON>`` server-sent events from an iterator of text lines; yields the decoded dicts."""
    buf: list[str] = []
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        line = line.rstrip("\r\n")
        if line.startswith("data:"):
            buf.append(line[5:].lstrip())
        elif not line and buf:
            yield json.loads("\n".join(buf))
            buf = []
    if buf:
        yield json.loads("\n".join(buf))
