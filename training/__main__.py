"""``python -m training <command>``: one sub-command per job, each with ``--help``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``;
modules are imported only to build the parser, and doing so does no work.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from runtime.manifest import ArtifactError
from training.common.cli import UserError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train-classifier": ("training.classifier.cli", "train the BiLSTM topic classifier on the BBC corpus"),
    "search-classifier": ("training.classifier.search", "Optuna search over classifier hyperparameters"),
    "cv-classifier": ("training.classifier.cv", "k-fold cross-validation of classifier candidates against the SVM"),
    "export-classifier": ("training.classifier.export", "export a classifier checkpoint to TorchScript + ONNX"),
    "recalibrate-classifier": (
        "training.classifier.recalibrate",
        "re-export an exported classifier with a temperature fitted on its validation split",
    ),
    "cost-classifier": (
        "training.classifier.cost",
        "serving cost per article of candidate architectures against the committed classifier",
    ),
    "evaluate-classifier": ("training.classifier.evaluate", "score the exported ONNX classifier on a corpus"),
    "analyze-classifier": (
        "training.classifier.analyze",
        "error analysis, calibration and robustness of the exported classifier",
    ),
    "predict-classifier": ("training.classifier.predict", "classify a text with the exported model"),
    "train-generator": ("training.generator.cli", "train the character-level LSTM generator"),
    "search-generator": ("training.generator.search", "Optuna search over generator hyperparameters"),
    "export-generator": ("training.generator.export", "export a generator checkpoint (step + prefill graphs)"),
    "evaluate-generator": ("training.generator.evaluate", "bits per character of the exported generator"),
    "bench-generator": ("training.generator.bench", "training (fp32 vs bf16) and served (int8) speed per model shape"),
    "generate": ("training.generator.generate", "stream text from the exported generator"),
    "quantize": ("training.common.quantize", "add measured int8 variants to exported model folders"),
    "lab": ("training.labs.cli", "run a recurrent-network lab (docs/labs.md): python -m training lab NAME"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if only is None or name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # build only the chosen command's arguments: fast --help, no unrelated imports
    only = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
    except (UserError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
