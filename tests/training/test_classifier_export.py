"""The committed exported classifier: contract, integrity, accuracy on held-out articles, ONNX == TorchScript, and
its int8 variant (accepted, chosen on CPU, same answers as fp32)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from runtime.classifier import ClassifierRuntime
from runtime.manifest import load_manifest
from training.classifier import data as bbc
from training.classifier.tokenizer import PATTERN, Vocab

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(exported) -> Path:
    return exported / "classifier"


@pytest.fixture(scope="module")
def runtime(folder) -> ClassifierRuntime:
    return ClassifierRuntime(folder, provider="cpu", precision="fp32")  # what TorchScript is compared with


@pytest.fixture(scope="module")
def test_articles(bbc_dir, runtime) -> list[bbc.Article]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        articles = bbc.read_folder(bbc_dir)
    wanted = set(runtime.manifest["split"]["test"])
    return [a for a in articles if a.id in wanted]


def test_manifest_follows_the_contract(folder):
    m = load_manifest(folder, kind="classifier")  # verifies sha256 of every file
    for key in (
        "kind",
        "labels",
        "vocab",
        "tokenizer",
        "max_len",
        "config",
        "metrics",
        "corpus_fingerprint",
        "versions",
        "parity",
        "created",
        "precisions",
        "files",
    ):
        assert key in m, key
    assert m["labels"] == list(bbc.LABELS)
    assert m["vocab"][:2] == ["<pad>", "<unk>"] and len(m["vocab"]) == m["config"]["vocab_size"]
    assert m["tokenizer"] == {"lowercase": True, "pattern": PATTERN}
    assert sorted(m["files"]) == ["model.int8.onnx", "model.onnx", "model.ts"]
    assert max(m["parity"]["max_abs_diff"].values()) < 1e-4
    assert m["max_len"] >= 700  # about the 95th percentile of article lengths in tokens
    assert m["metrics"]["test_accuracy"] >= 0.98
    assert m["metrics"]["test_accuracy"] > m["metrics"]["baseline_tfidf_svm_accuracy"]
    size = sum((folder / f).stat().st_size for f in m["files"])
    assert size < 50e6


def test_int8_variant_is_accepted_small_and_chosen_on_cpu(folder):
    m = load_manifest(folder, kind="classifier")
    assert m["precisions"]["fp32"] == {"files": {"model": "model.onnx"}}
    int8 = m["precisions"]["int8"]
    assert int8["files"] == {"model": "model.int8.onnx"} and int8["accepted"] is True
    q = int8["quality"]
    assert q["n"] == len(m["split"]["test"]) == 199 and q["evaluated_on"] == "the 199-article held-out test split"
    assert q["accuracy"]["fp32"] == pytest.approx(m["metrics"]["test_accuracy"], abs=1e-9)
    assert q["accuracy"]["int8"] >= q["accuracy"]["fp32"] and q["agreement"] >= 0.995
    assert q["bar"] == {"min_accuracy_change": 0.0, "min_agreement": 0.995}
    assert 2.0e6 < (folder / "model.int8.onnx").stat().st_size < 3.0e6  # 9.9 MB of fp32 weights -> 2.5 MB
    rt = ClassifierRuntime(folder, provider="cpu")
    assert (rt.provider, rt.precision, rt.files) == ("cpu", "int8", {"model": "model.int8.onnx"})


def test_int8_gives_the_recorded_answers_on_the_test_split(folder, runtime, test_articles):
    """Re-measured through the runtime: the same predictions as fp32, the accuracy and logit gap on record. int8's
    numbers move a little with a text's chunk-mates (dynamic quantization), its labels do not; alone they are fixed."""
    int8 = ClassifierRuntime(folder, provider="cpu", precision="int8")
    texts = [a.text for a in test_articles]
    y = np.array([a.label for a in test_articles])
    lo32, lo8 = runtime.predict_logits(texts), int8.predict_logits(texts)
    q = int8.manifest["precisions"]["int8"]["quality"]
    assert (lo8.argmax(1) == lo32.argmax(1)).mean() == q["agreement"]
    assert (lo8.argmax(1) == y).mean() == pytest.approx(q["accuracy"]["int8"], abs=1e-9)
    assert float(np.abs(lo8 - lo32).max()) == pytest.approx(q["max_abs_logit_diff"], rel=1e-4)
    t = (int8.manifest.get("calibration") or {}).get("temperature", 1.0)  # logits are divided by T in the graph
    assert 0.01 < q["max_abs_logit_diff"] * t < 1.0
    other = int8.predict_proba(texts[::-1], batch_size=16)[::-1]
    assert (other.argmax(1) == lo8.argmax(1)).all()
    assert 0 < float(np.abs(other - int8.predict_proba(texts)).max()) < 0.1
    alone = int8.predict_logits(texts[:40], batch_size=1)
    assert np.array_equal(int8.predict_logits(texts[:40][::-1], batch_size=1)[::-1], alone)


def test_onnx_equals_torchscript_on_real_articles(folder, runtime, test_articles):
    import torch

    from training.classifier.train import collate

    ts = torch.jit.load(str(folder / "model.ts"))
    articles = sorted(test_articles, key=lambda a: len(a.text))
    worst = 0.0
    for batch in (articles[:1], articles[-1:], articles[::40], articles[90:106]):  # B = 1, 1, 5, 16
        ids, lengths = collate([runtime.encode(a.text) for a in batch])
        onnx = runtime.session.run(["logits"], {"ids": ids.numpy(), "lengths": lengths.numpy()})[0]
        with torch.no_grad():
            worst = max(worst, float(np.abs(onnx - ts(ids, lengths).numpy()).max()))
    assert worst < 1e-4


def test_committed_graph_runs_one_bidirectional_lstm_with_sequence_lens(folder):
    """The hand-built graph (training/classifier/onnx_graph.py): each row stops at its own length, no reversal by
    gathers; the int8 variant keeps that shape with DynamicQuantizeLSTM."""
    import onnx

    for name, op in (("model.onnx", "LSTM"), ("model.int8.onnx", "DynamicQuantizeLSTM")):
        nodes = onnx.load(str(folder / name)).graph.node
        rnns = [n for n in nodes if n.op_type in ("LSTM", "DynamicQuantizeLSTM", "GRU", "RNN")]
        assert [n.op_type for n in rnns] == [op], name
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in rnns[0].attribute}
        assert attrs["direction"] == b"bidirectional" and len(rnns[0].input) > 4 and rnns[0].input[4], name
        assert not {"GatherElements", "ReverseSequence"} & {n.op_type for n in nodes}, name


def test_length_buckets_give_the_logits_of_one_text_at_a_time(runtime, test_articles):
    """fp32: the same logits whatever the chunking (each row stops at its own length), in input order."""
    from runtime.classifier import BATCH_SIZE, MAX_PADDING, length_buckets

    texts = [a.text for a in test_articles[:48]]
    together = runtime.predict_logits(texts)  # chunks of <= BATCH_SIZE, padding share <= MAX_PADDING
    assert np.abs(together - runtime.predict_logits(texts, batch_size=1)).max() < 1e-5
    assert np.abs(together - runtime.predict_logits(texts, max_padding=1.0)).max() < 1e-5  # whole sorted call
    lengths = sorted(len(runtime.encode(t)) for t in texts)
    chunks = length_buckets(lengths, BATCH_SIZE)
    assert 1 < len(chunks) < len(texts)  # real articles of mixed lengths: some chunks hold several
    for r in chunks:
        rows = lengths[r.start : r.stop]
        assert len(rows) * max(rows) - sum(rows) <= MAX_PADDING * len(rows) * max(rows)


def test_runtime_order_batching_and_encoding(runtime, test_articles):
    texts = [a.text for a in test_articles[:24]]
    p = runtime.predict_proba(texts)
    assert p.shape == (24, 5) and np.allclose(p.sum(1), 1, atol=1e-5)
    rev = runtime.predict_proba(texts[::-1], batch_size=7)
    assert np.abs(rev[::-1] - p).max() < 1e-5  # same answer whatever the order and batch size
    assert runtime.encode(texts[0]) == Vocab(runtime.manifest["vocab"]).encode(texts[0], runtime.max_len)
    assert len(runtime.encode("word " * 5000)) == runtime.max_len
    out = runtime.classify(["Arsenal beat Chelsea 2-1 in the Premiership with a late goal from Henry."])
    assert out[0]["label"] == "sport" and out[0]["probabilities"]["sport"] > 0.5


@pytest.mark.slow
def test_evaluate_command_on_the_held_out_split(bbc_dir, exported, runtime):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "evaluate-classifier",
            "--models",
            str(exported),
            "--data-dir",
            str(bbc_dir),
            "--split",
            "test",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == len(runtime.manifest["split"]["test"]) == 199
    assert result["accuracy"] >= 0.97 and result["macro_f1"] >= 0.97
    assert abs(result["accuracy"] - runtime.manifest["metrics"]["test_accuracy"]) <= 1 / 199
