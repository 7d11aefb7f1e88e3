"""The committed generator through runtime/generator.py and the generate / evaluate-generator commands."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest

from runtime.generator import GeneratorRuntime, GenState, generate, sample_next
from training.common.files import read_text
from training.generator.data import split_text

from tests.conftest import training_cli as _cli

MAX_VAL_BPC = 1.55  # the committed model measures 1.534 on the canon's validation tail (docs/generator.md)
MAX_MODEL_MB = 60  # four copies of the weights: step/prefill x ONNX/TorchScript


@pytest.fixture(scope="module")
def folder(exported):
    return exported / "generator"


@pytest.fixture(scope="module")
def rt(folder):
    return GeneratorRuntime(folder, "cpu")


def test_committed_model_is_small_and_complete(rt, folder):
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < MAX_MODEL_MB * 1e6
    assert rt.vocab[rt.unk_id] == "\ufffd" and len(rt.vocab) == rt.manifest["config"]["vocab_size"]
    for key in ("onnx_b1", "onnx_b8", "torchscript_b1", "torchscript_b8"):
        rec = rt.manifest["parity"][key]
        assert rec["greedy_equal"] is True and rec["max_abs_logit_diff"] < 1e-4
    assert rt.manifest["parity"]["chars"] == 500


def test_shapes(rt):
    L, H, V = rt.num_layers, rt.hidden_size, len(rt.vocab)
    h, c = rt.zero_state(3)
    assert h.shape == c.shape == (L, 3, H) and h.dtype == np.float32
    logits, h, c = rt.prefill(np.stack([rt.encode("Holmes")] * 3), h, c)
    assert logits.shape == (3, V) and h.shape == (L, 3, H)
    logits, h, c = rt.step(np.array([1, 2, 3]), h, c)
    assert logits.shape == (3, V) and c.shape == (L, 3, H)
    state = rt.start("Watson")
    assert state.h.shape == (L, H) and state.logits.shape == (V,)


def test_greedy_200_equals_100_then_resume_100(rt):
    whole = "".join(generate(rt, "Holmes", 200, temperature=0))
    first = generate(rt, "Holmes", 100, temperature=0)
    text = "".join(first)
    text += "".join(generate(rt, "", 100, temperature=0, state=first.state))
    assert text == whole and len(whole) == 200


def test_seeded_sampling_is_reproducible_and_resumable(rt):
    a = "".join(generate(rt, "It was", 150, temperature=0.8, top_k=20, top_p=0.95, seed=7))
    assert a == "".join(generate(rt, "It was", 150, temperature=0.8, top_k=20, top_p=0.95, seed=7))
    assert a != "".join(generate(rt, "It was", 150, temperature=0.8, top_k=20, top_p=0.95, seed=8))
    # stop after 60 characters, store the state as JSON, resume: the same 150 characters
    first = generate(rt, "It was", 60, temperature=0.8, top_k=20, top_p=0.95, seed=7)
    head = "".join(first)
    doc = json.loads(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v
                                 for k, v in asdict(first.state).items()}))
    state = GenState(**{k: np.asarray(v, np.float32) if k != "rng_state" else v for k, v in doc.items()})
    assert head + "".join(generate(rt, "", 90, temperature=0.8, top_k=20, top_p=0.95, state=state)) == a


def test_empty_prompt_primes_a_newline_and_unknown_chars_map_to_unk(rt):
    assert np.array_equal(rt.start("").logits, rt.start("\n").logits)
    assert rt.encode("€").tolist() == [rt.unk_id]
    text = "".join(generate(rt, "Holmes € said", 20, temperature=0))  # no error on an unseen character
    assert len(text) == 20


def test_batched_advance_equals_one_stream_at_a_time(rt):
    prompts = ["Holmes", "My dear Watson", "\n     It"]
    together = [rt.start(p) for p in prompts]
    alone = [rt.start(p) for p in prompts]
    ids = [rt.sample_next(s.logits, 0) for s in together]
    rt.advance(together, ids)
    for s, i in zip(alone, ids):
        rt.advance([s], [i])
    for a, b in zip(together, alone):
        assert np.abs(a.logits - b.logits).max() < 1e-5 and np.abs(a.h - b.h).max() < 1e-5


def test_sample_next():
    logits = np.array([0.0, 3.0, 1.0, 2.0])
    assert sample_next(logits, 0) == 1
    rng = np.random.default_rng(0)
    assert {sample_next(logits, 5.0, top_k=1, rng=rng) for _ in range(50)} == {1}
    assert {sample_next(logits, 1.0, top_p=0.01, rng=rng) for _ in range(50)} == {1}
    assert {sample_next(logits, 10.0, top_k=2, rng=rng) for _ in range(200)} == {1, 3}
    draws = [sample_next(logits, 1.0, rng=np.random.default_rng(3)) for _ in range(5)]
    assert len(set(draws)) == 1  # same seed, same draw
    with pytest.raises(ValueError):
        sample_next(logits, 1.0)  # sampling without an rng


@pytest.mark.slow
def test_bits_per_char_on_validation_tail(canon_path, tmp_path):
    _, val = split_text(read_text(canon_path), 0.05)  # the split the model was trained with
    path = tmp_path / "val.txt"
    path.write_text(val, encoding="utf-8")
    r = _cli("evaluate-generator", "--text", str(path))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["n_chars"] == len(val)
    assert result["bits_per_char"] < MAX_VAL_BPC


def test_generate_command_streams_and_is_seeded():
    args = ["generate", "Holmes", "--length", "40", "--temperature", "0.7", "--seed", "3"]
    a, b = _cli(*args), _cli(*args)
    assert a.returncode == 0 and a.stdout == b.stdout
    assert a.stdout.startswith("Holmes") and len(a.stdout) == len("Holmes") + 40 + 1


def test_bad_inputs_are_one_line_errors(tmp_path, folder):
    def one_line_error(r, needle):
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last, r.stderr

    one_line_error(_cli("evaluate-generator", "--text", str(tmp_path / "missing.txt")), "text file not found")
    (tmp_path / "empty.txt").write_text("")
    one_line_error(_cli("evaluate-generator", "--text", str(tmp_path / "empty.txt")), "no text to score")
    broken = tmp_path / "generator"
    shutil.copytree(folder, broken)
    with open(broken / "step.onnx", "ab") as f:
        f.write(b"\0")
    one_line_error(_cli("generate", "--models", str(broken), "x"), "does not match the manifest")
    (tmp_path / "t.txt").write_text("Holmes")
    one_line_error(_cli("evaluate-generator", "--models", str(broken), "--text", str(tmp_path / "t.txt")),
                   "does not match the manifest")
    one_line_error(_cli("generate", "--models", str(folder), "--top-p", "2", "x"), "--top-p")
