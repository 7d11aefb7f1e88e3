"""cv-classifier: stratified k-fold cross-validation of the classifier candidates and the SVM on identical folds.

Folds keep every duplicate group whole (``data.kfold_grouped``). In fold k the other folds are split into
train and an inner validation set (early stopping, temperature fitting) the same way train-classifier
splits, and fold k is the test set, so every article is tested exactly once by every model. Each candidate
is the train-classifier config with overrides (``CANDIDATES`` or ``--candidates FILE.json``); one with
``"seeds": n`` is trained n times per fold and also scored as the ensemble of its n members (probabilities
averaged; ``"ensembles": [m, ...]`` scores the first m members instead). With ``"stack": true`` the single
model and each ensemble are also scored stacked with the SVM (``<name>+svm``): softmax(a log p + b svm), a and b
fitted on the inner validation set by an SVM trained on the rest of the other folds. With ``"vary_val": true``
member s also holds out its own validation part of the other folds (``data.val_seed = s``; give it ``"vocab_from":
"train+val"`` so members share one vocabulary), and the ensemble's temperature is fitted on the other folds' test
logits. The TF-IDF + LinearSVC baseline is scored on the same folds.

Each (candidate, fold, seed) result is saved under ``units/`` as it finishes, so ``--run-dir`` resumes an
interrupted run. Reported: mean ± std over folds of accuracy and macro-F1, expected calibration error before
and after temperature scaling, paired per-fold differences with a t confidence interval, and the articles
on which two models disagree. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from training.classifier import data as bbc
from training.classifier.calibration import ece, ensemble_logits, fit_temperature, softmax
from training.common.cli import UserError, data_path, make_run_dir
from training.common.files import read_json, write_json

log = logging.getLogger(__name__)

# overrides of the train-classifier defaults (the committed BiLSTM). bilstm-small is the ensemble candidate (0.38x the
# LSTM multiply-adds of bilstm each; served, three cost about 2x one bilstm: docs/classifier.md). lstm and rnn are the
# course's baselines at the best trials of their own short searches (search-classifier --fix cell=... --fix
# bidirectional=false, 10 trials each; docs/classifier.md, "Cross-validation").
CANDIDATES: dict[str, dict] = {
    "bilstm": {},
    "bilstm-small": {"seeds": 3, "model": {"embed_dim": 64, "hidden_size": 64}},
    "lstm": {
        "data": {"max_len": 1000, "embed_init": "lsa"},
        "model": {
            "embed_dim": 64,
            "hidden_size": 64,
            "num_layers": 1,
            "bidirectional": False,
            "cell": "lstm",
            "pooling": "max",
            "word_dropout": 0.011505159043442447,
            "embed_dropout": 0.23864251421366334,
            "dropout": 0.09730842255417421,
        },
        "train": {
            "batch_size": 16,
            "lr": 0.0031712793526136604,
            "weight_decay": 0.0007446898165305927,
            "label_smoothing": 0.11784297164914553,
        },
    },
    "rnn": {
        "data": {"max_len": 750, "embed_init": "lsa"},
        "model": {
            "embed_dim": 96,
            "hidden_size": 192,
            "num_layers": 1,
            "bidirectional": False,
            "cell": "rnn",
            "pooling": "max",
            "word_dropout": 0.2481560871881376,
            "embed_dropout": 0.03993413490862663,
            "dropout": 0.2822690138551827,
        },
        "train": {
            "batch_size": 16,
            "lr": 0.0005600827786231419,
            "weight_decay": 0.01283704559575677,
            "label_smoothing": 0.018906785024453667,
        },
    },
}
COMPARE_WITH = "svm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.classifier.cli import add_config_flags, add_run_flags

    add_config_flags(parser)  # the base config every candidate overrides
    add_run_flags(parser)
    g = parser.add_argument_group("cross-validation")
    g.add_argument("--folds", type=int, default=5, help="k of the stratified grouped k-fold")
    g.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    g.add_argument(
        "--candidates",
        help="JSON file {name: {data/model/train overrides, seeds}} instead of the "
        "built-in bilstm, bilstm-small, lstm, rnn",
    )
    g.add_argument("--only", help="comma-separated candidate names to run (svm always runs)")
    g.add_argument("--jobs", type=int, default=1, help="training processes in parallel (each --threads threads)")
    g.add_argument("--out", default="runs", help="folder that receives the run folder")
    g.add_argument("--run-dir", help="use (or resume) this run folder")


# ---------------------------------------------------------------- folds and units


def fold_splits(
    labels: list[int], groups: list[int], k: int, seed: int, val_frac: float, val_seed: int = -1
) -> list[dict]:
    """Per fold {"train", "val", "test"} article indices; val is carved out of the other folds, grouped.

    val_seed -1 draws fold f's val with seed ``seed + f``; val_seed v >= 0 with ``seed + f + 1000 (v + 1)``, so
    members of a ``vary_val`` candidate each hold out another part of the same four folds."""
    fold = bbc.kfold_grouped(labels, groups, k, seed)
    out = []
    for f in range(k):
        outer = {
            "train": [i for i in range(len(labels)) if fold[i] != f],
            "val": [],
            "test": [i for i in range(len(labels)) if fold[i] == f],
        }
        inner_seed = seed + f + (1000 * (val_seed + 1) if val_seed >= 0 else 0)
        out.append(bbc.redraw_val(outer, labels, groups, val_frac, inner_seed))
    return out


def resolve(base: dict, spec: dict) -> dict:
    return {part: {**base[part], **spec.get(part, {})} for part in ("data", "model", "train")}


def run_unit(cfg: dict, texts: list[str], labels: list[int], split: dict, threads: int, device: str) -> dict:
    """Train one candidate member on one fold -> val and test logits (lists), epochs, seconds."""
    import torch

    from training.classifier.pipeline import fit
    from training.classifier.train import predict

    torch.set_num_threads(threads)
    articles = [bbc.Article(str(i), t, y) for i, (t, y) in enumerate(zip(texts, labels))]
    model, history, _, data, seconds = fit(cfg, articles, split, device, progress=False)
    return {
        "val_logits": predict(model, data["val"], device=device).tolist(),
        "test_logits": predict(model, data["test"], device=device).tolist(),
        "epochs": len(history),
        "seconds": seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def ensemble_sizes(spec: dict) -> list[int]:
    """The ensembles a candidate is scored as: its first m members for each m in "ensembles" (default: all)."""
    n = spec.get("seeds", 1)
    sizes = spec.get("ensembles", [n] if n > 1 else [])
    bad = [m for m in sizes if not 2 <= m <= n]
    if bad:
        raise UserError(f"ensemble sizes must lie in 2..seeds={n}, got {bad}")
    return sizes


def unit_path(run_dir: Path, name: str, fold: int, seed: int) -> Path:
    return run_dir / "units" / f"{name}-f{fold}-s{seed}.json"


def unit_done(run_dir: Path, name: str, fold: int, seed: int, cfg: dict) -> bool:
    """Whether this unit is saved; a saved unit trained with another config is an error, not a silent reuse."""
    path = unit_path(run_dir, name, fold, seed)
    if not path.is_file():
        return False

    defaults = setting_defaults()

    def comparable(c: dict, saved: dict) -> dict:
        # where the corpus lives is not part of it (the fingerprint is checked); a setting added after the unit was
        # saved is the same config when it is at its default (the default is what the unit trained with)
        return {
            part: {
                k: v
                for k, v in c.get(part, {}).items()
                if k not in ("data_dir", "csv") and (k in saved.get(part, {}) or v != defaults[part].get(k, object()))
            }
            for part in ("data", "model", "train")
        }

    saved = read_json(path).get("config")
    if saved is not None and comparable(saved, saved) != comparable(json.loads(json.dumps(cfg)), saved):
        raise UserError(
            f"{path} was trained with another config for {name!r}; rename the candidate or use a new --run-dir"
        )
    return True


def setting_defaults() -> dict[str, dict]:
    """Every data, model and train setting's default (what train-classifier uses without flags)."""
    import dataclasses

    from training.classifier.cli import DATA_DEFAULTS
    from training.classifier.model import ClassifierConfig
    from training.classifier.train import TrainConfig

    def of(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    return {"data": dict(DATA_DEFAULTS), "model": of(ClassifierConfig), "train": of(TrainConfig)}


def svm_unit(texts: list[str], labels: list[int], split: dict) -> dict:
    from training.classifier.baseline import tfidf_svm

    t0 = time.time()
    train = split["train"] + split["val"]  # the SVM has no early stopping: it trains on all but the test fold
    pred = tfidf_svm([texts[i] for i in train], [labels[i] for i in train], [texts[i] for i in split["test"]])
    return {"test_pred": pred.tolist(), "seconds": time.time() - t0}


def svm_decisions(texts: list[str], labels: list[int], split: dict) -> dict[str, np.ndarray]:
    """The baseline's TF-IDF + LinearSVC fitted on the train part only -> decision values (N, C) on val and test:
    the stacked candidates' second input (fitted on val, so it must not have seen val)."""
    from training.classifier.baseline import tfidf_svm_model

    model = tfidf_svm_model().fit([texts[i] for i in split["train"]], [labels[i] for i in split["train"]])
    return {part: model.decision_function([texts[i] for i in split[part]]) for part in ("val", "test")}


def fit_stack(val_logits: np.ndarray, val_svm: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) >= 0 minimising the validation NLL of softmax(a * log_softmax(logits) + b * svm decision values):
    a two-weight stack whose softmax is calibrated on the validation set, as the temperature is."""
    from scipy.optimize import minimize

    from training.classifier.calibration import nll

    logp = np.log(softmax(val_logits) + 1e-12)
    res = minimize(
        lambda w: nll(w[0] * logp + w[1] * val_svm, y), x0=[1.0, 1.0], bounds=[(0, 50), (0, 50)], method="L-BFGS-B"
    )
    return float(res.x[0]), float(res.x[1])


def stack_scores(val_logits, val_svm, vy, test_logits, test_svm, ty) -> tuple[dict, np.ndarray]:
    a, b = fit_stack(val_logits, val_svm, vy)
    z = a * np.log(softmax(test_logits) + 1e-12) + b * test_svm
    return {**score(ty, z.argmax(1)), "ece": ece(softmax(z), ty), "stack_weights": [a, b]}, z


# ---------------------------------------------------------------- scoring


def score(y: np.ndarray, pred: np.ndarray) -> dict:
    from training.classifier.report import classification_metrics

    m = classification_metrics(y, pred, list(bbc.LABELS))
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def neural_scores(val_logits: np.ndarray, val_y: np.ndarray, test_logits: np.ndarray, test_y: np.ndarray) -> dict:
    t = fit_temperature(val_logits, val_y)
    return {
        **score(test_y, test_logits.argmax(1)),
        "ece": ece(softmax(test_logits), test_y),
        "temperature": t,
        "ece_scaled": ece(softmax(test_logits / t), test_y),
    }


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired per-fold differences and its two-sided t confidence interval."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def summarize(per_fold: dict[str, list[dict]], correct: dict[str, np.ndarray]) -> dict:
    """Mean ± std per model, and every model paired against the SVM and against each other on the same folds."""
    models = {}
    for name, folds in per_fold.items():
        row = {"folds": folds}
        for key in ("accuracy", "macro_f1", "ece", "ece_scaled", "temperature", "seconds_per_member"):
            vals = [f[key] for f in folds if key in f]
            if vals:
                row[key + "_mean"], row[key + "_std"] = float(np.mean(vals)), float(np.std(vals, ddof=1))
        row["pooled_accuracy"] = float(correct[name].mean())
        models[name] = row
    pairs = {}
    names = list(per_fold)
    for a in names:
        for b in names:
            if a == b or (b != COMPARE_WITH and names.index(b) < names.index(a)) or a == COMPARE_WITH:
                continue
            diffs = [fa["accuracy"] - fb["accuracy"] for fa, fb in zip(per_fold[a], per_fold[b])]
            mean, lo, hi = t_interval(diffs)
            pairs[f"{a} - {b}"] = {
                "accuracy_diffs": diffs,
                "mean": mean,
                "ci95": [lo, hi],
                "only_a_right": int((correct[a] & ~correct[b]).sum()),
                "only_b_right": int((~correct[a] & correct[b]).sum()),
            }
    return {"models": models, "paired_accuracy": pairs}


def plot_cv(path: Path, summary: dict, k: int) -> None:
    from training.common.plots import pyplot

    plt = pyplot()
    models = summary["models"]
    names = sorted(models, key=lambda n: models[n]["accuracy_mean"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for x, n in enumerate(names):
        accs = [f["accuracy"] for f in models[n]["folds"]]
        ax.scatter([x] * len(accs), accs, s=14, color="0.55", zorder=2)
        ax.errorbar(
            x, models[n]["accuracy_mean"], yerr=models[n]["accuracy_std"], fmt="o", color="C0", capsize=5, zorder=3
        )
        ax.annotate(
            f"{models[n]['accuracy_mean']:.4f}",
            (x, models[n]["accuracy_mean"]),
            xytext=(8, -3),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("test-fold accuracy")
    ax.set_title(f"{k}-fold CV: per fold (grey), mean ± std (blue)")
    ax.grid(alpha=0.3)
    pairs = {p: v for p, v in summary["paired_accuracy"].items() if p.endswith(" - " + COMPARE_WITH)}
    for y, v in enumerate(pairs.values()):
        bx.errorbar(
            100 * v["mean"],
            y,
            xerr=[[100 * (v["mean"] - v["ci95"][0])], [100 * (v["ci95"][1] - v["mean"])]],
            fmt="o",
            capsize=5,
        )
    bx.axvline(0, color="0.3", lw=1)
    bx.axvline(0.5, color="C3", lw=1, ls="--", label="target +0.5")
    bx.set_yticks(range(len(pairs)), [p.split(" - ")[0] for p in pairs])
    bx.set_xlabel(f"accuracy − {COMPARE_WITH}, points\n(mean and 95% t-interval over folds)")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(path: Path, name: str, probs: dict[str, np.ndarray], y: np.ndarray) -> None:
    """Out-of-fold reliability diagram: accuracy against confidence per bin, before and after calibration."""
    from training.classifier.calibration import reliability
    from training.common.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for kind, color, label in (("raw", "C1", "as trained"), ("scaled", "C0", "temperature-scaled")):
        bins = [b for b in reliability(probs[kind], y, bins=15) if b["n"] >= 5]
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            color=color,
            label=f"{label} (ECE {ece(probs[kind], y):.3f})",
        )
    ax.set_xlabel("confidence (top probability), bins of 1/15 with >= 5 articles")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.3, 1.01)
    ax.set_ylim(0.3, 1.01)
    ax.set_title(f"{name}: out-of-fold reliability, {len(y)} articles")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- command


def load_candidates(args) -> dict[str, dict]:
    specs = json.loads(Path(args.candidates).read_text()) if args.candidates else CANDIDATES
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip() and n.strip() != COMPARE_WITH]
        missing = [n for n in wanted if n not in specs]
        if missing:
            raise UserError(f"--only: unknown candidate(s) {missing}; have {list(specs)}")
        specs = {n: specs[n] for n in wanted}
    return specs


def main(args) -> int:
    from tqdm.auto import tqdm

    from training.classifier.cli import config_from_args, validate
    from training.common.devices import library_versions, pick_device

    specs = load_candidates(args)
    base = config_from_args(args)
    cfgs = {name: resolve(base, spec) for name, spec in specs.items()}
    for cfg in cfgs.values():
        validate(cfg)
    d = base["data"]
    articles = bbc.read_corpus(None if d.get("csv") else data_path(d.get("data_dir"), "bbc"), d.get("csv"))
    if d.get("limit"):
        articles = bbc.first_per_class(articles, d["limit"])
    texts, labels = [a.text for a in articles], [a.label for a in articles]
    texts_ids = [a.id for a in articles]
    groups = bbc.duplicate_groups(texts, d["dedup_threshold"])
    splits = fold_splits(labels, groups, args.folds, args.fold_seed, d["val_frac"])
    run_dir = Path(args.run_dir) if args.run_dir else make_run_dir(args.out, "cv")
    (run_dir / "units").mkdir(parents=True, exist_ok=True)
    folds_doc = {
        "corpus_fingerprint": bbc.fingerprint(articles),
        "test_ids": [[articles[i].id for i in s["test"]] for s in splits],
    }
    if (run_dir / "config.json").is_file():  # resuming: the saved units must come from these very folds
        saved = read_json(run_dir / "config.json")
        if {k: saved.get(k) for k in folds_doc} != folds_doc:
            raise UserError(f"{run_dir} holds folds of another corpus or fold seed; use a new --run-dir")
    write_json(
        run_dir / "config.json",
        {"base": base, "candidates": specs, "folds": args.folds, "fold_seed": args.fold_seed, **folds_doc},
    )
    device = str(pick_device(args.device))

    def member_cfg(name, seed):
        cfg = cfgs[name]
        data = {**cfg["data"], "val_seed": seed} if specs[name].get("vary_val") else cfg["data"]
        return {**cfg, "data": data, "train": {**cfg["train"], "seed": cfg["train"]["seed"] + seed}}

    inner: dict[int, list[dict]] = {-1: splits}

    def unit_split(name, f, seed):  # a vary_val member holds out its own part of the other folds
        v = member_cfg(name, seed)["data"].get("val_seed", -1)
        if v not in inner:
            inner[v] = fold_splits(labels, groups, args.folds, args.fold_seed, d["val_frac"], v)
        return inner[v][f]

    # fold by fold, so an interrupted run already holds whole folds for every candidate
    todo = [(name, f, s) for f in range(args.folds) for name in cfgs for s in range(specs[name].get("seeds", 1))]
    todo = [u for u in todo if not unit_done(run_dir, *u, member_cfg(u[0], u[2]))]
    log.info(
        "%d articles, %d folds of %s test articles; %d training runs to do",
        len(texts),
        args.folds,
        [len(s["test"]) for s in splits],
        len(todo),
    )

    bar = tqdm(total=len(todo), desc="cv units", disable=args.no_progress)
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        futures = {
            pool.submit(run_unit, member_cfg(n, s), texts, labels, unit_split(n, f, s), args.threads, device): (n, f, s)
            for n, f, s in todo
        }
        for fut in as_completed(futures):
            n, f, s = futures[fut]
            write_json(unit_path(run_dir, n, f, s), {**fut.result(), "config": member_cfg(n, s)})
            bar.update()
    bar.close()

    y = np.asarray(labels)
    per_fold: dict[str, list[dict]] = {}
    correct: dict[str, np.ndarray] = {}

    oof: dict[str, dict[str, np.ndarray]] = {}  # out-of-fold probabilities (N, C): raw and calibrated

    def record(name, f, row, pred, raw=None, scaled=None):
        per_fold.setdefault(name, []).append(row)
        correct.setdefault(name, np.zeros(len(y), dtype=bool))[splits[f]["test"]] = pred == y[splits[f]["test"]]
        for kind, p in (("raw", raw), ("scaled", scaled)):
            if p is not None:
                oof.setdefault(name, {}).setdefault(kind, np.zeros((len(y), p.shape[1])))[splits[f]["test"]] = p

    cross_fit: dict[str, list[np.ndarray]] = {}  # vary_val ensembles: test logits per fold, for their temperature
    for f, split in enumerate(splits):
        ty = y[split["test"]]
        svm = svm_unit(texts, labels, split)
        record(
            COMPARE_WITH,
            f,
            {**score(ty, np.asarray(svm["test_pred"])), "seconds_per_member": svm["seconds"]},
            np.asarray(svm["test_pred"]),
        )
        stack_svm = svm_decisions(texts, labels, split) if any(sp.get("stack") for sp in specs.values()) else None
        for name, spec in specs.items():
            units = [read_json(unit_path(run_dir, name, f, s)) for s in range(spec.get("seeds", 1))]
            val = [np.asarray(u["val_logits"]) for u in units]
            test = [np.asarray(u["test_logits"]) for u in units]
            secs = float(np.mean([u["seconds"] for u in units]))
            vy = y[unit_split(name, f, 0)["val"]]
            row = neural_scores(val[0], vy, test[0], ty)
            record(
                name,
                f,
                {**row, "seconds_per_member": secs, "epochs": units[0]["epochs"]},
                test[0].argmax(1),
                softmax(test[0]),
                softmax(test[0] / row["temperature"]),
            )
            for m in ensemble_sizes(spec):
                ens_test = ensemble_logits(test[:m])
                ens = f"{name}-ens{m}"
                if spec.get("vary_val"):  # members hold out different articles: no shared validation set
                    cross_fit.setdefault(ens, []).append(ens_test)
                    row = {**score(ty, ens_test.argmax(1)), "ece": ece(softmax(ens_test), ty)}
                    record(ens, f, {**row, "seconds_per_member": secs}, ens_test.argmax(1))
                else:
                    row = neural_scores(ensemble_logits(val[:m]), vy, ens_test, ty)
                    scaled = softmax(ens_test / row["temperature"])
                    record(ens, f, {**row, "seconds_per_member": secs}, ens_test.argmax(1), softmax(ens_test), scaled)
            if spec.get("stack") and not spec.get("vary_val"):  # the single model and its ensembles, + the SVM
                for label, m in [(name, 1)] + [(f"{name}-ens{m}", m) for m in ensemble_sizes(spec)]:
                    row, z = stack_scores(
                        ensemble_logits(val[:m]), stack_svm["val"], vy, ensemble_logits(test[:m]), stack_svm["test"], ty
                    )
                    record(f"{label}+svm", f, {**row, "seconds_per_member": secs}, z.argmax(1), None, softmax(z))
    for ens, logits in cross_fit.items():  # temperature fitted on the other folds' test logits (cross-fitted)
        for f, row in enumerate(per_fold[ens]):
            others = [g for g in range(args.folds) if g != f]
            t = fit_temperature(
                np.concatenate([logits[g] for g in others]), np.concatenate([y[splits[g]["test"]] for g in others])
            )
            row.update(temperature=t, ece_scaled=ece(softmax(logits[f] / t), y[splits[f]["test"]]))
    summary = summarize(per_fold, correct)
    for name, probs in oof.items():  # calibration over all N articles at once, each predicted by a model without it
        m = summary["models"][name]
        for kind, p in probs.items():
            m["oof_ece" + ("" if kind == "raw" else "_scaled")] = ece(p, y)
        if "raw" in probs and "scaled" in probs and "-ens" not in name and "+" not in name:
            plot_reliability(run_dir / f"reliability-{name}.png", name, probs, y)
    for pair, v in summary["paired_accuracy"].items():  # which articles, for the discordance tables
        a, b = pair.split(" - ")
        v["only_a_right_ids"] = [texts_ids[i] for i in np.flatnonzero(correct[a] & ~correct[b])]
        v["only_b_right_ids"] = [texts_ids[i] for i in np.flatnonzero(~correct[a] & correct[b])]
    summary.update(
        folds=args.folds,
        n=len(y),
        fold_sizes=[len(s["test"]) for s in splits],
        duplicates=bbc.duplicate_stats(groups),
        versions=library_versions(),
    )
    write_json(run_dir / "cv.json", summary)
    plot_cv(run_dir / "cv.png", summary, args.folds)
    for name, m in sorted(summary["models"].items(), key=lambda kv: -kv[1]["accuracy_mean"]):
        log.info(
            "%-12s accuracy %.4f ± %.4f  macro-F1 %.4f ± %.4f",
            name,
            m["accuracy_mean"],
            m["accuracy_std"],
            m["macro_f1_mean"],
            m["macro_f1_std"],
        )
    for pair, v in summary["paired_accuracy"].items():
        log.info(
            "%-22s %+.4f [%+.4f, %+.4f]  discordant %d/%d",
            pair,
            v["mean"],
            *v["ci95"],
            v["only_a_right"],
            v["only_b_right"],
        )
    print(
        json.dumps(
            {
                "run_dir": str(run_dir),
                "folds": args.folds,
                "accuracy": {n: round(m["accuracy_mean"], 4) for n, m in summary["models"].items()},
            }
        )
    )
    return 0
