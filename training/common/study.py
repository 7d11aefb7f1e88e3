"""Model-agnostic Optuna helpers: resumable studies on SQLite or any RDB, a pruning epoch hook, study reports.

The training loops know nothing of Optuna: a search passes ``PruningCallback`` as ``train()``'s
``on_epoch_end`` hook, the same hook the plain command leaves empty.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from training.common.cli import UserError
from training.common.files import write_json

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


def parse_fixed(items: list[str] | None) -> dict:
    """``["cell=rnn", "bidirectional=false"]`` -> {"cell": "rnn", "bidirectional": False} (JSON values, else text)."""
    import json

    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--fix expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value.lower() if value in ("True", "False") else value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def _is_schema_race(exc: Exception) -> bool:
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    return isinstance(exc, (IntegrityError, ProgrammingError)) and "already exists" in str(exc)


def create_study(
    name: str,
    storage: str = DEFAULT_STORAGE,
    direction: str = "minimize",
    pruner: str = "median",
    seed: int | None = None,
    max_resource: int = 20,
    fixed: dict | None = None,
):
    """Create or load (resume/join) a TPE study. SQLite gets a long lock timeout so workers can share it.
    ``fixed`` pins some search parameters (PartialFixedSampler): TPE searches the rest."""
    import optuna

    url = storage_url(storage)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(4):
        try:
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            break
        except Exception as exc:  # bad URL, missing driver, unreachable server, or a schema race
            # workers started together on an empty database race to create Optuna's tables (PostgreSQL:
            # "duplicate key ... pg_type"); the loser finds them made on the next try
            if attempt == 3 or "://" not in storage or not _is_schema_race(exc):
                raise UserError(f"cannot open Optuna storage {storage!r}: {exc}") from None
            time.sleep(0.5 * (attempt + 1))
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if fixed:
        sampler = optuna.samplers.PartialFixedSampler(fixed, sampler)
    return optuna.create_study(
        study_name=name,
        storage=rdb,
        direction=direction,
        load_if_exists=True,
        sampler=sampler,
        pruner=make_pruner(pruner, max_resource),
    )


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


def write_study(study, run_dir: Path) -> None:
    """study.json (every trial) plus history.png and importance.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "user_attrs": t.user_attrs,
            "epochs_reported": len(t.intermediate_values),
        }
        for t in study.trials
    ]
    write_json(
        run_dir / "study.json",
        {
            "study_name": study.study_name,
            "best_trial": study.best_trial.number,
            "best_value": study.best_value,
            "best_params": study.best_params,
            "trials": trials,
        },
    )
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
