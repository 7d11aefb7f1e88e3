"""cost-classifier: what a candidate architecture costs per article when served, against the committed model.

Serving cost depends on the graph, not on the weights, so each candidate of a cv-classifier candidates file (or the
built-in ones) is built untrained at its vocabulary size, exported to ONNX like a real model and, with ``--precision
int8``, quantized as the export does. All of them and the committed model then classify the same real articles
through ``ClassifierRuntime`` (tokenizing included, one thread), one at a time and in chunks of 4 as the service
batches, in alternation over ``--rounds`` rounds; the best round counts. The last line printed is JSON with ms per
article and each candidate's ratio to the committed model (the decision rule of docs/classifier.md: a new model
may cost at most 2x today's at batch 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from runtime.manifest import load_manifest, write_manifest
from training.classifier import data as bbc
from training.common.cli import data_path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", help="cv-classifier candidates JSON (default: the built-in candidates)")
    parser.add_argument("--only", help="comma-separated candidate names")
    parser.add_argument("--vocab-size", type=int, default=30000, help="vocabulary size of the candidates' graphs")
    parser.add_argument("--models", default="exported_models", help="the committed models root (the reference)")
    parser.add_argument("--data-dir", help="corpus (default $DATA_DIR/bbc); its test split's articles are timed")
    parser.add_argument("--precision", default="int8", help="fp32 | int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)


def build(name: str, spec: dict, base: dict, ref: dict, seqs: list[list[int]], folder: Path, vocab_size: int):
    """An untrained candidate exported into ``folder`` with a manifest the runtime accepts."""
    from training.classifier.cv import resolve
    from training.classifier.export import export
    from training.classifier.model import ClassifierConfig
    from training.classifier.train import initial_model
    from training.classifier.wide import feature_vocab
    from training.common.quantize import METHOD, int8_name, quantize_file

    cfg = resolve(base, spec)
    vocab = ref["vocab"] + [f"<unused{i}>" for i in range(max(0, vocab_size - len(ref["vocab"])))]
    mc = ClassifierConfig(vocab_size=len(vocab), num_classes=len(ref["labels"]), **cfg["model"])
    torch.manual_seed(0)
    wide = feature_vocab(seqs, len(vocab), mc.wide_ngrams, mc.wide_features) if mc.wide_features else None
    model = initial_model(mc, wide_vocab=wide).eval()
    export(model, folder, 17)
    quantize_file(folder / "model.onnx", folder / int8_name("model.onnx"))
    write_manifest(
        folder,
        {
            "kind": "classifier",
            "labels": ref["labels"],
            "vocab": vocab,
            "tokenizer": ref["tokenizer"],
            "max_len": cfg["data"]["max_len"],
            "config": dataclasses.asdict(mc),
            "precisions": {
                "fp32": {"files": {"model": "model.onnx"}},
                "int8": {"files": {"model": int8_name("model.onnx")}, "method": METHOD, "accepted": True},
            },
        },
    )


def main(args) -> int:
    from runtime.classifier import ClassifierRuntime
    from training.classifier.analyze import time_runtimes
    from training.classifier.cv import load_candidates, setting_defaults

    torch.set_num_threads(args.threads)
    specs = load_candidates(args)
    ref_dir = Path(args.models) / "classifier" if (Path(args.models) / "classifier").is_dir() else Path(args.models)
    ref = load_manifest(ref_dir, "classifier")
    test_ids = set(ref["split"]["test"])
    texts = [a.text for a in bbc.read_corpus(data_path(args.data_dir, "bbc")) if a.id in test_ids]
    base = setting_defaults()  # what train-classifier uses without flags; each candidate overrides it
    runtimes = {"committed": ClassifierRuntime(ref_dir, provider="cpu", intra_threads=1, precision=args.precision)}
    seqs = [runtimes["committed"].encode(t) for t in texts]
    with tempfile.TemporaryDirectory(prefix="cost-") as tmp:
        for name, spec in specs.items():
            folder = Path(tmp) / name.replace("/", "_")
            folder.mkdir()
            build(name, spec, base, ref, seqs, folder, args.vocab_size)
            runtimes[name] = ClassifierRuntime(folder, provider="cpu", intra_threads=1, precision=args.precision)
        best = time_runtimes(runtimes, texts, args.rounds)
    out = {
        n: {
            "ms_per_article_batch1": round(b[1], 3),
            "ms_per_article_batch4": round(b[4], 3),
            "batch4_vs_committed": round(b[4] / best["committed"][4], 2),
        }
        for n, b in best.items()
    }
    for n, row in out.items():
        log.info("%-16s %s", n, row)
    print(json.dumps({"precision": args.precision, "articles": len(texts), "cost": out}))
    return 0 if all(np.isfinite(v[4]) for v in best.values()) else 1
