"""Log-probabilities and stop sequences (runtime/logprobs.py): pure functions, exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.logprobs import CharLogprob, StopText, bits_per_char, char_logprob, first_stop, log_softmax


def test_log_softmax_is_normalised_and_shift_invariant():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]], np.float32)
    lp = log_softmax(logits)
    assert lp.dtype == np.float64 and lp.shape == (2, 3)
    np.testing.assert_allclose(np.exp(lp).sum(-1), [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(lp[0], log_softmax(logits[0] + 50), atol=1e-12)
    assert lp[1, 0] == pytest.approx(math.log(0.5)) and np.isfinite(lp[1, 2])


def test_char_logprob_reports_the_chosen_and_the_top_ids_most_likely_first():
    logits = np.log(np.array([0.1, 0.5, 0.1, 0.3]))
    r = char_logprob(logits, 2, top=3)
    assert r.id == 2 and r.logprob == pytest.approx(math.log(0.1))
    assert [i for i, _ in r.top] == [1, 3, 0]  # the tie 0/2 goes to the lower id
    assert [lp for _, lp in r.top] == pytest.approx([math.log(0.5), math.log(0.3), math.log(0.1)])
    assert char_logprob(logits, 1).top == ()


def test_bits_per_char_is_the_mean_negative_log2():
    recs = [CharLogprob(0, math.log(0.5)), CharLogprob(1, math.log(0.25))]
    assert bits_per_char(recs) == pytest.approx(1.5)
    assert bits_per_char([]) == 0.0


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_stop_text_never_releases_any_part_of_the_stop_however_the_text_is_split(cut):
    """Generation ends on "\\n\\n": the text before it comes out whole, the stop sequence never."""
    text = "ab\ncd\n\n"  # the stepper ends the stream right after the first "\n\n"
    held = StopText(("\n\n", "XYZ"))
    out = "".join(held.push(text[i : i + cut]) for i in range(0, len(text), cut))
    assert "\n\n" not in out and out == text[: len(out)]
    assert out + held.finish("\n\n") == "ab\ncd"
    assert held.released == len("ab\ncd")


def test_stop_text_holds_back_only_what_may_begin_a_stop():
    held = StopText(("XYZ",))
    assert held.push("abX") == "ab"  # "X" may begin "XYZ"
    assert held.push("Y") == ""
    assert held.push("q") == "XYq"  # it did not
    assert held.finish(None) == ""
    held = StopText(("XYZ",))
    assert held.push("abXY") == "ab"
    assert held.finish(None) == "XY"  # ended by length: what was held is text
    assert StopText(()).push("anything\n\n") == "anything\n\n"


def test_first_stop_names_the_sequence_the_text_ends_with():
    assert first_stop("abc\n\n", ("\n\n", "c")) == "\n\n"
    assert first_stop("abc", ("\n\n", "bc", "c")) == "bc"
    assert first_stop("abc", ("x",)) is None
