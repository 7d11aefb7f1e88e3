"""ClassifierRuntime: the exported BBC topic classifier on ONNX Runtime (numpy only, no torch).

    rt = ClassifierRuntime("exported_models/classifier")   # provider="auto", precision="auto"
    rt.classify(["Shares in BT rose ..."])  # [{"label": "business", "probabilities": {...}}]
    rt.provider, rt.precision                # e.g. "cpu", "int8": see runtime.manifest.select_precision

The tokenizer (lowercase + regex) and vocabulary come from the verified manifest, so serving encodes
exactly as training did.
"""

from __future__ import annotations

import os
import re

import numpy as np

from runtime.manifest import load_manifest, model_dir, select_precision
from runtime.providers import make_session, resolve_provider

UNK_ID = 1
# per ONNX call (length_buckets; measured, see predict_logits):
BATCH_SIZE = 8  # most texts: ONNX Runtime's LSTM costs least per token at 4-8 rows, more above
MAX_PADDING = 0.2  # most padded share of the rows x longest-row tokens
MAX_TOKENS = 2048  # most rows x longest row: above it the LSTM's buffers leave the cache and each token costs more


def length_buckets(
    lengths: list[int], batch_size: int, max_padding: float = MAX_PADDING, max_tokens: int = MAX_TOKENS
) -> list[range]:
    """Ascending ``lengths`` -> consecutive index ranges (ONNX calls) of at most ``batch_size`` texts whose padding
    share, (rows * longest - sum) / (rows * longest), is at most ``max_padding`` and whose rows * longest is at most
    ``max_tokens``: greedy from the shortest text, a range grows while the next (longer) text keeps it within both
    bounds. A single text is always a range of its own (no padding)."""
    out, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        rows = i - start + 1
        if rows > 1 and (rows > batch_size or rows * n > max_tokens or rows * n - (total + n) > max_padding * rows * n):
            out.append(range(start, i))
            start, total = i, 0
        total += n
    if lengths:
        out.append(range(start, len(lengths)))
    return out


class ClassifierRuntime:
    def __init__(
        self,
        folder: str | os.PathLike,
        provider: str = "auto",
        intra_threads: int | None = None,
        precision: str = "auto",
    ):
        folder = model_dir(folder, "classifier")
        self.manifest = load_manifest(folder, kind="classifier")  # verifies every file's sha256
        self.provider = resolve_provider(provider)  # "cpu" | "cuda"
        self.precision, self.files = select_precision(self.manifest, self.provider, precision)
        self.labels: list[str] = list(self.manifest["labels"])
        self.max_len: int = int(self.manifest["max_len"])
        tok = self.manifest["tokenizer"]
        self.pattern = re.compile(tok["pattern"])
        self._lowercase = bool(tok.get("lowercase", True))
        self._stoi = {t: i for i, t in enumerate(self.manifest["vocab"])}
        self.session = make_session(folder / self.files["model"], provider=self.provider, intra_threads=intra_threads)

    def tokenize(self, text: str) -> list[str]:
        """Every token of the text, as training tokenized it (before the max_len cut)."""
        return self.pattern.findall(text.lower() if self._lowercase else text)

    def encode(self, text: str) -> list[int]:
        """Token ids of the first max_len tokens (unknown words -> <unk>); never empty."""
        ids = [self._stoi.get(t, UNK_ID) for t in self.tokenize(text)][: self.max_len]
        return ids or [UNK_ID]

    def predict_proba(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Class probabilities (N, C) in input order: the softmax of ``predict_logits``."""
        logits = self.predict_logits(texts, batch_size)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict_logits(
        self,
        texts: list[str],
        batch_size: int = BATCH_SIZE,
        max_padding: float = MAX_PADDING,
        max_tokens: int = MAX_TOKENS,
    ) -> np.ndarray:
        """Logits (N, C) float32 in input order. Texts are sorted by length inside the call and cut into ONNX calls
        (``length_buckets``) of at most ``batch_size`` texts (8) whose padding share, padded tokens / (rows x longest
        row), is at most ``max_padding`` (0.2) and whose rows x longest row is at most ``max_tokens`` (2048).

        The graph runs one bidirectional LSTM op with ``sequence_lens``: each row stops at its own length, but a call
        still steps all its rows to its longest one, hence the padding bound. ONNX Runtime's LSTM kernel costs least
        per token at 4-8 rows and up to ~2k tokens a call (one thread, rows of 100 tokens: int8 1.9 us/token at 4-8
        rows, 2.5 at 32; fp32 3.9 vs 4.5), hence the other two. loadtests/bench/classifier_graph.py, one thread,
        calls of 32 real articles (373 tokens on average), tokenizing included: int8 950-990 articles per CPU second
        at batch_size 4, 8 or 32, fp32 540 (the old graph in plain length-sorted chunks: 810 and 490 at 4, 380 and
        230 at 32); texts of 50 words: int8 7,870 at 8, 7,250 at 4, 6,730 at 32.
        fp32 logits do not depend on the chunking (< 1e-5). int8: dynamic quantization scales a whole call's
        activations at once, so a text's numbers move a little with its chunk-mates (labels do not); batch_size=1
        makes them batch-independent.
        """
        encoded = [self.encode(t) for t in texts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for chunk in length_buckets([len(encoded[i]) for i in order], batch_size, max_padding, max_tokens):
            rows = [order[k] for k in chunk]
            lengths = np.array([len(encoded[i]) for i in rows], dtype=np.int64)  # (B,)
            ids = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)  # (B, T) right-padded with 0
            for row, i in enumerate(rows):
                ids[row, : lengths[row]] = encoded[i]
            out[rows] = self.session.run(["logits"], {"ids": ids, "lengths": lengths})[0]  # (B, C)
        return out

    def classify(self, texts: list[str]) -> list[dict]:
        probs = self.predict_proba(texts)
        return [
            {"label": self.labels[int(p.argmax())], "probabilities": {lab: float(v) for lab, v in zip(self.labels, p)}}
            for p in probs
        ]
