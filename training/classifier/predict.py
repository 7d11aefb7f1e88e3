"""predict-classifier: classify texts with the exported ONNX model; prints the label and probabilities."""

from __future__ import annotations

import argparse
import json
import sys

from training.common.cli import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="*", help="text(s) to classify; '-' or nothing reads stdin")
    parser.add_argument("--models", default="exported_models", help="exported models root or the classifier folder")
    parser.add_argument("--json", action="store_true", help="one JSON object per text")


def main(args) -> int:
    from runtime.classifier import ClassifierRuntime

    texts = args.text if args.text and args.text != ["-"] else [sys.stdin.read()]
    if not any(t.strip() for t in texts):
        raise UserError("no text to classify")
    rt = ClassifierRuntime(args.models)
    for result in rt.classify(texts):
        if args.json:
            print(json.dumps(result))
        else:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]))
            print(f"{result['label']}\t{probs}")
    return 0
