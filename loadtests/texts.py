"""The texts the clients send: a deterministic sample of real BBC articles and Sherlock Holmes prose from
$DATA_DIR (default ../shared/data) when present, otherwise generated text of the same length. No torch."""

from __future__ import annotations

import os
import random
from functools import cache
from pathlib import Path

from loadtests import ROOT
from training.common.files import read_text as _read  # UTF-8, else Latin-1 (no torch imported)

_WORDS = (
    "the government said on monday that the company would report higher profits after strong sales of its "
    "new phones while the film won three awards and the team beat their rivals in the final match of the "
    "season as ministers warned of rising prices and slower growth in the economy next year"
).split()


def data_dir() -> Path:
    env = os.environ.get("DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def synthetic_article(rng: random.Random, n_words: int = 380) -> str:
    """A made-up article (headline line + body) of about the median BBC length (~400 tokens, ~2,000 chars)."""
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    head = " ".join(words[:8]).capitalize()
    body = " ".join(words[8:]).capitalize() + "."
    return f"{head}\n\n{body}\n"


@cache
def articles(limit: int = 500, seed: int = 0) -> tuple[tuple[str, str], ...]:
    """(topic, text) pairs: a deterministic sample of real BBC articles, or generated ones (topic "")."""
    root = data_dir() / "bbc"
    files = sorted(root.glob("*/*.txt")) if root.is_dir() else []
    rng = random.Random(seed)
    if files:
        rng.shuffle(files)
        return tuple((f.parent.name, _read(f)) for f in files[:limit])
    return tuple(("", synthetic_article(rng)) for _ in range(min(limit, 200)))


@cache
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
    return text[start : start + n_chars]
