"""search-classifier: Optuna TPE search over the classifier, pruned from per-epoch validation reports.

Trials call the same ``train()`` as train-classifier, with a ``PruningCallback`` as its epoch hook. The
objective is the best validation cross-entropy without label smoothing (comparable across trials).
``--storage`` is a local SQLite file by default, so an interrupted study resumes where it stopped; any
RDB URL (e.g. postgresql://...) lets several workers on several machines join one study. At the end the
best trial's config is retrained in full and evaluated once on the test split.

``create_study`` and ``PruningCallback`` are model-agnostic; the generator search reuses them.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from pathlib import Path

import torch

from training.common import UserError, make_run_dir, pick_device, write_json

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "runs/optuna.db"


def storage_url(storage: str) -> str:
    """A path becomes a SQLite URL (its folder is created); a URL is used as it is."""
    if "://" in storage:
        return storage
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(storage).resolve()}"


def make_pruner(name: str, max_resource: int = 20):
    import optuna

    if name == "median":  # prune below the median of earlier trials at the same epoch, after 2 epochs
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r} (median | hyperband | none)")


def create_study(name: str, storage: str = DEFAULT_STORAGE, direction: str = "minimize",
                 pruner: str = "median", seed: int | None = None, max_resource: int = 20):
    """Create or load (resume/join) a TPE study. SQLite gets a long lock timeout so workers can share it."""
    import optuna

    url = storage_url(storage)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as exc:  # bad URL, missing driver, unreachable server
        raise UserError(f"cannot open Optuna storage {storage!r}: {exc}") from None
    return optuna.create_study(study_name=name, storage=rdb, direction=direction, load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True),
                               pruner=make_pruner(pruner, max_resource))


class PruningCallback:
    """An ``on_epoch_end(epoch, metrics)`` hook: reports ``metrics[metric]`` to the trial at step
    ``epoch`` and raises ``optuna.TrialPruned`` when the study's pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def __call__(self, epoch: int, metrics: dict) -> None:
        import optuna

        self.trial.report(float(metrics[self.metric]), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: {self.metric}={metrics[self.metric]:.4f}")


def suggest(trial) -> dict:
    """The classifier search space -> {"data": ..., "model": ..., "train": ...} overrides."""
    return {
        "data": {"max_len": trial.suggest_categorical("max_len", [300, 500, 750, 1000]),
                 "embed_init": trial.suggest_categorical("embed_init", ["lsa", "random"])},
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
    from training.cli_classifier import add_config_flags, add_run_flags

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
    g.add_argument("--no-retrain", action="store_true", help="only search (extra workers): no final retrain")
    g.add_argument("--out", default="runs", help="folder that receives the search run folder")


def objective_fn(base: dict, prepared, args, device):
    import random

    from training.bbc import LABELS
    from training.classifier import ClassifierConfig
    from training.cli_classifier import encode_splits, initial_embeddings
    from training.train_classifier import TrainConfig, train

    articles, split, _ = prepared
    if args.train_fraction < 1:  # a fixed random share of the training split, the same for every trial
        keep = sorted(random.Random(0).sample(split["train"], max(1, int(len(split["train"]) * args.train_fraction))))
        split = {**split, "train": keep}

    def objective(trial) -> float:
        cfg = merged(base, suggest(trial))
        cfg["train"]["epochs"] = args.trial_epochs
        vocab, data = encode_splits(articles, split, cfg["data"])
        model_cfg = ClassifierConfig(vocab_size=len(vocab), num_classes=len(LABELS), **cfg["model"])
        t0 = time.time()
        init = initial_embeddings(cfg, [articles[i].text for i in split["train"]], vocab)
        _, history = train(model_cfg, TrainConfig.from_dict(cfg["train"]), data, embeddings=init,
                           on_epoch_end=PruningCallback(trial, "val_nll"), device=device, progress=False)
        best = min(history, key=lambda h: h["val_nll"])
        trial.set_user_attr("val_acc", best["val_acc"])
        trial.set_user_attr("seconds", time.time() - t0)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return best["val_nll"]

    return objective


def main(args) -> int:
    import optuna

    from training.cli_classifier import config_from_args, load_split, run_training, validate

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    base = config_from_args(args)
    validate(base)
    prepared = load_split(base["data"])
    study = create_study(args.study_name, args.storage, "minimize", args.pruner, max_resource=args.trial_epochs)
    if not study.trials:  # a new study starts from the command-line config, so TPE has a sound anchor
        study.enqueue_trial(base_params(base), skip_if_exists=True)
    study.optimize(objective_fn(base, prepared, args, device), n_trials=args.n_trials, timeout=args.timeout,
                   gc_after_trial=True)
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
    print(f"best trial {study.best_trial.number}: {study.best_params}\n"
          f"retrained: test accuracy {m['test']['accuracy']:.4f}  macro-F1 {m['test']['macro_f1']:.4f}  "
          f"(TF-IDF+SVM {m['baseline_tfidf_svm']['accuracy']:.4f})  run: {run_dir}")
    return 0


def write_study(study, run_dir: Path) -> None:
    """study.json (every trial) plus history.png and importance.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "user_attrs": t.user_attrs, "epochs_reported": len(t.intermediate_values)} for t in study.trials]
    write_json(run_dir / "study.json", {"study_name": study.study_name, "best_trial": study.best_trial.number,
                                        "best_value": study.best_value, "best_params": study.best_params,
                                        "trials": trials})
    for name, plot in (("history", ovm.plot_optimization_history), ("importance", ovm.plot_param_importances)):
        try:
            ax = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importance needs two completed trials
            log.warning("no %s plot: %s", name, exc)
            continue
        fig = ax.figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(run_dir / f"{name}.png", dpi=120)
        plt.close(fig)
