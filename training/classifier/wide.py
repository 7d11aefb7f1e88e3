"""The wide branch of a wide-and-deep classifier: a linear layer over TF-IDF features of word n-grams, the
TF-IDF + linear SVM baseline's view of an article, trained jointly with the BiLSTM (logits are the sum).

Features are the token ids' unigrams and bigrams seen in at least ``min_df`` training articles, the
``wide_features`` most frequent by document frequency. An n-gram is an int64 key: a unigram is its id ``a``, a
bigram ``(a + 1) * V + b``, so every bigram key is >= V and above every unigram key. The model holds the sorted keys
and their idf as buffers (the checkpoint and TorchScript carry them); feature j is the j-th key.

    ids (B, T) -> counts (B, F) of each feature -> (1 + log count) * idf, zero where absent -> L2-normalised rows

(sublinear tf and L2 rows, like the baseline's TfidfVectorizer). Padding (id 0) is never a feature, and a bigram
that runs into padding is ``(a, 0)``, never seen in text, so no mask is needed. In ONNX the counting is one
standard ``TfIdfVectorizer`` node (mode TF, 1..2-grams, its pool in feature order); the rest is ordinary ops.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

UNUSED_KEY = 2**62  # fills a model's spare feature slots: above every real key (< V * (V + 1)), never matched


def ngram_keys(ids: torch.Tensor, vocab_size: int, n: int) -> torch.Tensor:
    """ids (B, T) -> keys (B, T) of the unigrams, followed by (B, T - 1) of the bigrams when n >= 2."""
    keys = [ids]
    if n >= 2 and ids.size(1) > 1:
        keys.append((ids[:, :-1] + 1) * vocab_size + ids[:, 1:])
    return torch.cat(keys, dim=1)


def feature_vocab(
    seqs: list[list[int]], vocab_size: int, n: int, size: int, min_df: int = 2, skip: tuple[int, ...] = (0, 1)
) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` n-grams of the most training articles (df >= min_df; ties by key) -> (sorted keys (F,) int64,
    idf (F,) float32 = ln((1 + N) / (1 + df)) + 1, sklearn's smooth idf). Unigrams of ``skip`` (<pad>, <unk>)
    and bigrams containing them are left out."""
    df: Counter = Counter()
    bad = set(skip)
    for s in seqs:
        grams = {a for a in s if a not in bad}
        if n >= 2:
            grams |= {(a + 1) * vocab_size + b for a, b in zip(s, s[1:]) if a not in bad and b not in bad}
        df.update(grams)
    kept = sorted((k for k, c in df.items() if c >= min_df), key=lambda k: (-df[k], k))[:size]
    keys = np.array(sorted(kept), dtype=np.int64)
    idf = np.log((1 + len(seqs)) / (1 + np.array([df[k] for k in keys], dtype=np.float64))) + 1
    return keys, idf.astype(np.float32)


def count_features(ids: torch.Tensor, keys: torch.Tensor, vocab_size: int, n: int) -> torch.Tensor:
    """ids (B, T) -> (B, F) float counts of each feature key in each row."""
    k = ngram_keys(ids, vocab_size, n)  # (B, K)
    F_ = keys.numel()
    pos = torch.searchsorted(keys, k).clamp(max=F_ - 1)
    col = torch.where(keys[pos] == k, pos, torch.full_like(pos, F_))  # not a feature -> the spare column F
    counts = torch.zeros(ids.size(0), F_ + 1, dtype=torch.float32, device=ids.device)
    return counts.scatter_add_(1, col, torch.ones_like(col, dtype=torch.float32))[:, :F_]


class NgramCounts(torch.autograd.Function):
    """count_features in PyTorch (and TorchScript); one TfIdfVectorizer node in ONNX. ``pool`` = (unigram ids,
    bigram pairs) of the sorted keys, plain lists: the node's attributes. Its output has a column per pooled
    n-gram only, without the spare slots of unused keys (the caller pads them back)."""

    @staticmethod
    def forward(ctx, ids, keys, vocab_size: int, n: int, pool):
        return count_features(ids, keys, vocab_size, n)[:, : len(pool[0]) + len(pool[1]) // 2]  # the node's width

    @staticmethod
    def symbolic(g, ids, keys, vocab_size: int, n: int, pool):
        unigrams, bigrams = pool
        return g.op(
            "TfIdfVectorizer",
            ids,
            mode_s="TF",
            min_gram_length_i=1,
            max_gram_length_i=max(1, n),
            max_skip_count_i=0,
            ngram_counts_i=[0, len(unigrams)] if n >= 2 else [0],
            ngram_indexes_i=list(range(len(unigrams) + len(bigrams) // 2)),
            pool_int64s_i=unigrams + bigrams,
        )


def pool_of(keys: np.ndarray, vocab_size: int) -> tuple[list[int], list[int]]:
    """Sorted keys -> (unigram ids, flat bigram pairs a1, b1, a2, b2, ...) in feature order."""
    keys = np.asarray(keys, dtype=np.int64)
    uni = keys[keys < vocab_size]
    bi = keys[keys >= vocab_size]
    pairs = np.stack([bi // vocab_size - 1, bi % vocab_size], axis=1).reshape(-1)
    return uni.tolist(), pairs.tolist()


def tfidf(counts: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
    """(B, F) counts -> sublinear tf x idf, L2-normalised rows (a row with no feature stays zero)."""
    tf = torch.where(counts > 0, 1 + torch.log(counts.clamp_min(1.0)), torch.zeros_like(counts))
    x = tf * idf
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
