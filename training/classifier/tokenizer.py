"""Word tokenizer and vocabulary. The regex below is copied into the export manifest, so serving
tokenizes exactly as training did: ``re.findall(PATTERN, text.lower())``.

Rules, in order of the alternatives:
  * numbers keep a leading currency sign, inner ``.``/``,`` and a trailing ``%``: ``£1.5``, ``2,000``, ``3%``;
  * words are runs of letters (any script) with inner apostrophes or hyphens: ``don't``, ``e-mail``;
  * a lone currency sign or ``%`` is its own token;
  * all other punctuation (``. , " ( ) : ; ! ? -``) is dropped: it carries little topic information
    and would make articles about 15% longer for the LSTM.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

PATTERN = r"[£$€]?\d+(?:[.,]\d+)*%?|[^\W\d_]+(?:['’-][^\W\d_]+)*|[£$€%]"
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_RE = re.compile(PATTERN)


def tokenize(text: str, pattern: str | re.Pattern = _RE) -> list[str]:
    return re.findall(pattern, text.lower())


class Vocab:
    """Token <-> id; id 0 is <pad>, id 1 is <unk>."""

    def __init__(self, tokens: list[str]):
        if tokens[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_freq: int = 2,
        max_size: int | None = None,
        keep_rare: Callable[[str], bool] | None = None,
        extra: Iterable[str] = (),
    ) -> Vocab:
        """Most frequent tokens first (ties alphabetical, so the result is deterministic). ``keep_rare(token)``
        also keeps a token seen fewer than ``min_freq`` times (e.g. one pretrained vectors know); ``extra``
        tokens not seen at all follow, in their given order (``max_size`` counts only the seen ones)."""
        counts = Counter(tok for text in texts for tok in tokenize(text))
        kept = sorted(
            (t for t, c in counts.items() if c >= min_freq or (keep_rare is not None and keep_rare(t))),
            key=lambda t: (-counts[t], t),
        )
        if max_size is not None:
            kept = kept[: max(0, max_size - 2)]
        seen = set(kept) | {PAD, UNK}
        return cls([PAD, UNK, *kept, *(t for t in dict.fromkeys(extra) if t not in seen)])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Ids of the first ``max_len`` tokens (the title comes first, so it is never cut); at least one id."""
        ids = [self.stoi.get(t, UNK_ID) for t in tokenize(text)][:max_len]
        return ids or [UNK_ID]

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(
            json.dumps({"pattern": PATTERN, "lowercase": True, "itos": self.itos}, ensure_ascii=False)
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        return cls(json.loads(Path(path).read_text())["itos"])


def length_quantile(texts: list[str], q: float = 0.95) -> int:
    """Token count that ``q`` of the texts fit in (used to check max_len covers >= 95% of articles)."""
    lengths = sorted(len(tokenize(t)) for t in texts)
    return lengths[min(len(lengths) - 1, int(q * len(lengths)))]
