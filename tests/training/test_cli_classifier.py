"""The classifier commands end to end on a small real subset, and their one-line errors on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import training_cli as cli
from training.__main__ import main
from training.common.files import read_json

SMOKE = [
    "--limit",
    "30",
    "--max-len",
    "120",
    "--embed-dim",
    "24",
    "--hidden-size",
    "16",
    "--epochs",
    "5",
    "--batch-size",
    "16",
    "--lr",
    "0.01",
    "--no-progress",
]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0]


@pytest.fixture(scope="module")
def smoke_run(bbc_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train-classifier", "--data-dir", str(bbc_dir), "--out", str(out), *SMOKE]) == 0
    (run,) = out.iterdir()
    return run


@pytest.mark.slow
def test_train_writes_the_run_folder(smoke_run):
    for name in (
        "config.json",
        "split.json",
        "vocab.json",
        "metrics.json",
        "model.pt",
        "last.pt",
        "loss.png",
        "accuracy.png",
        "lr.png",
        "confusion.png",
        "per_class.png",
    ):
        assert (smoke_run / name).stat().st_size > 0, name
    m = read_json(smoke_run / "metrics.json")
    split = read_json(smoke_run / "split.json")
    assert [len(split[k]) for k in ("train", "val", "test")] == [120, 15, 15]
    assert not set(split["test"]) & set(split["train"])
    test = m["test"]
    assert test["n"] == 15 and sum(map(sum, test["confusion_matrix"])) == 15
    assert set(test["per_class"]) == {"politics", "sport", "tech", "entertainment", "business"}
    assert 0 <= test["macro_f1"] <= 1 and m["baseline_tfidf_svm"]["n"] == 15
    hist = m["history"]
    assert len(hist) == 5 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert read_json(smoke_run / "config.json")["model"]["hidden_size"] == 16


@pytest.mark.slow
def test_export_evaluate_predict_on_the_smoke_model(smoke_run, bbc_dir, tmp_path):
    assert main(["export-classifier", str(smoke_run), "--out", str(tmp_path), "--data-dir", str(bbc_dir)]) == 0
    manifest = read_json(tmp_path / "classifier" / "manifest.json")
    assert max(manifest["parity"]["max_abs_diff"].values()) < 1e-4
    assert sorted(manifest["files"]) == ["model.int8.onnx", "model.onnx", "model.ts"]
    proc = cli("evaluate-classifier", "--models", str(tmp_path), "--data-dir", str(bbc_dir), "--split", "test")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 15
    assert result["accuracy"] == pytest.approx(read_json(smoke_run / "metrics.json")["test"]["accuracy"], abs=1e-9)
    proc = cli("predict-classifier", "--models", str(tmp_path), "--json", "Chelsea won the cup final")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["label"] in out["probabilities"] and sum(out["probabilities"].values()) == pytest.approx(1, abs=1e-5)


@pytest.mark.slow
def test_export_an_ensemble_of_two_seeds(smoke_run, bbc_dir, tmp_path):
    runs = tmp_path / "runs"
    assert main(["train-classifier", "--data-dir", str(bbc_dir), "--out", str(runs), *SMOKE, "--seed", "1"]) == 0
    (seed1,) = runs.iterdir()
    assert (
        main(
            [
                "export-classifier",
                str(smoke_run),
                str(seed1),
                "--temperature",
                "fit",
                "--out",
                str(tmp_path),
                "--data-dir",
                str(bbc_dir),
            ]
        )
        == 0
    )
    m = read_json(tmp_path / "classifier" / "manifest.json")
    ens = m["ensemble"]
    assert ens["members"] == 2 and ens["seeds"] == [0, 1] and 0.05 < ens["temperature"] < 20
    members = [read_json(r / "metrics.json")["test"]["accuracy"] for r in (smoke_run, seed1)]
    assert ens["member_test_accuracy"] == members
    assert max(m["parity"]["max_abs_diff"].values()) < 1e-4
    assert sorted(m["files"]) == ["model.int8.onnx", "model.onnx", "model.ts"]
    proc = cli("evaluate-classifier", "--models", str(tmp_path), "--data-dir", str(bbc_dir), "--split", "test")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"] == pytest.approx(
        m["metrics"]["test_accuracy"], abs=1e-9
    )  # the manifest scores the ensemble, not a member


@pytest.mark.slow
def test_members_that_hold_out_different_validation_sets_share_one_vocabulary(bbc_dir, tmp_path):
    runs = []
    for v in (0, 1):
        out = tmp_path / f"v{v}"
        assert (
            main(
                [
                    "train-classifier",
                    "--data-dir",
                    str(bbc_dir),
                    "--out",
                    str(out),
                    *SMOKE,
                    "--epochs",
                    "1",
                    "--vocab-from",
                    "train+val",
                    "--val-seed",
                    str(v),
                ]
            )
            == 0
        )
        (run,) = out.iterdir()
        runs.append(run)
    a, b = (read_json(r / "split.json") for r in runs)
    assert a["test"] == b["test"] and sorted(a["train"] + a["val"]) == sorted(b["train"] + b["val"])
    assert a["val"] != b["val"] and len(a["val"]) == len(b["val"]) == 15
    assert read_json(runs[0] / "vocab.json") == read_json(runs[1] / "vocab.json")
    assert (
        main(
            [
                "export-classifier",
                *map(str, runs),
                "--temperature",
                "0.5",
                "--out",
                str(tmp_path / "x"),
                "--data-dir",
                str(bbc_dir),
            ]
        )
        == 0
    )
    ens = read_json(tmp_path / "x" / "classifier" / "manifest.json")["ensemble"]
    assert ens["members"] == 2 and ens["temperature"] == 0.5
    # with the vocabulary of each run's own training split, the two runs cannot form one graph
    out = tmp_path / "own"
    assert (
        main(
            [
                "train-classifier",
                "--data-dir",
                str(bbc_dir),
                "--out",
                str(out),
                *SMOKE,
                "--epochs",
                "1",
                "--val-seed",
                "1",
            ]
        )
        == 0
    )
    assert_one_line_error(
        cli("export-classifier", str(runs[0]), str(next(out.iterdir())), "--out", str(tmp_path)),
        "vocabulary differs",
        "ensemble members must share it",
    )
    assert_one_line_error(
        cli("train-classifier", "--data-dir", str(bbc_dir), "--vocab-from", "test"),
        "--vocab-from must be one of ['train', 'train+val']",
    )


def test_export_errors_for_mismatched_members_and_a_bad_temperature(smoke_run, bbc_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(smoke_run, other)
    import torch

    ckpt = torch.load(other / "model.pt", weights_only=True)
    ckpt["max_len"] += 1
    torch.save(ckpt, other / "model.pt")
    assert_one_line_error(
        cli("export-classifier", str(smoke_run), str(other), "--out", str(tmp_path)),
        "max_len differs",
        "ensemble members must share it",
    )
    assert_one_line_error(
        cli("export-classifier", str(smoke_run), "--temperature", "hot", "--out", str(tmp_path)),
        "--temperature must be a number > 0 or 'fit'",
    )


@pytest.mark.slow
def test_resume_a_finished_run_keeps_its_history(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    assert main(["train-classifier", "--run-dir", str(run), "--no-progress"]) == 0
    assert len(read_json(run / "metrics.json")["history"]) == 5


def test_errors_missing_and_empty_data_dir(tmp_path):
    assert_one_line_error(cli("train-classifier", "--data-dir", str(tmp_path / "nope")), "data directory not found")
    assert_one_line_error(cli("train-classifier", "--data-dir", str(tmp_path)), "no topic folders")


def test_error_unknown_label_folder(tmp_path):
    (tmp_path / "weather").mkdir()
    (tmp_path / "weather" / "001.txt").write_text("Rain\n\nIt rained.")
    assert_one_line_error(cli("train-classifier", "--data-dir", str(tmp_path)), "unknown label folder", "weather")


def test_errors_bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("body,topic\nhello,1\n")
    assert_one_line_error(cli("train-classifier", "--csv", str(bad)), "missing column", "text")
    bad.write_text("text,label\nhello,9\n")
    assert_one_line_error(cli("train-classifier", "--csv", str(bad)), "unknown label '9'")


def test_error_too_few_articles_for_a_split(tmp_path):
    csv = tmp_path / "tiny.csv"
    csv.write_text("text,label\n" + "".join(f"article number {i},{i % 5}\n" for i in range(10)))
    assert_one_line_error(cli("train-classifier", "--csv", str(csv)), "split empty")


def test_error_bad_model_flag():
    assert_one_line_error(cli("train-classifier", "--cell", "transformer"), "cell must be one of")


def test_error_tampered_model_file(exported, tmp_path):
    models = tmp_path / "classifier"
    shutil.copytree(exported / "classifier", models)
    with open(models / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert_one_line_error(cli("predict-classifier", "--models", str(models), "some text"), "model.onnx", "sha256")
    assert_one_line_error(cli("evaluate-classifier", "--models", str(tmp_path)), "does not match the manifest")


def test_every_classifier_command_has_help():
    for cmd in (
        "train-classifier",
        "search-classifier",
        "cv-classifier",
        "export-classifier",
        "evaluate-classifier",
        "analyze-classifier",
        "predict-classifier",
    ):
        proc = cli(cmd, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout, cmd


@pytest.mark.slow
def test_train_from_the_kaggle_csv(bbc_dir, tmp_path):
    import csv

    from training.classifier import data as bbc

    rows = [(a.text, a.label) for a in bbc.first_per_class(bbc.read_folder(bbc_dir), 12)]
    path = tmp_path / "bbc-text.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    run = tmp_path / "run"
    assert main(["train-classifier", "--csv", str(path), "--run-dir", str(run), *SMOKE[2:]]) == 0
    split = read_json(run / "split.json")
    assert [len(split[k]) for k in ("train", "val", "test")] == [50, 5, 5]
    assert all(i.startswith("row") for i in split["test"])
    assert read_json(run / "metrics.json")["test"]["n"] == 5


@pytest.mark.parametrize("cmd", ["train-classifier", "search-classifier", "cv-classifier"])
def test_flag_defaults_are_the_config_dataclasses_defaults(cmd):
    """Every ClassifierConfig and TrainConfig field is a flag whose default is the field's (nothing restated)."""
    import dataclasses

    from training.__main__ import build_parser
    from training.classifier.cli import DATA_DEFAULTS, MODEL_SKIP, config_from_args
    from training.classifier.model import ClassifierConfig
    from training.classifier.train import TrainConfig

    args = build_parser(cmd).parse_args([cmd])
    checked = 0
    for cls in (ClassifierConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name in MODEL_SKIP:
                assert not hasattr(args, f.name), f.name  # vocab_size, num_classes come from the data
                continue
            assert getattr(args, f.name) == f.default and type(getattr(args, f.name)) is type(f.default), f.name
            checked += 1
    assert checked == len(dataclasses.fields(ClassifierConfig)) - 2 + len(dataclasses.fields(TrainConfig)) == 28
    assert (args.dropout, args.embed_dropout, args.hidden_size, args.bidirectional, args.epochs) == (
        0.4,
        0.4,
        96,
        True,
        20,
    )
    cfg = config_from_args(args)
    assert ClassifierConfig(vocab_size=7, num_classes=5, **cfg["model"]) == ClassifierConfig(
        vocab_size=7, num_classes=5
    )
    assert TrainConfig.from_dict(cfg["train"]) == TrainConfig()
    assert {k: cfg["data"][k] for k in DATA_DEFAULTS} == DATA_DEFAULTS


def test_the_pipeline_lives_in_its_own_module_and_the_commands_share_it():
    """train-, search- and cv-classifier call the one pipeline; cli.py holds the flags and the command."""
    import training.classifier.cli as cli_module
    import training.classifier.pipeline as pipeline

    for name in (
        "fit",
        "run_training",
        "load_split",
        "encode_splits",
        "vocab_texts",
        "initial_embeddings",
        "checkpoint",
    ):
        assert callable(getattr(pipeline, name)), name
        assert name not in vars(cli_module) or getattr(cli_module, name) is getattr(pipeline, name), name
    assert cli_module.run_training is pipeline.run_training and cli_module.VOCAB_FROM is pipeline.VOCAB_FROM
    for name in ("add_config_flags", "add_run_flags", "add_arguments", "config_from_args", "validate", "main"):
        assert callable(getattr(cli_module, name)), name
