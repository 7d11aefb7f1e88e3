"""Classifier v3 parts: the wide (TF-IDF n-gram) branch, its one-node ONNX form, GloVe initialisation, the widened
vocabulary and the embedding's own learning rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfTransformer

from runtime.providers import make_session
from training.classifier import glove, wide
from training.classifier.model import ClassifierConfig, TextClassifier, packed_forward
from training.classifier.tokenizer import PATTERN, Vocab
from training.classifier.train import TrainConfig, collate, initial_model, train

V, C = 40, 5


def wide_model(features: int = 30, ngrams: int = 2, seqs=None) -> TextClassifier:
    torch.manual_seed(0)
    cfg = ClassifierConfig(V, C, embed_dim=8, hidden_size=6, wide_features=features, wide_ngrams=ngrams)
    seqs = seqs or [[2, 3, 4, 2, 3], [3, 4, 5, 6], [2, 3, 7, 8, 9], [5, 6, 2, 3]]
    m = initial_model(cfg, wide_vocab=wide.feature_vocab(seqs, V, ngrams, features))
    torch.nn.init.normal_(m.wide.weight, std=3.0)  # as if trained: the branch must matter in these checks
    return m.eval()


def test_feature_vocab_keeps_ngrams_of_two_articles_with_sklearn_idf():
    seqs = [[2, 3, 4, 1], [2, 3, 5], [4, 9], [0, 2]]
    keys, idf = wide.feature_vocab(seqs, V, 2, 10)
    # unigrams 2 (df 3), 3 (df 2), 4 (df 2); bigram (2, 3) (df 2) = 3 * 40 + 3; <unk>=1 and <pad>=0 never count
    assert keys.tolist() == [2, 3, 4, 3 * V + 3]
    assert idf == pytest.approx([math.log(5 / 4) + 1, math.log(5 / 3) + 1, math.log(5 / 3) + 1, math.log(5 / 3) + 1])
    assert wide.feature_vocab(seqs, V, 2, 2)[0].tolist() == [2, 3]  # the most frequent first, ties by key
    assert wide.pool_of(keys, V) == ([2, 3, 4], [2, 3])


def test_tfidf_equals_sklearn_sublinear_l2():
    counts = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 5.0]])
    idf = torch.tensor([1.2, 2.0, 1.5])
    sk = TfidfTransformer(sublinear_tf=True, use_idf=True)
    sk.fit(np.ones((1, 3)))
    sk.idf_ = idf.numpy().astype(np.float64)
    assert np.abs(wide.tfidf(counts, idf).numpy() - sk.transform(counts.numpy()).toarray()).max() < 1e-6


def test_counts_see_bigrams_but_not_padding():
    m = wide_model()
    ids, lengths = collate([[2, 3, 2, 3], [2]])
    counts = wide.count_features(ids, m.wide_keys, V, 2)  # (2, F)
    keys = m.wide_keys.tolist()
    assert counts[0, keys.index(2)] == 2 and counts[0, keys.index(3 * V + 3)] == 2
    assert counts[1].sum() == 1  # "2" once; (2, 0) and (0, 0) into the padding are no features
    assert counts.shape == (2, 30)  # 30 slots: the unused ones hold a key no n-gram reaches


def test_wide_branch_changes_logits_and_padding_does_not():
    m = wide_model()
    ids, lengths = collate([[2, 3, 4, 2, 3], [5, 6]])
    logits = m(ids, lengths)
    m.wide.weight.data.zero_()
    assert (logits - m(ids, lengths)).abs().max() > 0.1
    torch.nn.init.normal_(m.wide.weight, std=3.0, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(ids, (0, 7))
    assert (m(ids, lengths) - m(padded, lengths)).abs().max() < 1e-5
    assert (m(ids, lengths) - packed_forward(m, ids, lengths)).abs().max() < 1e-5


@pytest.mark.parametrize("ngrams", [1, 2])
def test_onnx_export_is_one_tfidf_node_and_matches_pytorch(tmp_path, ngrams):
    from training.classifier.export import export

    m = wide_model(ngrams=ngrams)
    export(m, tmp_path, 17)
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ops.count("TfIdfVectorizer") == 1
    sess = make_session(tmp_path / "model.onnx", provider="cpu")
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    g = torch.Generator().manual_seed(3)
    for lengths in ([1], [7, 3, 1], [12, 12], [30, 2, 9, 17]):
        seqs = [torch.randint(2, 10, (n,), generator=g).tolist() for n in lengths]  # dense in the features
        ids, lens = collate(seqs)
        with torch.no_grad():
            ref = m(ids, lens).numpy()
            assert np.abs(ts(ids, lens).numpy() - ref).max() < 1e-5
        got = sess.run(["logits"], {"ids": ids.numpy(), "lengths": lens.numpy()})[0]
        assert np.abs(got - ref).max() < 1e-4


def test_config_rejects_bad_wide_settings():
    with pytest.raises(ValueError, match="wide_ngrams"):
        ClassifierConfig(V, C, wide_features=10, wide_ngrams=3)
    with pytest.raises(ValueError, match="wide_vocab"):
        initial_model(ClassifierConfig(V, C, wide_features=10))


def test_embedding_learns_at_its_own_rate_and_can_be_frozen():
    from training.classifier.train import Encoded

    data = {
        "train": Encoded([[2, 3, 4], [5, 6, 7, 8], [2, 9], [7, 7, 6]], [0, 1, 0, 1]),
        "val": Encoded([[2, 3], [6, 8]], [0, 1]),
    }
    cfg = ClassifierConfig(V, 2, embed_dim=8, hidden_size=6)
    init = torch.randn(V, 8, generator=torch.Generator().manual_seed(0)).numpy()

    def moved(**kw) -> float:
        m, _ = train(cfg, TrainConfig(epochs=2, batch_size=2, **kw), data, progress=False, embeddings=init)
        return float((m.embedding.weight.detach() - torch.as_tensor(init)).abs().max())

    full, slow = moved(), moved(embed_lr_scale=0.1)
    assert full > 0 and 0 < slow < full / 3
    assert moved(embed_lr_scale=0.0) == 0.0
    assert moved(freeze_embed_epochs=2) == 0.0


def test_vocab_keeps_rare_words_the_filter_accepts_and_appends_extra_words():
    texts = ["apple apple pear kiwi", "apple pear zzq"]
    v = Vocab.build(texts, min_freq=2, keep_rare=lambda t: t != "zzq", extra=["plum", "pear", "fig"])
    assert v.itos == ["<pad>", "<unk>", "apple", "pear", "kiwi", "plum", "fig"]


def test_glove_vectors_and_fallbacks():
    index, vectors = glove.load()
    assert vectors.shape == (400_000, 50) and vectors.dtype == np.float32
    assert list(index)[:4] == ["the", ",", ".", "of"]
    the = np.asarray(vectors[index["the"]])
    assert the[:3] == pytest.approx([0.418, 0.24968, -0.41242])
    w, found = glove.lookup(["<pad>", "the", "government's", "don't", "£1.2", "e-mail", "qqzzxq"])
    assert found.tolist() == [False, True, True, True, True, True, False]
    assert w[2] == pytest.approx(np.asarray(vectors[index["government"]]))
    assert w[3] == pytest.approx(np.asarray(vectors[[index["do"], index["n't"]]]).mean(0))
    assert w[4] == pytest.approx(np.asarray(vectors[index["1.2"]]))
    words = glove.frequent_words(6, PATTERN)
    assert words == ["the", "of", "to", "and", "in", "a"]  # punctuation GloVe ranks among them is skipped


def test_glove_embeddings_scale_known_rows_and_zero_the_rest():
    from training.classifier.embeddings import glove_embeddings

    vocab = Vocab(["<pad>", "<unk>", "minister", "football", "qqzzxq"])
    w, found = glove_embeddings(vocab, rest=np.ones((5, 14)))
    assert w.shape == (5, 64) and found.tolist() == [False, False, True, True, False]
    assert np.all(w[[0, 1, 4], :50] == 0) and np.all(w[:, 50:] == 1)
    assert w[2:4, :50].std() == pytest.approx(1.0, rel=1e-5)
