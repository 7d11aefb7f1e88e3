"""The classifier module: shapes, config, padding-independence and the packed-sequence reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.classifier.model import ClassifierConfig, TextClassifier, packed_forward, pool, reverse_within

V, C = 40, 5


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    ids = torch.randint(2, V, (len(lengths), max(lengths)), generator=g)
    ids[torch.arange(max(lengths)).unsqueeze(0) >= lengths_t.unsqueeze(1)] = 0  # right padding
    return ids, lengths_t


def model(**kw) -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(ClassifierConfig(vocab_size=V, num_classes=C, embed_dim=8, hidden_size=6, **kw)).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_equals_packed_sequence_reference(cell, bidirectional, num_layers):
    m = model(cell=cell, bidirectional=bidirectional, num_layers=num_layers, pooling="last+mean+max")
    ids, lengths = batch([9, 4, 1, 6])
    logits = m(ids, lengths)
    assert logits.shape == (4, C)
    assert (logits - packed_forward(m, ids, lengths)).abs().max().item() < 1e-5


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "max+mean", "last+max+mean"])
def test_padding_does_not_change_the_output(pooling):
    m = model(pooling=pooling, num_layers=2)
    ids, lengths = batch([5])
    alone = m(ids, lengths)
    padded = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], 1)  # same article padded to 12
    other, other_len = batch([12], seed=1)
    together = m(torch.cat([padded, other]), torch.cat([lengths, other_len]))
    assert (together[0] - alone[0]).abs().max().item() < 1e-6
    assert m.head.in_features == 12 * len(pooling.split("+"))  # 2 directions x 6 hidden per pooling


def test_pool_masks_padding_exactly():
    out = torch.tensor([[[1.0, -1.0], [3.0, -5.0], [0.0, 0.0]]])  # (1, T=3, D=2); last step is padding
    lengths = torch.tensor([2])
    got = pool(out, lengths, ("last", "mean", "max"), hidden=1, bidirectional=True)
    # last: forward half at t=1 (3.0), backward half at t=0 (-1.0); mean over 2 steps; max ignores the pad
    assert got.tolist() == [[3.0, -1.0, 2.0, -3.0, 3.0, -1.0]]


def test_reverse_within():
    x = torch.arange(5.0).view(1, 5, 1).repeat(2, 1, 1)  # (2, 5, 1)
    got = reverse_within(x, torch.tensor([3, 5])).squeeze(2)
    assert got.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0]]


def test_config_is_frozen_and_validated():
    cfg = ClassifierConfig(vocab_size=V, num_classes=C)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="cell"):
        ClassifierConfig(vocab_size=V, num_classes=C, cell="transformer")
    with pytest.raises(ValueError, match="pooling"):
        ClassifierConfig(vocab_size=V, num_classes=C, pooling="max+sum")
    assert ClassifierConfig.from_dict({**dataclasses.asdict(cfg), "unknown": 1}) == cfg


def test_vanilla_baseline_parameter_count():
    # unidirectional single-layer vanilla RNN: embedding + W_ih, W_hh, b_ih, b_hh + head
    m = model(cell="rnn", bidirectional=False, pooling="last")
    assert sum(p.numel() for p in m.parameters()) == V * 8 + (8 * 6 + 6 * 6 + 6 + 6) + (6 * C + C)


def test_embedding_dropout_drops_whole_channels():
    m = TextClassifier(ClassifierConfig(vocab_size=V, num_classes=C, embed_dim=64, embed_dropout=0.5)).train()
    x = m.embed(batch([10])[0])  # (1, 10, 64)
    zero_channels = (x == 0).all(dim=1)  # (1, 64): a dropped channel is zero at every step
    assert 10 < zero_channels.sum().item() < 54
    assert ((x == 0).sum() == zero_channels.sum() * 10).item()


def test_lsa_embeddings_put_co_occurring_words_together():
    import numpy as np

    from training.classifier.embeddings import lsa_embeddings
    from training.classifier.tokenizer import Vocab

    texts = ["goal match striker goal"] * 5 + ["vote party minister vote"] * 5 + ["goal match party"]
    vocab = Vocab.build(texts, min_freq=1)
    w = lsa_embeddings(texts, vocab, dim=4)
    assert w.shape == (len(vocab), 4) and w.dtype == np.float32
    assert not w[:2].any() and abs(float(w.std()) - 1) < 1e-5  # <pad>, <unk> zero; std like nn.Embedding
    unit = w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-8)
    sim = lambda a, b: float(unit[vocab.stoi[a]] @ unit[vocab.stoi[b]])  # noqa: E731
    assert sim("goal", "striker") > 0.9 and sim("vote", "minister") > 0.9 and sim("striker", "minister") < 0.5


def test_ensemble_outputs_the_log_of_the_mean_probability():
    from training.classifier.model import Ensemble, from_manifest, reference_forward

    cfg = ClassifierConfig(vocab_size=V, num_classes=C, embed_dim=8, hidden_size=6)
    torch.manual_seed(0)
    ens = Ensemble([cfg] * 3).eval()
    ids, lengths = batch([9, 4, 1, 6])
    out = ens(ids, lengths)  # (B, C)
    assert out.shape == (4, C)
    mean = torch.stack([torch.softmax(m(ids, lengths), -1) for m in ens.members]).mean(0)
    assert (torch.softmax(out, -1) - mean).abs().max().item() < 1e-6
    assert (torch.exp(out).sum(-1) - 1).abs().max().item() < 1e-5  # T = 1: already log-probabilities
    assert (reference_forward(ens, ids, lengths) - out).abs().max().item() < 1e-5
    ens.temperature.fill_(2.0)
    assert (ens(ids, lengths) - out / 2).abs().max().item() < 1e-6
    assert len({m.embedding.weight.sum().item() for m in ens.members}) == 3  # members are distinct
    manifest = {"config": dataclasses.asdict(cfg), "ensemble": {"members": 3, "temperature": 0.5}}
    rebuilt = from_manifest(manifest)
    assert isinstance(rebuilt, Ensemble) and len(rebuilt.members) == 3 and rebuilt.temperature.item() == 0.5
    assert sorted(rebuilt.state_dict()) == sorted(ens.state_dict())
    assert isinstance(from_manifest({"config": dataclasses.asdict(cfg)}), TextClassifier)
    with pytest.raises(ValueError, match="sharing vocab_size"):
        Ensemble([cfg, dataclasses.replace(cfg, vocab_size=V + 1)])
