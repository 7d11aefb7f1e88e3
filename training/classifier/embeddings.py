"""Word vectors to initialise the classifier's embedding: LSA vectors from the training split, and GloVe.

A truncated SVD of the (term x document) TF-IDF matrix gives each vocabulary word a vector from the
documents it occurs in: topic information the BiLSTM would otherwise have to learn from 1,600 articles.
Only training articles are used, so nothing leaks from validation or test.
"""

from __future__ import annotations

import numpy as np

from training.classifier.tokenizer import PAD_ID, UNK_ID, Vocab, tokenize


def lsa_embeddings(train_texts: list[str], vocab: Vocab, dim: int, seed: int = 0) -> np.ndarray:
    """(len(vocab), dim) float32 with std 1 like nn.Embedding's default init; <pad> and <unk> rows are zero."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(
        vocabulary=vocab.stoi, tokenizer=tokenize, lowercase=False, token_pattern=None, sublinear_tf=True
    )
    x = tfidf.fit_transform(train_texts)  # (docs, V)
    k = min(dim, x.shape[0] - 1, len(vocab) - 1)
    w = np.zeros((len(vocab), dim), dtype=np.float32)
    w[:, :k] = TruncatedSVD(k, random_state=seed).fit_transform(x.T)  # (V, k): word vectors
    w[[PAD_ID, UNK_ID]] = 0.0
    return w / max(float(w.std()), 1e-8)


def glove_embeddings(vocab: Vocab, rest=None) -> tuple[np.ndarray, np.ndarray]:
    """GloVe's vectors scaled to std 1 (over the words it knows) in the first 50 columns, ``rest`` (V, E - 50) after
    them; <pad>, <unk> and words GloVe lacks are zero there. -> (weights (V, E) float32, found (V,) bool)."""
    from training.classifier import glove

    w, found = glove.lookup(vocab.itos)  # (V, 50)
    found[[PAD_ID, UNK_ID]] = False
    w[~found] = 0.0
    w /= max(float(w[found].std()), 1e-8) if found.any() else 1.0
    if rest is not None:
        w = np.concatenate([w, np.asarray(rest, dtype=np.float32)], axis=1)
    return w.astype(np.float32), found
