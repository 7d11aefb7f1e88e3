"""The char model's shapes and state handling, and a smoke training run on the real canon."""
from __future__ import annotations

import pytest
import torch

from training.common.files import read_text
from training.generator.data import CharVocab, split_text
from training.generator.model import CELLS, CharConfig, CharRNN, load_checkpoint
from training.generator.train import TrainConfig, lr_at, train


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_and_state_carry(cell):
    torch.manual_seed(0)
    model = CharRNN(CharConfig(vocab_size=11, cell=cell, embed_dim=8, hidden_size=16, num_layers=2)).eval()
    ids = torch.randint(0, 11, (3, 10))
    h, c = model.init_state(3)
    assert h.shape == c.shape == (2, 3, 16)
    with torch.no_grad():
        logits, h1, c1 = model(ids, h, c)
        assert logits.shape == (3, 10, 11) and h1.shape == (2, 3, 16) and c1.shape == (2, 3, 16)
        # reading in two pieces with the state carried is the same computation as one piece
        _, hm, cm = model(ids[:, :6], h, c)
        last, h2, c2 = model.forward_last(ids[:, 6:], hm, cm)
    assert last.shape == (3, 11)
    assert torch.allclose(last, logits[:, -1], atol=1e-6) and torch.allclose(h2, h1, atol=1e-6)
    assert torch.allclose(c2, c1, atol=1e-6)
    if cell != "lstm":
        assert torch.equal(c1, c)  # no memory cell: c passes through


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_frac=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 10, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 99, 1.0) == pytest.approx(1e-4)


@pytest.mark.slow
def test_smoke_training_loss_goes_down_and_resumes(canon_path, tmp_path):
    torch.set_num_threads(1)
    text = read_text(canon_path)[100_000:160_000]
    train_text, val_text = split_text(text, 0.1)
    vocab = CharVocab.build(train_text)
    model_cfg = CharConfig(vocab_size=len(vocab), embed_dim=16, hidden_size=64, num_layers=1, dropout=0.0)
    cfg = TrainConfig(batch_size=16, bptt=32, lr=5e-3, warmup_steps=5, eval_every=25, epochs=1.0,
                      sample_every=0, patience=100)
    seen = []
    result = train(model_cfg, cfg, vocab.encode(train_text), vocab.encode(val_text), vocab, tmp_path,
                   on_eval=lambda step, m: seen.append((step, m["val_bpc"])), progress=False)
    hist = result["history"]
    assert [s for s, _ in seen] == [r["step"] for r in hist] and len(hist) >= 3
    assert hist[-1]["val_bpc"] < hist[0]["val_bpc"] - 0.3  # it learns
    assert hist[-1]["train_bpc"] < hist[0]["train_bpc"]
    assert result["best_val_bpc"] == min(v for _, v in seen) < 4.0
    # the checkpoint is config + weights + vocab: it loads with weights_only (no pickled module)
    model, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["config"] == model_cfg.to_dict() and CharVocab.from_json(ckpt["vocab"]) == vocab
    # resuming the finished run with a longer horizon continues from its step count
    cfg2 = TrainConfig(**{**cfg.__dict__, "epochs": 1.5})
    more = train(model_cfg, cfg2, vocab.encode(train_text), vocab.encode(val_text), vocab, tmp_path,
                 resume=True, progress=False)
    assert more["steps"] > result["steps"] and more["history"][: len(hist)] == hist
