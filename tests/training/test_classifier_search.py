"""Optuna search helpers, and two search workers sharing one local study."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from training.common.cli import UserError
from training.common.files import read_json
from training.common.study import PruningCallback, create_study, storage_url

ROOT = Path(__file__).resolve().parents[1]


def test_pruning_callback_reports_and_prunes():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    hook = PruningCallback(good, "val_nll")
    for epoch, v in enumerate([1.0, 0.5, 0.3], start=1):
        hook(epoch, {"val_nll": v, "val_acc": 0.9})
    study.tell(good, 0.3)
    assert study.trials[0].intermediate_values == {1: 1.0, 2: 0.5, 3: 0.3}
    bad = study.ask()
    hook = PruningCallback(bad, "val_nll")
    hook(1, {"val_nll": 0.9})  # better than the median at epoch 1: goes on
    with pytest.raises(optuna.TrialPruned):
        hook(2, {"val_nll": 2.0})  # far worse than 0.5 at epoch 2


def test_local_study_resumes(tmp_path):
    db = tmp_path / "sub" / "study.db"
    assert storage_url(str(db)) == f"sqlite:///{db.resolve()}"
    assert storage_url("postgresql://u@h/db") == "postgresql://u@h/db"
    study = create_study("s", str(db), "minimize", "median", seed=0)
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=3)
    again = create_study("s", str(db), "minimize", "hyperband")
    assert len(again.trials) == 3 and again.best_value == study.best_value
    with pytest.raises(UserError, match="unknown pruner"):
        create_study("s", str(db), pruner="bogus")
    with pytest.raises(UserError, match="cannot open Optuna storage"):
        create_study("s", "nosuchdialect://x/y")


@pytest.mark.slow
def test_two_workers_share_one_study_and_the_best_is_retrained(bbc_dir, tmp_path):
    db = tmp_path / "optuna.db"
    common = [
        sys.executable,
        "-m",
        "training",
        "search-classifier",
        "--data-dir",
        str(bbc_dir),
        "--limit",
        "6",
        "--storage",
        str(db),
        "--study-name",
        "shared",
        "--n-trials",
        "2",
        "--trial-epochs",
        "1",
        "--epochs",
        "1",
        "--hidden-size",
        "64",
        "--no-progress",
        "--out",
        str(tmp_path / "runs"),
    ]
    workers = []
    for extra in (["--no-retrain"], []):
        workers.append(
            subprocess.Popen(common + extra, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
        time.sleep(3)  # let the first worker create the SQLite tables
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage_url(str(db)))
    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 4
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes wrote trials
    assert study.trials[0].params["hidden_size"] == 64  # the CLI config is the first trial
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    retrained = [r for r in runs if (r / "best").is_dir()]
    assert len(retrained) == 1
    run = retrained[0]
    doc = read_json(run / "study.json")
    assert len(doc["trials"]) >= 2 and doc["best_value"] == min(
        t["value"] for t in doc["trials"] if t["state"] == "COMPLETE" and t["value"] is not None
    )
    assert (run / "history.png").stat().st_size > 0 and (run / "importance.png").stat().st_size > 0
    best = read_json(run / "best" / "metrics.json")
    assert best["test"]["n"] == 5 and (run / "best" / "model.pt").is_file()
