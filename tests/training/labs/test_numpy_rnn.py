"""numpy-rnn: hand-written BPTT matches finite differences and autograd, and trains like nn.LSTM step for step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import run_lab
from training.labs import numpy_cells as nc
from training.labs.numpy_checks import TorchCharModel, check_autograd, check_finite_differences, check_tbptt


def _ids(n: int = 400, vocab: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n)


@pytest.mark.parametrize("kind", nc.KINDS)
def test_backprop_matches_finite_differences(kind):
    result = check_finite_differences(kind, seed=0)
    assert result["max_rel_error"] <= 1e-6, result["rel_errors"]
    assert set(result["rel_errors"]) >= {"w_ih", "w_hh", "b_ih", "b_hh", "w_y", "b_y", "h0"}


@pytest.mark.parametrize("kind", nc.KINDS)
def test_backprop_matches_autograd(kind):
    result = check_autograd(kind, _ids(), vocab=11, seed=0, device="cpu")
    assert result["max_rel_error"] <= 1e-10, result["rel_errors"]  # float64, same arithmetic: ~1e-13


@pytest.mark.parametrize("kind", nc.KINDS)
def test_truncated_window_gradients_with_carried_state(kind):
    result = check_tbptt(kind, _ids(), vocab=11, seed=0, device="cpu")
    assert result["max_rel_error"] <= 1e-6, result["rel_errors"]
    assert "dh_carried_fd" in result["rel_errors"]
    # detaching really drops gradient: the untruncated w_hh gradient differs by more than rounding
    assert result["w_hh_grad_dropped_by_truncation"] > 1e-3


def test_relative_error_definition():
    from training.labs.numpy_checks import rel_error

    assert rel_error([0.0, 1.0], [0.0, 1.0]) == 0.0  # 0 vs 0 scores 0, not nan
    assert rel_error([1.0], [3.0]) == pytest.approx(0.5)  # |1 - 3| / (1 + 3)


def test_adam_and_clipping_match_torch():
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=5)}
    tparams = [torch.tensor(v, requires_grad=True) for v in params.values()]
    opt_np, opt_t = nc.Adam(params, lr=1e-2), torch.optim.Adam(tparams, lr=1e-2)
    for _ in range(5):
        grads = {k: rng.normal(size=v.shape) * 3 for k, v in params.items()}
        for p, g in zip(tparams, grads.values()):
            p.grad = torch.tensor(g)
        norm = nc.clip_grad_norm(grads, 1.0)
        tnorm = torch.nn.utils.clip_grad_norm_(tparams, 1.0)
        assert norm == pytest.approx(tnorm.item(), rel=1e-12) and norm > 1.0  # the clip was active
        opt_np.step(params, grads)
        opt_t.step()
    for v, p in zip(params.values(), tparams):
        np.testing.assert_allclose(v, p.detach().numpy(), rtol=0, atol=1e-14)


def test_numpy_and_torch_lstm_train_in_lockstep(tmp_path):
    from training.labs.common import LabContext
    from training.labs.numpy_rnn import Setup, train_pair

    rng = np.random.default_rng(0)
    ids = np.where(rng.random(3000) < 0.1, rng.integers(0, 9, 3000), np.arange(3000) % 7)  # a period, noised
    ctx = LabContext(name="numpy-rnn", out=tmp_path, quick=True, device=torch.device("cpu"), seed=0, progress=False)
    setup = Setup(hidden=16, batch=8, bptt=16, steps=30, lr=1e-2, eval_every=15)
    hist = train_pair(setup, ids[:2500], ids[2500:], 9, ctx)["history"]
    gap = np.abs(np.array(hist["numpy_bpc"]) - np.array(hist["torch_bpc"]))
    assert gap.max() <= 1e-9  # identical init, batches and optimiser in float64: the same run
    assert np.mean(hist["numpy_bpc"][-5:]) < hist["numpy_bpc"][0] - 0.3  # and it learns
    assert abs(hist["numpy_val_bpc"][-1] - hist["torch_val_bpc"][-1]) <= 1e-9


def test_torch_twin_copies_numpy_weights():
    params = nc.init_params("lstm", 7, 5, np.random.default_rng(0))
    model = TorchCharModel.from_numpy(params, "lstm", "cpu")
    assert model.rnn.weight_ih_l0.shape == (20, 7) and model.rnn.weight_hh_l0.shape == (20, 5)
    for key, p in model.named_numpy():
        assert np.array_equal(p.detach().numpy(), params[key])


@pytest.mark.slow
def test_lab_command_quick(tmp_path):
    head = run_lab("numpy-rnn", tmp_path)

    assert head["max_rel_error"] <= 1e-6
    assert (
        max(head["finite_differences_rel_error"], head["autograd_rel_error"], head["tbptt_rel_error"])
        == head["max_rel_error"]
    )
    assert head["max_train_loss_gap"] <= 1e-9  # NumPy and nn.LSTM: the same losses step for step
    assert head["numpy_train_bpc"] < 5.0  # from log2(vocab) ~ 6.1 bits at the start
    assert head["numpy_val_bpc"] == pytest.approx(head["torch_val_bpc"], abs=1e-6)
    out = tmp_path / "numpy-rnn"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"]["numpy_bpc"][0] > metrics["history"]["numpy_bpc"][-1] + 1.0
    png = out / "loss_curves.png"
    assert (out / "config.json").is_file() and png.is_file() and png.stat().st_size < 150_000
