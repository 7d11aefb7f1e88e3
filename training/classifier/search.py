"""search-classifier: Optuna TPE search over the classifier, pruned from per-epoch validation reports.

Trials call the same ``train()`` as train-classifier, with a ``PruningCallback`` as its epoch hook. The
objective is the best validation cross-entropy without label smoothing (comparable across trials).
``--storage`` is a local SQLite file by default, so an interrupted study resumes where it stopped; any
RDB URL (e.g. postgresql://...) lets several workers on several machines join one study. At the end the
best trial's config is retrained in full and evaluated once on the test split.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

import torch

from training.common.cli import UserError, make_run_dir
from training.common.devices import pick_device
from training.common.study import DEFAULT_STORAGE, PruningCallback, create_study, parse_fixed, write_study

log = logging.getLogger(__name__)


def suggest(trial) -> dict:
    """The classifier search space -> {"data": ..., "model": ..., "train": ...} overrides."""
    return {
        "data": {
            "max_len": trial.suggest_categorical("max_len", [300, 500, 750, 1000]),
            "embed_init": trial.suggest_categorical("embed_init", ["lsa", "random"]),
        },
        "model": {
            "embed_dim": trial.suggest_categorical("embed_dim", [64, 96, 128, 192]),
            "hidden_size": trial.suggest_categorical("hidden_size", [64, 96, 128, 192]),
            "num_layers": trial.suggest_int("num_layers", 1, 2),
            "bidirectional": trial.suggest_categorical("bidirectional", [True, False]),
            "cell": trial.suggest_categorical("cell", ["lstm", "gru", "rnn"]),
            "pooling": trial.suggest_categorical("pooling", ["max", "mean", "last", "max+mean", "last+max+mean"]),
            "word_dropout": trial.suggest_float("word_dropout", 0.0, 0.3),
            "embed_dropout": trial.suggest_float("embed_dropout", 0.0, 0.5),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        },
        "train": {
            "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
            "lr": trial.suggest_float("lr", 5e-4, 5e-3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-1, log=True),
            "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        },
    }


def base_params(cfg: dict) -> dict:
    """The search-space parameters of a config, e.g. to enqueue it as a study's first trial."""
    import optuna

    flat = {**cfg["data"], **cfg["model"], **cfg["train"]}
    space = suggest(optuna.trial.FixedTrial(flat))
    return {k: v for part in space.values() for k, v in part.items()}


def merged(base: dict, over: dict) -> dict:
    return {k: {**base[k], **over.get(k, {})} for k in base}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.classifier.cli import add_config_flags, add_run_flags

    add_config_flags(parser)  # the fixed part of every trial (data, split, epochs, patience, ...)
    add_run_flags(parser)
    g = parser.add_argument_group("search")
    g.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLite file or any RDB URL (postgresql://...)")
    g.add_argument("--study-name", default="classifier", help="trials of the same name in a storage are one study")
    g.add_argument("--n-trials", type=int, default=20, help="trials this worker runs")
    g.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    g.add_argument("--pruner", default="median", help="median | hyperband | none")
    g.add_argument("--trial-epochs", type=int, default=8, help="epochs per trial (the final retrain uses --epochs)")
    g.add_argument("--train-fraction", type=float, default=1.0, help="share of the training split trials train on")
    g.add_argument(
        "--fix",
        action="append",
        metavar="NAME=VALUE",
        help="pin a search parameter, e.g. --fix cell=rnn --fix bidirectional=false (repeatable)",
    )
    g.add_argument("--no-retrain", action="store_true", help="only search (extra workers): no final retrain")
    g.add_argument("--out", default="runs", help="folder that receives the search run folder")


def objective_fn(base: dict, prepared, args, device):
    import random

    from training.classifier.pipeline import fit

    articles, split, _ = prepared
    if args.train_fraction < 1:  # a fixed random share of the training split, the same for every trial
        keep = sorted(random.Random(0).sample(split["train"], max(1, int(len(split["train"]) * args.train_fraction))))
        split = {**split, "train": keep}

    def objective(trial) -> float:
        cfg = merged(base, suggest(trial))
        cfg["train"]["epochs"] = args.trial_epochs
        _, history, *_, seconds = fit(
            cfg, articles, split, device, on_epoch_end=PruningCallback(trial, "val_nll"), progress=False
        )
        best = min(history, key=lambda h: h["val_nll"])
        trial.set_user_attr("val_acc", best["val_acc"])
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return best["val_nll"]

    return objective


def main(args) -> int:
    import optuna

    from training.classifier.cli import config_from_args, validate
    from training.classifier.pipeline import load_split, run_training

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    base = config_from_args(args)
    validate(base)
    prepared = load_split(base["data"])
    fixed = parse_fixed(args.fix)
    unknown = sorted(set(fixed) - set(base_params(base)))
    if unknown:
        raise UserError(f"--fix: {unknown} not in the search space {sorted(base_params(base))}")
    study = create_study(
        args.study_name, args.storage, "minimize", args.pruner, max_resource=args.trial_epochs, fixed=fixed
    )
    if not study.trials:  # a new study starts from the command-line config, so TPE has a sound anchor
        study.enqueue_trial({**base_params(base), **fixed}, skip_if_exists=True)
    study.optimize(
        objective_fn(base, prepared, args, device), n_trials=args.n_trials, timeout=args.timeout, gc_after_trial=True
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError(f"study {args.study_name!r} has no completed trial yet")
    run_dir = make_run_dir(args.out, f"search-{args.study_name}")
    write_study(study, run_dir)
    log.info("best trial %d: val_nll %.4f %s", study.best_trial.number, study.best_value, study.best_params)
    if args.no_retrain:
        print(f"best trial {study.best_trial.number}: {study.best_params}  run: {run_dir}")
        return 0
    # retrain the best config on the full training split with the full epoch budget; test once
    best = merged(base, suggest(optuna.trial.FixedTrial(study.best_params)))
    (run_dir / "best").mkdir()
    m = run_training(best, run_dir / "best", device, progress=not args.no_progress, prepared=prepared)
    print(
        f"best trial {study.best_trial.number}: {study.best_params}\n"
        f"retrained: test accuracy {m['test']['accuracy']:.4f}  macro-F1 {m['test']['macro_f1']:.4f}  "
        f"(TF-IDF+SVM {m['baseline_tfidf_svm']['accuracy']:.4f})  run: {run_dir}"
    )
    return 0
