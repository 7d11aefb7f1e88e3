"""palindrome: balanced data with near-misses, equal parameter budgets, and accuracy that falls with length."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_lab
from training.common.files import read_json
from training.labs import seqtasks as st
from training.labs.palindrome import DIGITS, digit_batch


@pytest.mark.parametrize("length", [4, 7, 12])
def test_batches_are_half_palindromes_with_near_misses_that_differ_in_one_pair(length):
    n = 400
    x, y = digit_batch(n, length, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert x.shape == (n, length, DIGITS) and torch.all(x.sum(-1) == 1)
    seq = x.argmax(-1)
    assert torch.equal(y, (seq == seq.flip(1)).all(1).float())  # labels are the truth
    assert torch.all(y[: n // 2] == 1)  # first half: palindromes
    mismatched = (seq != seq.flip(1)).sum(1)  # positions differing from their mirror
    assert torch.all(mismatched[n // 2 : 3 * n // 4] == 2)  # near-misses: exactly one pair
    assert 0.48 <= y.mean().item() <= 0.53  # balanced (random ones rarely match)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matched_hidden_counts_parameters_as_the_model_has_them(cell, bidirectional):
    for h in (5, 32, 47):
        n = st.count_params(st.SeqModel(cell, DIGITS, h, 1, bidirectional=bidirectional))
        assert st.matched_hidden(cell, DIGITS, 1, n, bidirectional=bidirectional) == h


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_uni_and_bidirectional_models_get_the_same_parameter_budget(cell):
    bi = st.count_params(st.SeqModel(cell, DIGITS, 32, 1, bidirectional=True))
    h = st.matched_hidden(cell, DIGITS, 1, bi)
    uni = st.count_params(st.SeqModel(cell, DIGITS, h, 1))
    assert h > 32 and abs(uni - bi) / bi < 0.03


@pytest.mark.slow
def test_quick_run_learns_length_4_and_neither_model_learns_length_16(tmp_path):
    h = run_lab("palindrome", tmp_path)
    assert h["cell"] == "lstm"
    assert abs(h["params_uni"] - h["params_bi"]) / h["params_bi"] < 0.03
    for k in ("uni", "bid"):
        assert h[f"{k}_acc_T4"] >= 0.9, h  # measured 0.978, 0.99
        assert h[f"{k}_acc_T16"] < 0.65, h  # measured 0.513, 0.512: chance
    metrics = read_json(tmp_path / "palindrome" / "metrics.json")
    assert set(metrics["accuracy_by_kind"]["bidirectional"]) == {"palindromes", "near_misses", "random"}
    assert (tmp_path / "palindrome" / "palindrome.png").stat().st_size < 150_000
