"""train-classifier: BBC corpus -> duplicate-aware split -> vocab -> BiLSTM -> report + checkpoint.

The run folder gets config.json (resolved), split.json (article ids per split and the duplicate
counts), vocab.json, metrics.json (test metrics of the model and of the TF-IDF + SVM baseline on the same
split, plus the epoch history), loss/accuracy/lr/confusion/per_class PNGs, model.pt (config + state_dict +
vocab + labels; no pickled module) and last.pt (resume state). ``--run-dir`` on an existing run resumes it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

from training.classifier import data as bbc
from training.classifier.model import ClassifierConfig
from training.classifier.tokenizer import PATTERN, Vocab, length_quantile
from training.classifier.train import Encoded, TrainConfig, predict, train
from training.common.cli import UserError, data_path, make_run_dir
from training.common.devices import library_versions, pick_device
from training.common.files import read_json, write_json

log = logging.getLogger(__name__)

DATA_DEFAULTS = {"max_len": 750, "min_freq": 2, "max_vocab": 30000, "embed_init": "lsa", "vocab_from": "train",
                 "dedup_threshold": 0.9, "val_frac": 0.1, "test_frac": 0.1, "split_seed": 0, "val_seed": -1,
                 "limit": 0}
VOCAB_FROM = {"train": ("train",), "train+val": ("train", "val")}
MODEL_SKIP = {"vocab_size", "num_classes"}  # derived from the data, not flags
FIELD_HELP = {"cell": "rnn | gru | lstm", "pooling": "'+'-joined subset of last, mean, max",
              "word_dropout": "share of tokens replaced by <unk> in training",
              "embed_dropout": "share of embedding channels dropped in training",
              "dropout": "dropout between stacked layers and before the output layer",
              "clip": "max gradient norm", "patience": "early stopping: epochs without val-loss improvement",
              "lr_patience": "ReduceLROnPlateau (factor 0.5) patience in epochs",
              "bf16": "bfloat16 autocast for the training steps (fast on CPUs with AVX512-BF16)",
              "crop": "share of training articles replaced each epoch by a random window of 30..all of their tokens "
                      "(augmentation; 0 = off)",
              "pretrain_epochs": "epochs of language-model pretraining (next and previous token) of the embedding "
                                 "and RNNs on the train and val texts before the classifier trains (0 = off)",
              "pretrain_lr": "peak learning rate of the language-model pretraining (one-cycle)",
              "ema": "decay per step of an exponential moving average of the weights, which is validated and kept "
                     "(0 = off; e.g. 0.99)"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per data setting and per field of ClassifierConfig and TrainConfig."""
    g = parser.add_argument_group("data and tokens")
    g.add_argument("--data-dir", help="BBC corpus in its folder layout (default $DATA_DIR/bbc)")
    g.add_argument("--csv", help="read the corpus from a CSV with text,label columns instead")
    helps = {"max_len": "tokens kept per article (the first ones: the title is never cut)",
             "embed_init": "lsa (LSA vectors of the --vocab-from articles) | random",
             "vocab_from": "train | train+val: the articles whose words make the vocabulary and the LSA vectors "
                           "(texts only, never labels). train+val gives runs that differ only in --val-seed one "
                           "vocabulary, so they can be exported as one ensemble",
             "val_seed": "-1: the validation set --split-seed draws; k >= 0: redraw it from the non-test articles "
                         "with seed k (the test set stays; ensemble members that each hold out another part)",
             "limit": "use at most this many articles per class (0 = all; for smoke tests)",
             "dedup_threshold": "TF-IDF cosine above which two articles are near duplicates"}
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
    pick = lambda cls: {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in MODEL_SKIP}
    return {"data": {"data_dir": args.data_dir, "csv": args.csv, **{k: getattr(args, k) for k in DATA_DEFAULTS}},
            "model": pick(ClassifierConfig), "train": pick(TrainConfig)}


def validate(cfg: dict) -> None:
    """Check the flags before reading any data."""
    try:
        ClassifierConfig(vocab_size=2, num_classes=2, **cfg["model"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg["data"]["embed_init"] not in ("lsa", "random"):
        raise UserError(f"--embed-init must be lsa or random, got {cfg['data']['embed_init']!r}")
    if cfg["data"].get("vocab_from", "train") not in VOCAB_FROM:
        raise UserError(f"--vocab-from must be one of {list(VOCAB_FROM)}, got {cfg['data']['vocab_from']!r}")


def load_split(data_cfg: dict):
    """Articles, and the duplicate-aware stratified split as {split: [indices]} plus duplicate counts."""
    d = data_cfg
    path = None if d.get("csv") else data_path(d.get("data_dir"), "bbc")
    articles = bbc.read_corpus(path, d.get("csv"))
    if d.get("limit"):
        articles = bbc.first_per_class(articles, d["limit"])
    groups = bbc.duplicate_groups([a.text for a in articles], d["dedup_threshold"])
    fracs = (1 - d["val_frac"] - d["test_frac"], d["val_frac"], d["test_frac"])
    labels = [a.label for a in articles]
    split = bbc.split_grouped(labels, groups, fracs, d["split_seed"])
    if d.get("val_seed", -1) >= 0:
        split = bbc.redraw_val(split, labels, groups, d["val_frac"] / sum(fracs[:2]), d["val_seed"])
    empty = [name for name, idx in split.items() if not idx]
    if empty:
        raise UserError(f"{len(articles)} articles leave the {'/'.join(empty)} split empty; use more data")
    return articles, split, bbc.duplicate_stats(groups)


def vocab_texts(texts: list[str], split: dict, data_cfg: dict) -> list[str]:
    """The texts the vocabulary and the LSA vectors come from: VOCAB_FROM names the splits."""
    return [texts[i] for name in VOCAB_FROM[data_cfg.get("vocab_from", "train")] for i in split[name]]


def encode_splits(articles, split, data_cfg: dict, source: list[str]) -> tuple[Vocab, dict[str, Encoded]]:
    """Vocabulary from ``source`` (vocab_texts); every split encoded and cut to max_len."""
    vocab = Vocab.build(source, data_cfg["min_freq"], data_cfg["max_vocab"])
    data = {name: Encoded([vocab.encode(articles[i].text, data_cfg["max_len"]) for i in idx],
                          [articles[i].label for i in idx]) for name, idx in split.items()}
    return vocab, data


def initial_embeddings(cfg: dict, texts: list[str], vocab: Vocab):
    """LSA vectors of the vocabulary's texts, or None for nn.Embedding's random init."""
    if cfg["data"].get("embed_init", "random") == "random":
        return None
    from training.classifier.embeddings import lsa_embeddings

    return lsa_embeddings(texts, vocab, cfg["model"]["embed_dim"])


def fit(cfg: dict, articles, split: dict, device, run_dir: Path | None = None, progress: bool = True, **train_kw):
    """Encode the splits, build the model config, initialise the embedding (and pretrain), train: what
    train-classifier, the search and cross-validation share. -> (model, history, vocab, data, seconds)."""
    source = vocab_texts([a.text for a in articles], split, cfg["data"])  # the vocabulary's and the LSA vectors'
    vocab, data = encode_splits(articles, split, cfg["data"], source)
    model_cfg = ClassifierConfig(vocab_size=len(vocab), num_classes=len(bbc.LABELS), **cfg["model"])
    train_cfg = TrainConfig.from_dict(cfg["train"])
    t0 = time.time()
    init = initial_embeddings(cfg, source, vocab)
    init_state = None
    if train_cfg.pretrain_epochs > 0:  # on the texts of train and val (never test), labels unused
        from training.classifier.pretrain import pretrain_lm

        cache = Path(run_dir) / "pretrained.pt" if run_dir else None  # a resumed run does not pretrain again
        init_state, _ = pretrain_lm(model_cfg, data["train"].ids + data["val"].ids, train_cfg.pretrain_epochs,
                                    train_cfg.pretrain_lr, train_cfg.seed, init, device, progress, cache)
    model, history = train(model_cfg, train_cfg, data, run_dir=run_dir, device=device, progress=progress,
                           embeddings=init, init_state=init_state, **train_kw)
    return model, history, vocab, data, time.time() - t0


def checkpoint(model, cfg: dict, vocab: Vocab) -> dict:
    """Everything needed to rebuild the model without pickled classes."""
    return {"config": dataclasses.asdict(model.config), "run_config": cfg, "state_dict": model.state_dict(),
            "vocab": vocab.itos, "labels": list(bbc.LABELS), "max_len": cfg["data"]["max_len"],
            "tokenizer": {"lowercase": True, "pattern": PATTERN}}


def run_training(cfg: dict, run_dir: Path, device, progress: bool = True, on_epoch_end=None,
                 prepared=None) -> dict:
    """Train, test once, score the SVM baseline on the same split, write the report; returns metrics."""
    from training.classifier.baseline import tfidf_svm
    from training.classifier.report import classification_metrics, write_report

    articles, split, dups = prepared or load_split(cfg["data"])
    labels = list(bbc.LABELS)
    log.info("%d articles, duplicates %s, split %s", len(articles), dups, {k: len(v) for k, v in split.items()})
    texts = [a.text for a in articles]
    write_json(run_dir / "config.json", cfg)
    write_json(run_dir / "split.json", {**{k: [articles[i].id for i in v] for k, v in split.items()},
                                        "duplicates": dups, "corpus_fingerprint": bbc.fingerprint(articles)})
    model, history, vocab, data, seconds = fit(cfg, articles, split, device, on_epoch_end=on_epoch_end,
                                               run_dir=run_dir, progress=progress)
    vocab.save(run_dir / "vocab.json")
    cover = sum(len(s) < cfg["data"]["max_len"] for s in data["train"].ids) / len(data["train"])
    test_pred = predict(model, data["test"], device=device).argmax(1).numpy()
    svm_pred = tfidf_svm([texts[i] for i in split["train"]], data["train"].labels, [texts[i] for i in split["test"]])
    best = min(history, key=lambda h: h["val_loss"])
    metrics = {"test": classification_metrics(data["test"].labels, test_pred, labels),
               "val": {"accuracy": best["val_acc"], "loss": best["val_loss"], "best_epoch": best["epoch"]},
               "baseline_tfidf_svm": classification_metrics(data["test"].labels, svm_pred, labels),
               "duplicates": dups, "vocab_size": len(vocab), "max_len_coverage_train": cover,
               "length_p95_train": length_quantile([texts[i] for i in split["train"]]),
               "train_seconds": seconds, "parameters": sum(p.numel() for p in model.parameters()),
               "versions": library_versions()}
    write_report(run_dir, history, metrics, labels)
    torch.save(checkpoint(model, cfg, vocab), run_dir / "model.pt")
    log.info("test accuracy %.4f macro-F1 %.4f | TF-IDF+SVM accuracy %.4f | %.0fs -> %s",
             metrics["test"]["accuracy"], metrics["test"]["macro_f1"],
             metrics["baseline_tfidf_svm"]["accuracy"], seconds, run_dir)
    return metrics


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
    print(f"test accuracy {m['test']['accuracy']:.4f}  macro-F1 {m['test']['macro_f1']:.4f}  "
          f"(TF-IDF+SVM {m['baseline_tfidf_svm']['accuracy']:.4f})  run: {run_dir}")
    return 0
