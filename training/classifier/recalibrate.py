"""recalibrate-classifier: re-export an exported classifier with a temperature fitted on its validation split
(and, with ``--cv``, its cross-validation figures in the manifest), when its training run folder is gone.

The exported folder carries everything but the run folder's split and metrics files: the weights (model.ts's
state_dict), config, vocabulary, tokenizer and the held-out test ids. The split is drawn again from the corpus with
the training defaults (``--split-seed`` etc.) and must give exactly the manifest's test ids, else nothing is
written. Then ``export-classifier --temperature fit`` runs on a run folder rebuilt from those parts: parity,
int8 and manifest as for any export. The weights, and so every argmax, are unchanged. A model exported with a
temperature already (one member and T) is recalibrated from its raw weights, so running this twice changes nothing.

``--regraph`` re-exports the graph only (e.g. after a change to training/classifier/onnx_graph.py): the same path,
but with the manifest's temperature as is, and every recorded figure (metrics, calibration, cv, ensemble, split, ...)
kept from the manifest; parity, the int8 variant (measured again on the test split), versions and the date are new.

    python -m training recalibrate-classifier exported_models/classifier --regraph --data-dir $DATA_DIR/bbc
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from runtime.manifest import load_manifest, write_manifest
from training.classifier import data as bbc
from training.classifier.model import ClassifierConfig, TextClassifier
from training.common.cli import UserError
from training.common.files import write_json

# what --regraph measures again; every other manifest key is kept as recorded
MEASURED = ("format_version", "parity", "precisions", "versions", "created", "files")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.classifier.cli import DATA_DEFAULTS

    parser.add_argument("model", help="the exported classifier folder (e.g. exported_models/classifier)")
    parser.add_argument("--data-dir", help="the corpus it was trained on (default $DATA_DIR/bbc)")
    parser.add_argument("--cv", metavar="CV_JSON:NAME", help="as export-classifier --cv")
    parser.add_argument("--out", default="exported_models", help="exported models root; writes <out>/classifier")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--regraph",
        action="store_true",
        help="re-export the graphs only: keep the manifest's T and figures; parity and int8 are measured again",
    )
    for name in ("split_seed", "val_frac", "test_frac", "dedup_threshold"):
        parser.add_argument("--" + name.replace("_", "-"), type=type(DATA_DEFAULTS[name]), default=DATA_DEFAULTS[name])


def rebuild_run(folder: Path, run_dir: Path, data_cfg: dict) -> None:
    """model.pt, split.json and metrics.json of the run that produced the exported ``folder``."""
    from training.classifier.pipeline import load_split

    m = load_manifest(folder, "classifier")
    members = (m.get("ensemble") or {}).get("members", 1)
    if members != 1:
        raise UserError(f"{folder} holds an ensemble of {members}: export its member runs with --temperature fit")
    model = TextClassifier(ClassifierConfig.from_dict(m["config"]))
    state = torch.jit.load(str(folder / "model.ts")).state_dict()
    if m.get("ensemble"):  # already calibrated (one member and T): its raw weights, T is fitted again
        state = {k.removeprefix("members.0."): v for k, v in state.items() if k.startswith("members.0.")}
    model.load_state_dict(state)
    articles, split, dups = load_split(data_cfg)
    test = [articles[i].id for i in split["test"]]
    if sorted(test) != sorted(m["split"]["test"]):
        raise UserError(
            f"the split drawn with {data_cfg} is not the model's: {len(set(test) - set(m['split']['test']))} test "
            "articles differ (pass the --split-seed / fractions it was trained with, and its corpus)"
        )
    torch.save(
        {
            "config": m["config"],
            "run_config": {"data": data_cfg},
            "state_dict": model.state_dict(),
            "vocab": m["vocab"],
            "labels": m["labels"],
            "max_len": m["max_len"],
            "tokenizer": m["tokenizer"],
        },
        run_dir / "model.pt",
    )
    write_json(
        run_dir / "split.json",
        {
            **{k: [articles[i].id for i in v] for k, v in split.items()},
            "duplicates": dups,
            "corpus_fingerprint": bbc.fingerprint(articles),
        },
    )
    mm = m["metrics"]
    write_json(
        run_dir / "metrics.json",
        {
            "test": {"accuracy": mm["test_accuracy"], "macro_f1": mm["test_macro_f1"], "n": mm["test_n"]},
            "val": {"accuracy": mm["val_accuracy"]},
            "baseline_tfidf_svm": {
                "accuracy": mm["baseline_tfidf_svm_accuracy"],
                "macro_f1": mm["baseline_tfidf_svm_macro_f1"],
            },
            "train_seconds": mm.get("train_seconds"),
        },
    )


def main(args) -> int:
    from training.classifier import export

    folder = Path(args.model)
    data_cfg = {
        "data_dir": args.data_dir,
        "split_seed": args.split_seed,
        "val_frac": args.val_frac,
        "test_frac": args.test_frac,
        "dedup_threshold": args.dedup_threshold,
    }
    kept = None
    if args.regraph:
        if args.cv:
            raise UserError("--regraph keeps the manifest's cv figures: drop --cv, or recalibrate without --regraph")
        kept = load_manifest(folder, "classifier")
    with tempfile.TemporaryDirectory(prefix="recalibrate-") as tmp:
        run = Path(tmp) / folder.resolve().name
        run.mkdir()
        rebuild_run(folder, run, data_cfg)
        rc = export.main(
            argparse.Namespace(
                run_dir=[str(run)],
                # repr round-trips the float: the graph divides by exactly the recorded T
                temperature=repr(float((kept.get("ensemble") or {}).get("temperature", 1.0))) if kept else "fit",
                cv=args.cv,
                out=args.out,
                data_dir=args.data_dir,
                csv=None,
                tolerance=1e-4,
                opset=17,
                threads=args.threads,
            )
        )
    if kept is not None:  # the figures on record, over the ones export.main wrote (the same weights and T)
        out = Path(args.out) / "classifier"
        new = load_manifest(out, "classifier")
        doc = {k: new.get(k) if k in MEASURED else v for k, v in kept.items()}  # in the recorded order
        write_manifest(out, {**doc, **{k: v for k, v in new.items() if k in MEASURED and k not in doc}})
        print(f"{out}: manifest figures kept from {folder}; parity, int8, versions and date measured again")
    return rc
