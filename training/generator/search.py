"""``search-generator``: Optuna TPE search over the char model, each trial a short time-budgeted run.

Uses the study and pruning machinery of training/common/study.py (SQLite or any RDB storage, so workers can
join and an interrupted study resumes). Each trial calls the same ``train()`` as train-generator with the
pruning callback as its ``on_eval`` hook; evaluations happen every ``--eval-chars`` characters, so trials
of different batch/BPTT shapes are compared at the same amount of text read. The objective is the best
validation bits per character. No final retrain: the best flags are printed for train-generator.
"""

from __future__ import annotations

import logging
import os
import socket

from training.common.cli import UserError, data_path, make_run_dir
from training.common.files import read_text
from training.common.study import DEFAULT_STORAGE
from training.generator.cli import CANON

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--text", help=f"training text (default $DATA_DIR/{CANON})")
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--train-chars", type=int, default=1_000_000, help="trials train on the first N characters")
    p.add_argument("--trial-minutes", type=float, default=5.0, help="time budget of each trial")
    p.add_argument("--eval-chars", type=int, default=200_000, help="characters between validations")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLite file or any RDB URL")
    p.add_argument("--study-name", default="generator")
    p.add_argument("--n-trials", type=int, default=10, help="trials this worker runs")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--pruner", default="median", help="median | hyperband | none")
    p.add_argument("--out", default="runs")
    p.add_argument("--seed", type=int, default=0)


def suggest(trial) -> dict:
    """The search space: model shape, regularisation, optimiser and BPTT shape."""
    return {
        "model": {
            "hidden_size": trial.suggest_categorical("hidden_size", [256, 384, 512]),
            "embed_dim": trial.suggest_categorical("embed_dim", [32, 64, 128]),
            "num_layers": trial.suggest_int("num_layers", 1, 3),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        },
        "train": {
            "lr": trial.suggest_float("lr", 5e-4, 5e-3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-3, 0.2, log=True),
            "bptt": trial.suggest_categorical("bptt", [64, 128, 200]),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        },
    }


def main(args) -> int:
    import optuna
    import torch

    from training.common.study import PruningCallback, create_study, write_study
    from training.generator.data import CharVocab, split_text
    from training.generator.model import CharConfig
    from training.generator.train import TrainConfig, train

    path = data_path(args.text, CANON)
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    torch.set_num_threads(args.threads)
    train_text, val_text = split_text(read_text(path), args.val_frac)
    train_text = train_text[: args.train_chars]
    vocab = CharVocab.build(train_text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    run_dir = make_run_dir(args.out, f"search-{args.study_name}")

    def objective(trial) -> float:
        space = suggest(trial)
        cfg = TrainConfig(
            **space["train"],
            time_budget_min=args.trial_minutes,
            epochs=1000.0,
            bf16=args.bf16,
            eval_every=max(1, args.eval_chars // (space["train"]["batch_size"] * space["train"]["bptt"])),
            sample_every=0,
            patience=1000,
            seed=args.seed,
        )
        prune = PruningCallback(trial, "val_bpc")
        evals = []

        def on_eval(step: int, metrics: dict) -> None:  # report by evaluation index: equal text read
            evals.append(step)
            prune(len(evals), metrics)

        result = train(
            CharConfig(vocab_size=len(vocab), **space["model"]),
            cfg,
            train_ids,
            val_ids,
            vocab,
            run_dir / f"trial-{trial.number}",
            on_eval=on_eval,
            progress=False,
        )
        trial.set_user_attr("steps", result["steps"])
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return result["best_val_bpc"]

    study = create_study(args.study_name, args.storage, "minimize", args.pruner, seed=args.seed)
    study.optimize(objective, n_trials=args.n_trials, timeout=args.timeout, gc_after_trial=True)
    if not [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]:
        raise UserError(f"study {args.study_name!r} has no completed trial yet")
    write_study(study, run_dir)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in study.best_params.items())
    print(
        f"best trial {study.best_trial.number}: {study.best_value:.4f} bits/char\n"
        f"train it in full: python -m training train-generator {flags}  (study: {run_dir})"
    )
    return 0
