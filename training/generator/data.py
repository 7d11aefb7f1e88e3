"""Characters for the generator: a vocabulary with an unknown symbol, a contiguous split, parallel streams.

The text is kept exactly as it is (indentation, blank lines, punctuation): the model must learn the layout
too. Characters rarer than ``min_count`` in the training text map to ``<unk>`` so that the unknown symbol
is seen (and learnt) during training; at inference any character outside the vocabulary maps to it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

UNK = "\ufffd"  # the Unicode replacement character stands for <unk>: one character, so decode stays a join


@dataclass(frozen=True)
class CharVocab:
    chars: tuple[str, ...]  # index = id; chars[unk_id] == UNK
    unk_id: int

    @classmethod
    def build(cls, text: str, min_count: int = 2) -> CharVocab:
        counts = Counter(text)
        kept = sorted(ch for ch, n in counts.items() if n >= min_count and ch != UNK)
        return cls(chars=(UNK, *kept), unk_id=0)

    @classmethod
    def from_json(cls, doc: dict) -> CharVocab:
        return cls(chars=tuple(doc["vocab"]), unk_id=int(doc["unk_id"]))

    def to_json(self) -> dict:
        return {"vocab": list(self.chars), "unk_id": self.unk_id}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """(N,) int64; characters not in the vocabulary become unk_id."""
        index = {ch: i for i, ch in enumerate(self.chars)}
        return np.fromiter((index.get(ch, self.unk_id) for ch in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def split_text(text: str, val_frac: float = 0.05) -> tuple[str, str]:
    """Contiguous split: the last ``val_frac`` of the text is validation (no shuffling across the cut)."""
    if not 0 < val_frac < 1:
        raise ValueError(f"val_frac must be in (0, 1), got {val_frac}")
    cut = int(len(text) * (1 - val_frac))
    return text[:cut], text[cut:]


def fingerprint(text: str) -> str:
    """sha256 of the UTF-8 text: ties a model to the exact corpus it was trained on."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def streams(ids: np.ndarray, batch: int, offset: int = 0) -> np.ndarray:
    """Lay the text out as ``batch`` parallel contiguous streams: (N,) -> (B, N // B).

    Row b is the b-th consecutive slice of the text, so state carried from one chunk to the next in
    the same row continues the same passage (truncated BPTT). ``offset`` drops that many leading characters
    (varying it per epoch moves the chunk boundaries).
    """
    ids = ids[offset:]
    n = len(ids) // batch
    if n < 2:
        raise ValueError(f"text of {len(ids)} characters is too short for {batch} streams")
    return ids[: n * batch].reshape(batch, n)


def chunks(data: np.ndarray, bptt: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x, y) pairs of shape (B, <=bptt) walking along the streams; y is x shifted by one character."""
    n = data.shape[1] - 1  # the last column has no target
    for i in range(0, n, bptt):
        t = min(bptt, n - i)
        yield data[:, i : i + t], data[:, i + 1 : i + 1 + t]
