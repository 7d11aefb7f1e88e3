"""shapes: nn.RNN / nn.LSTM / nn.GRU shapes, the h_n layout, a hand-computed step and packed sequences."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from tests.conftest import run_lab
from training.labs.shapes import CHECKS, B, H, I, T, make


@pytest.mark.parametrize("name", list(CHECKS))
def test_lab_check(name):
    result = CHECKS[name]("cpu")
    assert result["passed"], result


@pytest.mark.parametrize(
    "cell,batch_first,layers,bi,out_shape,state_shape",
    [
        ("rnn", True, 1, False, (B, T, H), (1, B, H)),
        ("rnn", False, 3, True, (T, B, 2 * H), (6, B, H)),
        ("lstm", True, 2, True, (B, T, 2 * H), (4, B, H)),
        ("lstm", False, 2, False, (T, B, H), (2, B, H)),
        ("gru", True, 1, True, (B, T, 2 * H), (2, B, H)),
        ("gru", False, 2, True, (T, B, 2 * H), (4, B, H)),
    ],
)
def test_exact_shapes(cell, batch_first, layers, bi, out_shape, state_shape):
    model = make(cell, num_layers=layers, bidirectional=bi, batch_first=batch_first)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
    out, state = model(x)
    assert out.shape == out_shape
    if cell == "lstm":
        h_n, c_n = state
        assert h_n.shape == c_n.shape == state_shape
    else:
        assert isinstance(state, torch.Tensor) and state.shape == state_shape  # no c_n


@pytest.mark.parametrize("cell,gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_weight_shapes(cell, gates):
    model = make(cell, num_layers=2, bidirectional=True)
    assert model.weight_ih_l0.shape == (gates * H, I)
    assert model.weight_hh_l0_reverse.shape == (gates * H, H)
    assert model.weight_ih_l1.shape == (gates * H, 2 * H)  # layer 1 reads both directions of layer 0
    assert model.bias_ih_l1_reverse.shape == model.bias_hh_l1.shape == (gates * H,)


def test_direction_slices_of_output_and_h_n():
    model = make("lstm", num_layers=2, bidirectional=True, batch_first=True)
    out, (h_n, c_n) = model(torch.randn(B, T, I, dtype=torch.float64))
    assert torch.equal(out[:, -1, :H], h_n[-2])  # last layer, forward: ends at t = T-1
    assert torch.equal(out[:, 0, H:], h_n[-1])  # last layer, backward: ends at t = 0
    assert not torch.allclose(out[:, -1, H:], h_n[-1])
    layered = h_n.view(2, 2, B, H)  # (num_layers, num_directions, B, H)
    for layer in range(2):
        for d in range(2):
            assert torch.equal(layered[layer, d], h_n[layer * 2 + d])


def test_hand_computed_scalar_rnn():
    rnn = nn.RNN(1, 1, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.fill_(0.5)
        rnn.weight_hh_l0.fill_(-0.8)
        rnn.bias_ih_l0.fill_(0.1)
        rnn.bias_hh_l0.fill_(0.2)
    out, h_n = rnn(
        torch.tensor([[[1.0], [-0.5]]], dtype=torch.float64), torch.full((1, 1, 1), 0.25, dtype=torch.float64)
    )
    h1 = math.tanh(0.5 * 1.0 - 0.8 * 0.25 + 0.3)  # = tanh(0.6)
    h2 = math.tanh(0.5 * -0.5 - 0.8 * h1 + 0.3)
    assert out[0, :, 0].tolist() == pytest.approx([h1, h2], abs=1e-14)
    assert h1 == pytest.approx(0.5370495669980353, abs=1e-15) and h_n.item() == pytest.approx(h2, abs=1e-14)


def test_packed_h_n_is_at_true_last_step():
    model = make("gru", batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    lengths = [T, 2, 3]
    _, h_n = model(pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False))
    for b, n in enumerate(lengths):
        _, h_alone = model(x[b : b + 1, :n])
        assert torch.allclose(h_n[:, b], h_alone[:, 0], atol=1e-14)
    _, h_padded = model(x)  # without packing the padding is read as input
    assert torch.allclose(h_padded[:, 0], h_n[:, 0], atol=1e-14)  # the full-length sequence agrees
    assert not torch.allclose(h_padded[:, 1], h_n[:, 1])


def test_check_list_covers_each_cell():
    for cell in ("rnn", "lstm", "gru"):
        assert sum(f"[{cell}," in name for name in CHECKS) >= 8 + 2 + 2  # shapes grid, slices, packed
    assert {"hand_rnn", "lstm_gate_order"} <= set(CHECKS)


@pytest.mark.slow
def test_lab_command_quick(tmp_path):
    head = run_lab("shapes", tmp_path)
    assert head["checks"] == head["passed"] == len(CHECKS) and head["failed"] == []
    metrics = json.loads((tmp_path / "shapes" / "metrics.json").read_text())
    row = next(
        r
        for r in metrics["shape_table"]
        if r["cell"] == "lstm" and r["batch_first"] and r["num_layers"] == 2 and r["bidirectional"]
    )
    assert row["output"] == [B, T, 2 * H] and row["h_n"] == row["c_n"] == [4, B, H]
