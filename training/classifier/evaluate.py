"""evaluate-classifier: score the exported ONNX classifier (through runtime.classifier) on a corpus.

Any corpus in the original layout (or a CSV) works. ``--split test`` scores only the held-out test
articles recorded in the manifest, i.e. the number the export reports. The last line printed is JSON:
``{"accuracy": ..., "macro_f1": ..., "n": ...}``.
"""

from __future__ import annotations

import argparse
import json
import logging

from training.classifier import data as bbc
from training.common.cli import UserError, data_path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="exported_models", help="exported models root or the classifier folder")
    parser.add_argument("--data-dir", help="corpus in its folder layout (default $DATA_DIR/bbc)")
    parser.add_argument("--csv", help="corpus as a CSV with text,label columns")
    parser.add_argument(
        "--split",
        choices=["all", "test"],
        default="all",
        help="all articles, or only the held-out test ids stored in the manifest",
    )
    parser.add_argument("--provider", default="auto", help="ONNX Runtime provider: auto | cuda | cpu")
    parser.add_argument("--batch-size", type=int, default=32)


def main(args) -> int:
    from runtime.classifier import ClassifierRuntime
    from training.classifier.report import classification_metrics

    rt = ClassifierRuntime(args.models, provider=args.provider)  # verifies the manifest first
    if rt.labels != list(bbc.LABELS):
        raise UserError(f"model labels {rt.labels} differ from the corpus labels {list(bbc.LABELS)}")
    articles = bbc.read_corpus(None if args.csv else data_path(args.data_dir, "bbc"), args.csv)
    if args.split == "test":
        wanted = set((rt.manifest.get("split") or {}).get("test", []))
        if not wanted:
            raise UserError("--split test: the manifest records no test split (use --split all)")
        articles = [a for a in articles if a.id in wanted]
        if len(articles) != len(wanted):
            raise UserError(f"corpus holds {len(articles)} of the {len(wanted)} test articles in the manifest")
    probs = rt.predict_proba([a.text for a in articles], batch_size=args.batch_size)
    m = classification_metrics([a.label for a in articles], probs.argmax(axis=1), rt.labels)
    log.info("per class: %s", {k: round(v["f1"], 4) for k, v in m["per_class"].items()})
    result = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
    print(json.dumps(result))
    return 0
