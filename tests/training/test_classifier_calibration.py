"""Calibration of the exported classifier, the CV figures its manifest carries, recalibrate-classifier and
cost-classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.classifier import ClassifierRuntime
from runtime.manifest import load_manifest
from tests.conftest import training_cli as cli
from training.classifier import data as bbc
from training.classifier.calibration import ece
from training.classifier.export import cv_figures
from training.common.cli import UserError


def write_cv(path, n=100):
    fold = lambda acc: {"accuracy": acc}  # noqa: E731
    doc = {
        "folds": 2,
        "n": n,
        "models": {
            "svm": {"accuracy_mean": 0.95, "accuracy_std": 0.01, "pooled_accuracy": 0.95, "folds": [fold(0.94)]},
            "wide": {
                "accuracy_mean": 0.97,
                "accuracy_std": 0.005,
                "macro_f1_mean": 0.969,
                "pooled_accuracy": 0.97,
                "ece_mean": 0.08,
                "ece_scaled_mean": 0.02,
                "folds": [fold(0.97)],
            },
        },
        "paired_accuracy": {"wide - svm": {"mean": 0.02, "ci95": [0.005, 0.035], "only_a_right": 4, "only_b_right": 2}},
    }
    path.write_text(json.dumps(doc))
    return path


def test_cv_figures_name_the_model_the_svm_and_the_interval(tmp_path):
    path = write_cv(tmp_path / "cv.json")
    cv = cv_figures(f"{path}:wide")
    assert cv["accuracy_mean"] == 0.97 and cv["svm_accuracy_mean"] == 0.95
    assert cv["errors"] == 3 and cv["svm_errors"] == 5
    assert cv["minus_svm"] == 0.02 and cv["minus_svm_ci95"] == [0.005, 0.035]
    assert cv["discordant"] == {"only_model_right": 4, "only_svm_right": 2}
    assert cv["ece"] == 0.08 and cv["ece_scaled"] == 0.02 and cv["folds"] == 2
    doc = json.loads(path.read_text())
    doc["models"]["wide"].update(oof_ece=0.07, oof_ece_scaled=0.015)  # pooled over all articles: preferred
    path.write_text(json.dumps(doc))
    assert (cv_figures(f"{path}:wide")["ece"], cv_figures(f"{path}:wide")["ece_scaled"]) == (0.07, 0.015)
    with pytest.raises(UserError, match="has no model 'lstm'"):
        cv_figures(f"{path}:lstm")
    with pytest.raises(UserError, match="CV_JSON:NAME"):
        cv_figures(str(tmp_path / "missing.json") + ":wide")


@pytest.fixture(scope="module")
def committed(exported):
    return load_manifest(exported / "classifier", "classifier")


def test_committed_model_is_calibrated_and_carries_its_cv_figures(committed):
    cal, cv = committed["calibration"], committed["cv"]
    assert 0.3 < cal["temperature"] < 1.0  # label smoothing made it underconfident: T < 1 sharpens
    assert cal["test_ece"] < cal["test_ece_before"] and cal["test_ece"] <= 0.03
    assert cal["cv_ece"] <= 0.03 < cal["cv_ece_before"]  # out-of-fold, the target
    assert cv["folds"] == 5 and cv["articles"] == 1989
    assert 0.95 < cv["accuracy_mean"] < 1 and 0.95 < cv["svm_accuracy_mean"] < 1
    lo, hi = cv["minus_svm_ci95"]
    assert lo <= cv["minus_svm"] <= hi
    assert committed["ensemble"]["temperature"] == cal["temperature"]  # the graph divides by the same T


@pytest.mark.slow
def test_recalibrating_the_committed_model_fits_the_same_temperature(bbc_dir, exported, committed, tmp_path):
    folder = str(exported / "classifier")
    proc = cli("recalibrate-classifier", folder, "--data-dir", str(bbc_dir), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = load_manifest(tmp_path / "classifier", "classifier")
    assert again["calibration"]["temperature"] == pytest.approx(committed["calibration"]["temperature"], rel=1e-6)
    assert again["config"] == committed["config"] and again["vocab"] == committed["vocab"]
    ids = set(committed["split"]["test"])
    test = [a for a in bbc.read_corpus(bbc_dir) if a.id in ids]
    y = np.array([a.label for a in test])
    p_old = ClassifierRuntime(exported / "classifier", provider="cpu", precision="fp32").predict_proba(
        [a.text for a in test]
    )
    p_new = ClassifierRuntime(tmp_path / "classifier", provider="cpu", precision="fp32").predict_proba(
        [a.text for a in test]
    )
    assert np.abs(p_new - p_old).max() < 1e-4  # same weights, same T: the same probabilities
    assert ece(p_new, y) == pytest.approx(committed["calibration"]["test_ece"], abs=1e-4)


@pytest.mark.slow
def test_regraph_keeps_every_recorded_figure(bbc_dir, exported, committed, tmp_path):
    from training.classifier.recalibrate import MEASURED

    folder = str(exported / "classifier")
    proc = cli("recalibrate-classifier", folder, "--regraph", "--data-dir", str(bbc_dir), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = load_manifest(tmp_path / "classifier", "classifier")  # verifies the rewritten sha256s
    assert list(again) == list(committed)
    assert {k: v for k, v in again.items() if k not in MEASURED} == {
        k: v for k, v in committed.items() if k not in MEASURED
    }
    assert max(again["parity"]["max_abs_diff"].values()) < 1e-4 and again["precisions"]["int8"]["accepted"]
    proc = cli("recalibrate-classifier", folder, "--regraph", "--cv", "x.json:m", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--regraph keeps the manifest's cv figures" in proc.stderr


def test_recalibrate_refuses_a_split_that_is_not_the_models(bbc_dir, exported, tmp_path):
    proc = cli(
        "recalibrate-classifier",
        str(exported / "classifier"),
        "--data-dir",
        str(bbc_dir),
        "--split-seed",
        "3",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 2 and "is not the model's" in proc.stderr
    assert not (tmp_path / "classifier").exists()


@pytest.mark.slow
def test_cost_command_times_candidates_beside_the_committed_model(bbc_dir, exported):
    proc = cli("cost-classifier", "--only", "bilstm-small", "--rounds", "1", "--data-dir", str(bbc_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(doc["cost"]) == ["bilstm-small", "committed"] and doc["articles"] == 199
    assert doc["cost"]["committed"]["batch4_vs_committed"] == 1.0
    assert 0 < doc["cost"]["bilstm-small"]["ms_per_article_batch4"] < 100
