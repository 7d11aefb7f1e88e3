"""The committed exported classifier: contract, integrity, accuracy on held-out articles, ONNX == TorchScript."""
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
    return ClassifierRuntime(folder, provider="cpu")


@pytest.fixture(scope="module")
def test_articles(bbc_dir, runtime) -> list[bbc.Article]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        articles = bbc.read_folder(bbc_dir)
    wanted = set(runtime.manifest["split"]["test"])
    return [a for a in articles if a.id in wanted]


def test_manifest_follows_the_contract(folder):
    m = load_manifest(folder, kind="classifier")  # verifies sha256 of every file
    for key in ("kind", "labels", "vocab", "tokenizer", "max_len", "config", "metrics", "corpus_fingerprint",
                "versions", "parity", "created", "files"):
        assert key in m, key
    assert m["labels"] == list(bbc.LABELS)
    assert m["vocab"][:2] == ["<pad>", "<unk>"] and len(m["vocab"]) == m["config"]["vocab_size"]
    assert m["tokenizer"] == {"lowercase": True, "pattern": PATTERN}
    assert sorted(m["files"]) == ["model.onnx", "model.ts"]
    assert max(m["parity"]["max_abs_diff"].values()) < 1e-4
    assert m["max_len"] >= 700  # about the 95th percentile of article lengths in tokens
    assert m["metrics"]["test_accuracy"] >= 0.98
    assert m["metrics"]["test_accuracy"] > m["metrics"]["baseline_tfidf_svm_accuracy"]
    size = sum((folder / f).stat().st_size for f in m["files"])
    assert size < 50e6


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
    proc = subprocess.run([sys.executable, "-m", "training", "evaluate-classifier", "--models", str(exported),
                           "--data-dir", str(bbc_dir), "--split", "test"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == len(runtime.manifest["split"]["test"]) == 199
    assert result["accuracy"] >= 0.97 and result["macro_f1"] >= 0.97
    assert abs(result["accuracy"] - runtime.manifest["metrics"]["test_accuracy"]) <= 1 / 199
