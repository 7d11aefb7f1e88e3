"""char-vs-word: the word tokens rebuild the text, the bit accounting adds up, and the quick run's comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_lab
from training.common.files import read_json
from training.labs import word_lm as wl
from training.labs.char_vs_word import KINDS, char_bits, kind_of

PASSAGE = '     "Holmes\'s cross-examination was interrupted," he said, at 221B\n\n     "To-day?"  Café!\t[x]\n'


def test_tokens_rebuild_the_text_exactly():
    toks = wl.tokenize(PASSAGE)
    assert "".join(toks) == PASSAGE
    assert "Holmes's" in toks and "\n\n     " in toks and "  " in toks and "Café" in toks and "221" in toks
    assert toks[toks.index("cross") : toks.index("cross") + 3] == ["cross", "-", "examination"]
    assert [KINDS[kind_of(t)] for t in ["Holmes", " ", "\n     ", ",", "221", '"']] == [
        "word",
        "space",
        "space",
        "punct",
        "number",
        "punct",
    ]
    assert "unknown" in KINDS  # tokens outside the vocabulary: the lab sets their kind itself


def test_vocab_keeps_the_most_frequent_tokens_and_maps_the_rest_to_unk():
    v = wl.WordVocab.build(["b", "a", "b", "c", "a", "b", "d"], max_size=3)
    assert v.itos == [wl.UNK, "b", "a"]
    assert v.encode(["a", "c", "b", "zzz"]).tolist() == [2, 0, 1, 0]


def test_speller_is_a_distribution_and_charges_unseen_characters():
    sp = wl.Speller(["Baskerville", "Mortimer", "moor"], set("Baskervilemortimr"))
    p = np.exp2(sp.logp)
    np.testing.assert_allclose(p.sum(1), 1.0)  # from every symbol the next one is a distribution
    assert p[:, 0].max() == 0  # nothing returns to the start
    seq = [0, *(sp.index[c] for c in "moor"), 1]
    assert math.isclose(sp.bits("moor"), -sum(sp.logp[a, b] for a, b in zip(seq, seq[1:])))
    assert sp.bits("moor") < sp.bits("qqqq")  # seen transitions are cheaper; q is unseen: escape + 16 bits each
    assert sp.bits("qqqq") > 4 * 16
    word = sp.sample(np.random.default_rng(0))
    assert word == sp.sample(np.random.default_rng(0)) and len(word) <= 20


def test_token_bits_is_one_stream_whatever_the_chunk():
    torch.manual_seed(0)
    model = wl.WordLM(wl.WordConfig(vocab_size=50, embed_dim=16, hidden_size=16))
    ids = np.random.default_rng(0).integers(0, 50, 40)
    a, b = wl.token_bits(model, ids, first=3), wl.token_bits(model, ids, first=3, chunk=7)
    np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.no_grad():  # the same numbers as one forward pass over [first, ids[:-1]]
        logits, _ = model.eval()(torch.from_numpy(np.r_[3, ids[:-1]])[None])
    ref = -torch.log_softmax(logits[0], -1)[torch.arange(40), torch.from_numpy(ids)] / math.log(2)
    np.testing.assert_allclose(a, ref.numpy(), atol=1e-4)


@pytest.mark.slow
def test_char_bits_are_the_evaluate_codes_bits_per_char(canon_path):
    from runtime.generator import GeneratorRuntime
    from training.common.files import read_text
    from training.generator.evaluate import bits_per_char
    from training.labs.committed import load_char_model

    model, _, _ = load_char_model()
    runtime = GeneratorRuntime(ROOT / "exported_models", "cpu", 1, precision="fp32")
    ids = runtime.encode(read_text(canon_path)[-1280:])
    per_char = char_bits(model, ids, runtime.encode(runtime.PRIME), torch.device("cpu"))  # one thread: conftest
    assert per_char.shape == ids.shape and (per_char >= 0).all()
    assert abs(per_char.mean() - bits_per_char(runtime, ids)) < 1e-4  # PyTorch per character == ONNX in total


@pytest.mark.slow
def test_quick_run_the_char_model_wins_and_the_bits_add_up(tmp_path, data_dir):
    h = run_lab("char-vs-word", tmp_path, data_dir=data_dir)
    assert h["tail_chars"] == 12000
    # the committed char model (~1.5 bits/char on the tail) against a word model trained for 6 s (measured 3.4)
    assert 1.3 < h["char_bpc"] < 1.8
    assert h["word_bpc"] > h["char_bpc"] + 0.5
    assert 0 < h["oov_token_rate"] < 0.05
    m = read_json(tmp_path / "char-vs-word" / "metrics.json")
    assert m["split"] == {"val_frac": 0.05, "train_chars": 3609178, "val_chars": 189957}  # the model's own split
    assert abs(m["char_model"]["bits_per_char_pytorch"] - h["char_bpc"]) < 1e-3
    b = m["breakdown"]
    assert sum(k["chars"] for k in b.values()) == h["tail_chars"]
    # every character's bits belong to exactly one kind: the kinds add up to both totals
    assert math.isclose(sum(k["word_model_bits"] for k in b.values()) / h["tail_chars"], h["word_bpc"], abs_tol=1e-3)
    assert math.isclose(sum(k["char_model_bits"] for k in b.values()) / h["tail_chars"], h["char_bpc"], abs_tol=1e-3)
    curve = [p["val_bits_per_char_head"] for p in m["word_model"]["history"]]
    assert len(curve) >= 2 and curve[-1] < curve[0]  # the word model did learn while it trained
    samples = (tmp_path / "char-vs-word" / "samples.txt").read_text()
    assert len(m["samples"]["char"]) == 400 and len(m["samples"]["word"]) >= 400 and m["samples"]["char"] in samples
    assert (tmp_path / "char-vs-word" / "char_vs_word.png").stat().st_size < 200_000
