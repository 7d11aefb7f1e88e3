"""Precision selection (runtime.manifest.select_precision and both runtimes), int8 vs fp32 on the tiny models,
and the ``python -m training quantize`` command's files, manifest and exit codes."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import tiny_models

import runtime.providers
import training.common.quantize as quantize
from runtime.classifier import ClassifierRuntime
from runtime.generator import GeneratorRuntime
from runtime.manifest import ArtifactError, load_manifest, select_precision, sha256_file
from tests.conftest import training_cli
from training.__main__ import main as training_main

FP32 = {"model": "model.onnx"}
INT8 = {"model": "model.int8.onnx"}


def manifest(int8: bool | None) -> dict:
    """A classifier manifest without a precisions entry (None), or with an accepted / rejected int8 variant."""
    doc = {"kind": "classifier", "files": {"model.onnx": "x", "model.ts": "y"}}
    if int8 is not None:
        doc["files"]["model.int8.onnx"] = "z"
        doc["precisions"] = {"fp32": {"files": FP32}, "int8": {"files": INT8, "accepted": int8, "verdict": "v"}}
    return doc


@pytest.mark.parametrize(
    "int8, provider, wanted, expected",
    [
        # accepted int8 variant
        (True, "cpu", "auto", "int8"),
        (True, "cuda", "auto", "fp32"),
        (True, "cpu", "fp32", "fp32"),
        (True, "cuda", "fp32", "fp32"),
        (True, "cpu", "int8", "int8"),
        (True, "cuda", "int8", "int8"),
        # rejected int8 variant: auto keeps fp32, an explicit int8 still gets it
        (False, "cpu", "auto", "fp32"),
        (False, "cuda", "auto", "fp32"),
        (False, "cpu", "int8", "int8"),
        # no precisions entry (older exports): fp32 only
        (None, "cpu", "auto", "fp32"),
        (None, "cuda", "auto", "fp32"),
        (None, "cpu", "fp32", "fp32"),
    ],
)
def test_selection_rule(int8, provider, wanted, expected):
    precision, files = select_precision(manifest(int8), provider, wanted)
    assert precision == expected
    assert files == (INT8 if expected == "int8" else FP32)


def test_int8_without_a_variant_and_bad_requests_are_artifact_errors():
    for provider in ("cpu", "cuda"):
        with pytest.raises(ArtifactError, match="no int8 variant"):
            select_precision(manifest(None), provider, "int8")
    with pytest.raises(ArtifactError, match="unknown precision"):
        select_precision(manifest(True), "cpu", "fp16")
    doc = manifest(True)
    del doc["files"]["model.int8.onnx"]  # a graph the sha256 check would not cover
    with pytest.raises(ArtifactError, match="does not list"):
        select_precision(doc, "cpu", "auto")
    gen = {"kind": "generator", "files": {"step.onnx": "a", "prefill.onnx": "b"}}
    assert select_precision(gen, "cpu") == ("fp32", {"step": "step.onnx", "prefill": "prefill.onnx"})


def test_explicit_int8_warns_when_rejected_or_on_cuda(caplog):
    with caplog.at_level(logging.WARNING, logger="runtime.manifest"):
        select_precision(manifest(True), "cpu", "int8")
        assert caplog.records == []
        select_precision(manifest(False), "cpu", "int8")
        select_precision(manifest(True), "cuda", "int8")
    assert [r.getMessage() for r in caplog.records] == [
        "int8 classifier variant runs although it missed its quality bar: v",
        "int8 on cuda: the dynamic-quantization ops run on CPU kernels",
    ]


# ------------------------------------------------------------------ the runtimes on the tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "int8": tiny_models.build(root / "int8", int8=True),
        "rejected": tiny_models.build(root / "rejected", int8=False),
        "fp32": tiny_models.build(root / "fp32"),
    }


@pytest.mark.parametrize("cls", [ClassifierRuntime, GeneratorRuntime])
def test_runtimes_follow_the_rule(tiny, cls):
    kind = "classifier" if cls is ClassifierRuntime else "generator"
    cases = [
        ("int8", "auto", "int8"),
        ("int8", "fp32", "fp32"),
        ("int8", "int8", "int8"),
        ("rejected", "auto", "fp32"),
        ("rejected", "int8", "int8"),
        ("fp32", "auto", "fp32"),
    ]
    for folder, wanted, expected in cases:
        rt = cls(tiny[folder] / kind, "cpu", precision=wanted)
        assert (rt.provider, rt.precision) == ("cpu", expected), (folder, wanted)
        assert all(f.endswith(".int8.onnx") == (expected == "int8") for f in rt.files.values())
    with pytest.raises(ArtifactError, match="no int8 variant"):
        cls(tiny["fp32"] / kind, "cpu", precision="int8")
    assert cls(tiny["int8"] / kind).provider == "cpu"  # auto resolves: no CUDA provider in this onnxruntime


@pytest.mark.filterwarnings("ignore::UserWarning")  # onnxruntime: CUDAExecutionProvider not available
def test_auto_on_cuda_runs_fp32(tiny, monkeypatch):
    """With a CUDA provider present, auto resolves to cuda and fp32 even where an accepted int8 variant exists."""
    monkeypatch.setattr(
        runtime.providers, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    for cls, kind in ((ClassifierRuntime, "classifier"), (GeneratorRuntime, "generator")):
        rt = cls(tiny["int8"] / kind)
        assert (rt.provider, rt.precision) == ("cuda", "fp32")


def test_int8_logits_are_close_to_fp32_on_the_tiny_models(tiny):
    folder = tiny["int8"]
    texts = ["the market rose", "film election match phone", "the the the unknown words", "match"]
    c = {p: ClassifierRuntime(folder, "cpu", precision=p).predict_logits(texts) for p in ("fp32", "int8")}
    diff = float(np.abs(c["int8"] - c["fp32"]).max())
    # per-tensor int8 weights: error <= scale / 2 = max|emb| / 254 per embedding value, averaged over tokens
    assert 0 < diff < 0.02
    assert (c["int8"].argmax(1) == c["fp32"].argmax(1)).all()

    g = {p: GeneratorRuntime(folder, "cpu", precision=p) for p in ("fp32", "int8")}
    ids = np.array([1, 5, 9])
    out = {p: rt.step(ids, *rt.zero_state(3)) for p, rt in g.items()}
    diffs = [float(np.abs(a - b).max()) for a, b in zip(out["int8"], out["fp32"])]  # logits, h, c
    assert 0 < diffs[0] < 0.3 and 0 < diffs[1] < 0.03 and diffs[2] < 0.003


# ------------------------------------------------------------------ the quantize command
def write_data(root, manifest_doc: dict, n_per_label: int = 4) -> list[str]:
    """A corpus for the tiny models: bbc/<label>/<nnn>.txt of their vocabulary, a canon of their characters."""
    rng = random.Random(0)
    words = manifest_doc["vocab"][2:]
    ids = []
    for label in manifest_doc["labels"]:
        (root / "bbc" / label).mkdir(parents=True)
        for k in range(n_per_label):
            (root / "bbc" / label / f"{k:03d}.txt").write_text(" ".join(rng.choices(words, k=30)))
            ids.append(f"{label}/{k:03d}.txt")
    (root / "sherlock").mkdir()
    canon = "".join(random.Random(0).choices(tiny_models.CHARS, k=64_000))
    (root / "sherlock" / "canon.txt").write_text(canon)
    return ids


@pytest.fixture()
def tiny_export(tmp_path):
    """A tiny exported-models root (fp32 only) whose classifier manifest records a test split, and its data."""
    models = tiny_models.build(tmp_path / "models")
    # a random tiny generator's int8 bits/char differ from fp32 by +-0.01 on random text: seed 1 is -0.016
    tiny_models.generator(models / "generator", seed=1)
    folder = models / "classifier"
    doc = json.loads((folder / "manifest.json").read_text())
    doc["split"] = {"test": write_data(tmp_path / "data", doc)}
    (folder / "manifest.json").write_text(json.dumps(doc))  # same files: the sha256 entries still hold
    return models, tmp_path / "data"


def test_quantize_command_adds_measured_variants(tiny_export):
    models, data = tiny_export
    fp32 = sorted(p for p in models.rglob("*") if p.is_file() and p.name != "manifest.json")
    before = {p: sha256_file(p) for p in fp32}
    old = {k: json.loads((models / k / "manifest.json").read_text()) for k in ("classifier", "generator")}
    r = training_cli("quantize", "--models", str(models), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    for line in (
        "classifier: model.onnx",
        "-> model.int8.onnx",
        "classifier: accuracy",
        "generator: bits/char",
        "manifest updated",
    ):
        assert line in r.stdout, line
    assert {p: sha256_file(p) for p in fp32} == before  # the fp32 graphs and TorchScript files are only read
    for kind, roles in (("classifier", ["model"]), ("generator", ["prefill", "step"])):
        man = load_manifest(models / kind, kind)
        assert {k: v for k, v in man.items() if k not in ("precisions", "files")} == {
            k: v for k, v in old[kind].items() if k != "files"
        }
        int8 = man["precisions"]["int8"]
        assert sorted(int8["files"]) == roles and int8["accepted"] is True and int8["verdict"] == "meets the bar"
        assert set(man["files"]) == set(old[kind]["files"]) | set(int8["files"].values())
        assert man["precisions"]["fp32"] == {
            "files": {r: f"{r}.onnx" if kind == "generator" else "model.onnx" for r in roles}
        }
    q = load_manifest(models / "classifier")["precisions"]["int8"]["quality"]
    assert q["n"] == 20 and q["evaluated_on"] == "the 20-article held-out test split"
    assert q["accuracy"]["int8"] >= q["accuracy"]["fp32"] and q["agreement"] >= 0.995
    assert q["bar"] == {"min_accuracy_change": 0.0, "min_agreement": 0.995}
    assert 0 < q["max_abs_logit_diff"] < 0.02
    q = load_manifest(models / "generator")["precisions"]["int8"]["quality"]
    assert (q["n_chars"], q["streams"]) == (64_000, 64) and q["bar"] == {"max_bits_per_char_change": 0.005}
    assert q["bits_per_char_change"] == pytest.approx(q["bits_per_char"]["int8"] - q["bits_per_char"]["fp32"])
    assert q["bits_per_char_change"] == pytest.approx(-0.0157, abs=1e-3)  # <= +0.005: accepted
    assert q["prefill_max_abs_logit_diff"] == 0.0  # the tiny prefill is a Scan, which quantize_dynamic leaves fp32
    assert ClassifierRuntime(models, "cpu").precision == GeneratorRuntime(models, "cpu").precision == "int8"


def test_quantize_command_exit_codes(tiny_export, monkeypatch, capsys):
    models, data = tiny_export
    # a bar no variant can meet: exit 1, recorded as not accepted, auto keeps fp32
    monkeypatch.setitem(quantize.CLASSIFIER_BAR, "min_agreement", 1.5)
    assert training_main(["quantize", "--models", str(models), "--data-dir", str(data), "--only", "classifier"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: int8 missed its quality bar (classifier: agreement with fp32 1.0000 < 1.5)")
    int8 = load_manifest(models / "classifier")["precisions"]["int8"]
    assert int8["accepted"] is False and int8["verdict"] == "agreement with fp32 1.0000 < 1.5"
    assert ClassifierRuntime(models, "cpu").precision == "fp32"
    assert "precisions" not in load_manifest(models / "generator")  # --only classifier
    # no evaluation data, no test split, a damaged folder: exit 2 with a one-line error
    r = training_cli("quantize", "--models", str(models), "--data-dir", str(data / "nowhere"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "missing" in r.stderr
    bare = tiny_models.build(models.parent / "bare")
    r = training_cli("quantize", "--models", str(bare / "classifier"), "--data-dir", str(data))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: the classifier manifest records no test split: nothing held out to measure int8 on"
    )
    with open(models / "classifier" / "model.ts", "ab") as f:
        f.write(b"\0")
    r = training_cli("quantize", "--models", str(models), "--data-dir", str(data))
    assert r.returncode == 2 and "does not match the manifest" in r.stderr.strip().splitlines()[-1]


def test_quantize_help():
    r = training_cli("quantize", "--help")
    assert r.returncode == 0 and "--models" in r.stdout and "--data-dir" in r.stdout and "accepted=false" in r.stdout
