"""The classifier's training pipeline, shared by train-classifier (cli.py), search-classifier (search.py) and
cv-classifier (cv.py): read and split the corpus (``load_split``), encode it, initialise the embedding, pretrain
and train (``fit``), and write a run folder with its report and checkpoint (``run_training``).

The run folder gets config.json (resolved), split.json (article ids per split and the duplicate
counts), vocab.json, metrics.json (test metrics of the model and of the TF-IDF + SVM baseline on the same
split, plus the epoch history), loss/accuracy/lr/confusion/per_class PNGs, model.pt (config + state_dict +
vocab + labels; no pickled module) and last.pt (resume state).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path

import torch

from training.classifier import data as bbc
from training.classifier.model import ClassifierConfig
from training.classifier.tokenizer import PATTERN, Vocab, length_quantile
from training.classifier.train import Encoded, TrainConfig, predict, train
from training.common.cli import UserError, data_path
from training.common.devices import library_versions
from training.common.files import write_json

log = logging.getLogger(__name__)

VOCAB_FROM = {"train": ("train",), "train+val": ("train", "val")}


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
    keep_rare, extra = None, ()
    if data_cfg.get("embed_init", "random").startswith("glove"):  # widen: words GloVe knows, however rare here
        from training.classifier import glove

        index, _ = glove.load()
        keep_rare = functools.partial(glove.knows, index=index)
        extra = glove.frequent_words(data_cfg.get("glove_words", 0), PATTERN)
    vocab = Vocab.build(source, data_cfg["min_freq"], data_cfg["max_vocab"], keep_rare, extra)
    data = {
        name: Encoded(
            [vocab.encode(articles[i].text, data_cfg["max_len"]) for i in idx], [articles[i].label for i in idx]
        )
        for name, idx in split.items()
    }
    return vocab, data


def initial_embeddings(cfg: dict, texts: list[str], vocab: Vocab):
    """(V, E) initial embedding for ``embed_init``, or None for nn.Embedding's random init.

    lsa: LSA vectors of the vocabulary's texts. glove: GloVe's 50-d vectors in the first 50 columns (words it
    lacks start at zero) and random N(0, 1) columns after them; glove+lsa: LSA vectors in those columns instead.
    """
    init, dim = cfg["data"].get("embed_init", "random"), cfg["model"]["embed_dim"]
    if init == "random":
        return None
    from training.classifier.embeddings import glove_embeddings, lsa_embeddings

    if init == "lsa":
        return lsa_embeddings(texts, vocab, dim)
    rest = None
    if dim > 50:
        rest = (
            lsa_embeddings(texts, vocab, dim - 50)
            if init == "glove+lsa"
            else torch.randn(len(vocab), dim - 50, generator=torch.Generator().manual_seed(cfg["train"]["seed"]))
        )
    w, found = glove_embeddings(vocab, rest)
    log.info("GloVe vectors for %d of %d vocabulary entries", int(found.sum()), len(vocab))
    return w


def fit(cfg: dict, articles, split: dict, device, run_dir: Path | None = None, progress: bool = True, **train_kw):
    """Encode the splits, build the model config, initialise the embedding (and pretrain), train: what
    train-classifier, the search and cross-validation share. -> (model, history, vocab, data, seconds)."""
    source = vocab_texts([a.text for a in articles], split, cfg["data"])  # the vocabulary's and the LSA vectors'
    vocab, data = encode_splits(articles, split, cfg["data"], source)
    model_cfg = ClassifierConfig(vocab_size=len(vocab), num_classes=len(bbc.LABELS), **cfg["model"])
    train_cfg = TrainConfig.from_dict(cfg["train"])
    t0 = time.time()
    init = initial_embeddings(cfg, source, vocab)
    wide_vocab = None
    if model_cfg.wide_features:  # n-grams of the training split only
        from training.classifier.wide import feature_vocab

        wide_vocab = feature_vocab(data["train"].ids, len(vocab), model_cfg.wide_ngrams, model_cfg.wide_features)
    init_state = None
    if train_cfg.pretrain_epochs > 0:  # on the texts of train and val (never test), labels unused
        from training.classifier.pretrain import pretrain_lm

        cache = Path(run_dir) / "pretrained.pt" if run_dir else None  # a resumed run does not pretrain again
        init_state, _ = pretrain_lm(
            model_cfg,
            data["train"].ids + data["val"].ids,
            train_cfg.pretrain_epochs,
            train_cfg.pretrain_lr,
            train_cfg.seed,
            init,
            device,
            progress,
            cache,
        )
    model, history = train(
        model_cfg,
        train_cfg,
        data,
        run_dir=run_dir,
        device=device,
        progress=progress,
        embeddings=init,
        init_state=init_state,
        wide_vocab=wide_vocab,
        **train_kw,
    )
    return model, history, vocab, data, time.time() - t0


def checkpoint(model, cfg: dict, vocab: Vocab) -> dict:
    """Everything needed to rebuild the model without pickled classes."""
    return {
        "config": dataclasses.asdict(model.config),
        "run_config": cfg,
        "state_dict": model.state_dict(),
        "vocab": vocab.itos,
        "labels": list(bbc.LABELS),
        "max_len": cfg["data"]["max_len"],
        "tokenizer": {"lowercase": True, "pattern": PATTERN},
    }


def run_training(cfg: dict, run_dir: Path, device, progress: bool = True, on_epoch_end=None, prepared=None) -> dict:
    """Train, test once, score the SVM baseline on the same split, write the report; returns metrics."""
    from training.classifier.baseline import tfidf_svm
    from training.classifier.report import classification_metrics, write_report

    articles, split, dups = prepared or load_split(cfg["data"])
    labels = list(bbc.LABELS)
    log.info("%d articles, duplicates %s, split %s", len(articles), dups, {k: len(v) for k, v in split.items()})
    texts = [a.text for a in articles]
    write_json(run_dir / "config.json", cfg)
    write_json(
        run_dir / "split.json",
        {
            **{k: [articles[i].id for i in v] for k, v in split.items()},
            "duplicates": dups,
            "corpus_fingerprint": bbc.fingerprint(articles),
        },
    )
    model, history, vocab, data, seconds = fit(
        cfg, articles, split, device, on_epoch_end=on_epoch_end, run_dir=run_dir, progress=progress
    )
    vocab.save(run_dir / "vocab.json")
    cover = sum(len(s) < cfg["data"]["max_len"] for s in data["train"].ids) / len(data["train"])
    test_pred = predict(model, data["test"], device=device).argmax(1).numpy()
    svm_pred = tfidf_svm([texts[i] for i in split["train"]], data["train"].labels, [texts[i] for i in split["test"]])
    best = min(history, key=lambda h: h["val_loss"])
    metrics = {
        "test": classification_metrics(data["test"].labels, test_pred, labels),
        "val": {"accuracy": best["val_acc"], "loss": best["val_loss"], "best_epoch": best["epoch"]},
        "baseline_tfidf_svm": classification_metrics(data["test"].labels, svm_pred, labels),
        "duplicates": dups,
        "vocab_size": len(vocab),
        "max_len_coverage_train": cover,
        "length_p95_train": length_quantile([texts[i] for i in split["train"]]),
        "train_seconds": seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": library_versions(),
    }
    write_report(run_dir, history, metrics, labels)
    torch.save(checkpoint(model, cfg, vocab), run_dir / "model.pt")
    log.info(
        "test accuracy %.4f macro-F1 %.4f | TF-IDF+SVM accuracy %.4f | %.0fs -> %s",
        metrics["test"]["accuracy"],
        metrics["test"]["macro_f1"],
        metrics["baseline_tfidf_svm"]["accuracy"],
        seconds,
        run_dir,
    )
    return metrics
