"""Language-model pretraining of the classifier (pretrain.py): what it predicts, that it learns, that it hands its
weights (not its heads) to the classifier, that a run folder caches it, and the flag end to end."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tests.training.test_cli_classifier import SMOKE
from training.__main__ import main
from training.classifier.model import ClassifierConfig, TextClassifier
from training.classifier.pretrain import lm_heads, lm_loss, pretrain_lm
from training.classifier.train import Encoded, TrainConfig, collate, train

VOCAB = 40
MODEL = ClassifierConfig(
    vocab_size=VOCAB, num_classes=2, embed_dim=16, hidden_size=16, word_dropout=0.0, embed_dropout=0.0, dropout=0.0
)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matrices: a second thread only adds synchronisation (100x slower when the other core is busy)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cycles(n: int, seed: int) -> list[list[int]]:
    """Each text counts up 2, 3, ..., VOCAB-1, 2, ... from a random start: every next and previous token follows
    from the current one, so a language model can get far below the uniform log(VOCAB - 2)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, length = rng.randrange(VOCAB - 2), rng.randrange(8, 30)
        out.append([2 + (start + t) % (VOCAB - 2) for t in range(length)])
    return out


def test_loss_counts_each_direction_on_the_tokens_it_has_not_read():
    torch.manual_seed(0)
    model, heads = TextClassifier(MODEL), lm_heads(MODEL)
    ids, lengths = collate([[5, 6, 7, 8], [9, 10]])
    base = lm_loss(model, heads, ids, lengths)
    assert base.shape == () and math.isfinite(base.item())
    # padding is never a target: what lies beyond a length does not change the loss
    padded = ids.clone()
    padded[1, 2:] = 33
    assert lm_loss(model, heads, padded, lengths).item() == pytest.approx(base.item(), abs=1e-6)
    # a one-token text has nothing to predict; the loss is that of the other text alone
    one = lm_loss(model, heads, *collate([[5, 6, 7, 8]]))
    assert lm_loss(model, heads, *collate([[5, 6, 7, 8], [9]])).item() == pytest.approx(one.item(), abs=1e-6)


def test_pretraining_learns_and_returns_the_weights_without_the_head(tmp_path):
    seqs = cycles(256, 0)
    state, history = pretrain_lm(MODEL, seqs, epochs=8, lr=3e-2, seed=0, progress=False)
    losses = [h["lm_loss"] for h in history]  # measured: 4.37, 2.0, 0.6, ... 0.04 nats per token
    assert len(losses) == 8 and losses[-1] < 0.25 * math.log(VOCAB - 2) < losses[0]
    assert set(state) == {k for k in TextClassifier(MODEL).state_dict() if not k.startswith("head.")}
    # the classifier starts from these weights: before its first step, its embedding and LSTMs are they
    model, _ = train(
        MODEL,
        TrainConfig(epochs=0),
        {"train": Encoded(seqs, [0] * 256), "val": Encoded(seqs, [0] * 256)},
        progress=False,
        init_state=state,
    )
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(ValueError, match="does not fit"):
        train(
            MODEL,
            TrainConfig(epochs=0),
            {"train": Encoded(seqs, [0] * 256), "val": Encoded(seqs, [0] * 256)},
            progress=False,
            init_state={"nope": torch.zeros(1)},
        )


def test_a_cached_pretraining_is_read_back_not_run_again(tmp_path):
    seqs = cycles(32, 1)
    cache = tmp_path / "pretrained.pt"
    state, history = pretrain_lm(MODEL, seqs, epochs=1, lr=1e-2, seed=3, progress=False, cache=cache)
    assert cache.is_file()
    again, history2 = pretrain_lm(MODEL, [[2, 3]], epochs=50, lr=1e-2, seed=9, progress=False, cache=cache)
    assert history2 == history and all(torch.equal(again[k], state[k]) for k in state)


@pytest.mark.slow
def test_train_classifier_with_pretraining_on_real_articles(bbc_dir, tmp_path):
    assert (
        main(
            [
                "train-classifier",
                "--data-dir",
                str(bbc_dir),
                "--out",
                str(tmp_path),
                *SMOKE,
                "--epochs",
                "2",
                "--pretrain-epochs",
                "2",
            ]
        )
        == 0
    )
    (run,) = tmp_path.iterdir()
    saved = torch.load(run / "pretrained.pt", weights_only=True)
    (h1, h2) = saved["history"]
    assert h2["lm_loss"] < min(h1["lm_loss"], math.log(len(saved["state"]["embedding.weight"])))  # below uniform
    assert (run / "model.pt").is_file()
