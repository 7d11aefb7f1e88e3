"""The training loop on a tiny synthetic task: learning, seeding, callbacks, early stopping, resume."""

from __future__ import annotations

import random

import pytest
import torch

from training.classifier.model import ClassifierConfig
from training.classifier.train import (
    CROP_MIN,
    Encoded,
    TrainConfig,
    collate,
    crop_views,
    evaluate,
    length_batches,
    train,
)

MODEL = ClassifierConfig(
    vocab_size=20, num_classes=2, embed_dim=8, hidden_size=8, word_dropout=0.0, embed_dropout=0.0, dropout=0.0
)
FAST = TrainConfig(epochs=6, batch_size=8, lr=1e-2, patience=10)


def synthetic(n: int, seed: int) -> Encoded:
    """Class k articles contain the marker token 2 + k somewhere among noise tokens 4..19."""
    rng = random.Random(seed)
    ids, labels = [], []
    for i in range(n):
        seq = [rng.randrange(4, 20) for _ in range(rng.randrange(3, 13))]
        seq[rng.randrange(len(seq))] = 2 + i % 2
        ids.append(seq)
        labels.append(i % 2)
    return Encoded(ids, labels)


DATA = {"train": synthetic(64, 0), "val": synthetic(32, 1)}


def test_collate_pads_right_with_zero():
    ids, lengths = collate([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]


def test_crop_views_are_windows_of_the_articles():
    seqs = [list(range(n)) for n in (5, CROP_MIN, CROP_MIN + 1, 200, 750)]
    rng = random.Random(0)
    state = rng.getstate()
    assert crop_views(seqs, 0.0, rng) is seqs and rng.getstate() == state  # off: nothing drawn, runs unchanged
    lengths = {n: set() for n in (200, 750)}
    for _ in range(200):
        views = crop_views(seqs, 1.0, rng)
        assert views[:2] == seqs[:2]  # articles of CROP_MIN tokens or fewer are never cut
        for s, v in zip(seqs[2:], views[2:]):
            assert CROP_MIN <= len(v) <= len(s) and v == s[v[0] : v[0] + len(v)]  # one contiguous window
            lengths.setdefault(len(s), set()).add(len(v))
    assert len(lengths[750]) > 100 and min(lengths[750]) < 100 and max(lengths[750]) > 650
    half = [sum(v != s for s, v in zip(seqs[3:], crop_views(seqs, 0.5, rng)[3:])) for _ in range(400)]
    assert 0.4 < sum(half) / (2 * 400) < 0.6  # about the share asked for


def test_length_batches_cover_everything_once_and_group_lengths():
    lengths = [random.Random(1).randrange(1, 500) for _ in range(300)]
    batches = length_batches(lengths, 16, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len(b) <= 16 for b in batches)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 150  # random batches would spread over ~450 tokens
    assert length_batches(lengths, 16, None)[0] == sorted(range(300), key=lambda i: lengths[i])[:16]


def test_learns_the_task_and_calls_the_epoch_hook():
    seen = []
    model, history = train(MODEL, FAST, DATA, on_epoch_end=lambda e, m: seen.append((e, m["val_loss"])), progress=False)
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert max(h["val_acc"] for h in history) == 1.0
    assert set(history[0]) >= {"train_loss", "train_acc", "val_loss", "val_nll", "val_acc", "lr", "seconds"}


def test_seeded_runs_are_identical():
    _, a = train(MODEL, TrainConfig(epochs=2, batch_size=8, seed=3), DATA, progress=False)
    _, b = train(MODEL, TrainConfig(epochs=2, batch_size=8, seed=3), DATA, progress=False)
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]


def test_hook_exception_stops_training():
    class Stop(Exception):
        pass

    def stop_at_2(epoch, metrics):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(MODEL, FAST, DATA, on_epoch_end=stop_at_2, progress=False)


def test_early_stopping_restores_the_best_weights():
    # a huge learning rate makes the val loss jump about; training must stop and return the best epoch
    cfg = TrainConfig(epochs=30, batch_size=8, lr=0.5, patience=2, lr_patience=100, clip=100.0)
    model, history = train(MODEL, cfg, DATA, progress=False)
    best = min(history, key=lambda h: h["val_loss"])
    assert len(history) == best["epoch"] + 2 < 30
    restored = evaluate(model, DATA["val"], smoothing=cfg.label_smoothing)["loss"]
    assert restored == pytest.approx(best["val_loss"], abs=1e-5)


def test_lr_halves_on_plateau():
    cfg = TrainConfig(epochs=12, batch_size=8, lr=0.5, patience=100, lr_patience=0, clip=100.0)
    _, history = train(MODEL, cfg, DATA, progress=False)
    lrs = [h["lr"] for h in history]
    assert all(b in (a, a / 2) for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.5


def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=8, lr=1e-2)
    _, full = train(MODEL, cfg, DATA, progress=False)
    train(MODEL, TrainConfig(epochs=2, batch_size=8, lr=1e-2), DATA, run_dir=tmp_path, progress=False)
    assert (tmp_path / "last.pt").is_file()
    model, resumed = train(MODEL, cfg, DATA, run_dir=tmp_path, progress=False)
    assert len(resumed) == 4
    for a, b in zip(full, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    assert isinstance(model.head.weight, torch.nn.Parameter)


def test_bf16_autocast_learns_and_keeps_float32_weights():
    bf16 = TrainConfig(**{**FAST.__dict__, "bf16": True})
    model, history = train(MODEL, bf16, DATA, progress=False)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert max(h["val_acc"] for h in history) == 1.0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    fp32_model, _ = train(MODEL, FAST, DATA, progress=False)
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), fp32_model.parameters()))
    assert diff > 0  # the flag really changes the arithmetic


def test_ema_weights_are_validated_and_returned(tmp_path):
    ema_cfg = TrainConfig(**{**FAST.__dict__, "ema": 0.9})
    model, history = train(MODEL, ema_cfg, DATA, progress=False)
    assert max(h["val_acc"] for h in history) >= 0.9 and history[-1]["val_loss"] < 0.8 * history[0]["val_loss"]
    plain, _ = train(MODEL, FAST, DATA, progress=False)
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), plain.parameters()))
    assert diff > 1e-4  # the averaged weights, not the last ones
    best = min(history, key=lambda h: h["val_loss"])
    assert evaluate(model, DATA["val"])["acc"] == best["val_acc"]  # the returned weights are the scored ones
    # resume keeps the average: an interrupted EMA run continues to the same weights
    short = TrainConfig(**{**ema_cfg.__dict__, "epochs": 3})
    train(MODEL, short, DATA, run_dir=tmp_path, progress=False)
    resumed, _ = train(MODEL, ema_cfg, DATA, run_dir=tmp_path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), model.parameters()))
