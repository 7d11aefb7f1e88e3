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
    cfg = TrainConfig(
        batch_size=16, bptt=32, lr=5e-3, warmup_steps=5, eval_every=25, epochs=1.0, sample_every=0, patience=100
    )
    seen = []
    result = train(
        model_cfg,
        cfg,
        vocab.encode(train_text),
        vocab.encode(val_text),
        vocab,
        tmp_path,
        on_eval=lambda step, m: seen.append((step, m["val_bpc"])),
        progress=False,
    )
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
    more = train(
        model_cfg, cfg2, vocab.encode(train_text), vocab.encode(val_text), vocab, tmp_path, resume=True, progress=False
    )
    assert more["steps"] > result["steps"] and more["history"][: len(hist)] == hist


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(canon_path, tmp_path):
    """Killed mid-epoch right after a checkpoint, then resumed: the same steps, losses and final weights as a run
    that was never stopped (no time budget, so the schedule is step-based and deterministic)."""
    torch.set_num_threads(1)
    text = read_text(canon_path)[300_000:330_000]
    train_text, val_text = split_text(text, 0.1)
    vocab = CharVocab.build(train_text)
    model_cfg = CharConfig(vocab_size=len(vocab), embed_dim=8, hidden_size=32, num_layers=2, dropout=0.2)
    cfg = TrainConfig(
        batch_size=8, bptt=16, lr=5e-3, warmup_steps=3, eval_every=15, epochs=1.3, sample_every=0, patience=100
    )
    args = (model_cfg, cfg, vocab.encode(train_text), vocab.encode(val_text), vocab)
    whole = train(*args, tmp_path / "whole", progress=False)

    def stop_at_30(step, metrics):
        if step == 30:  # last.pt of step 30 is on disk: the process dies here
            raise Interrupted

    with pytest.raises(Interrupted):
        train(*args, tmp_path / "cut", on_eval=stop_at_30, progress=False)
    resumed = train(*args, tmp_path / "cut", resume=True, progress=False)
    assert resumed["steps"] == whole["steps"] and 30 < whole["steps"] < 2 * result_steps_per_epoch(whole)
    assert [h["val_bpc"] for h in resumed["history"]] == [h["val_bpc"] for h in whole["history"]]
    assert [h["train_bpc"] for h in resumed["history"]] == [h["train_bpc"] for h in whole["history"]]
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def result_steps_per_epoch(result: dict) -> int:
    return result["steps_per_epoch"]


@pytest.mark.slow
def test_cli_run_killed_with_sigkill_resumes_from_its_checkpoint(canon_path, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, training_cli

    small = tmp_path / "small.txt"
    small.write_text(read_text(canon_path)[400_000:460_000], encoding="utf-8")
    run = tmp_path / "run"
    flags = [
        "train-generator",
        "--text",
        str(small),
        "--hidden-size",
        "32",
        "--embed-dim",
        "8",
        "--num-layers",
        "1",
        "--batch-size",
        "8",
        "--bptt",
        "16",
        "--eval-every",
        "20",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--run-dir",
        str(run),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "training", *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (run / "last.pt").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=30)
    killed_at = torch.load(run / "last.pt", weights_only=True)["loop"]["step"]
    assert killed_at >= 20
    # --resume alone: the text and the split come from the run's config.json
    r = training_cli("train-generator", "--run-dir", str(run), "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {run / 'last.pt'} at step {killed_at}" in r.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == metrics["steps_per_epoch"] and metrics["history"][0]["step"] == 20
    other = tmp_path / "other.txt"
    other.write_text(read_text(canon_path)[0:60_000], encoding="utf-8")
    r = training_cli("train-generator", "--run-dir", str(run), "--resume", "--text", str(other))
    assert r.returncode == 2 and "is not the text" in r.stderr
