"""analyze-classifier: error analysis of the exported ONNX classifier on the test split its manifest records.

Writes to ``--out`` (default runs/analysis-<stamp>): ``analysis.json`` with per-class precision / recall / F1,
every misclassified test article (id, title, true label, top-2 probabilities), calibration (expected
calibration error, 15 bins, and the reliability bins), a robustness table and the model's cost per article
(ms, one at a time and in chunks of 4); ``robustness.png`` and ``reliability.png``. Robustness: the same test
articles as the model sees them after one edit each:

* ``headline``: the first line only;
* ``first30``, ``first50``: the text up to the end of its 30th / 50th token (50: the course's setting);
* ``lower``, ``upper``: the whole article lower- / upper-cased;
* ``no_lead``: the headline and the body without its first paragraph (the lead, which states the topic);
* ``append2000``: the article followed by 2,000 tokens of test articles of the next topic in label order.

The TF-IDF + LinearSVC baseline, trained on every corpus article outside the test split (the model's train and
validation splits), is scored on the same edits. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np

from training.classifier import data as bbc
from training.common.cli import UserError, data_path, make_run_dir
from training.common.files import write_json

log = logging.getLogger(__name__)

APPEND_TOKENS = 2000
VARIANTS = ("original", "headline", "first30", "first50", "lower", "upper", "no_lead", "append2000")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="exported_models", help="exported models root or the classifier folder")
    parser.add_argument("--data-dir", help="the corpus the model was trained on (default $DATA_DIR/bbc)")
    parser.add_argument("--precision", default="fp32", help="fp32 | int8 | auto (as the runtime selects)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--out", default="runs", help="folder that receives the analysis folder")


def cut_tokens(text: str, pattern: re.Pattern, n: int) -> str:
    """The text up to the end of its n-th token (the whole text when it has fewer)."""
    for k, m in enumerate(pattern.finditer(text.lower()), 1):
        if k == n:
            return text[: m.end()]
    return text


def without_lead(text: str) -> str:
    """The headline and every paragraph after the first (paragraphs are separated by blank lines)."""
    parts = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "\n\n".join(parts[:1] + parts[2:]) if len(parts) > 2 else text


def variants(test: list[bbc.Article], pattern: re.Pattern) -> dict[str, list[str]]:
    by_label: dict[int, list[str]] = {}
    for a in test:
        by_label.setdefault(a.label, []).append(a.text)
    filler = {}  # label -> 2,000 tokens of the next topic's test articles, joined
    for label in by_label:
        other = by_label[(label + 1) % len(bbc.LABELS)] if (label + 1) % len(bbc.LABELS) in by_label else []
        filler[label] = cut_tokens("\n\n".join(other), pattern, APPEND_TOKENS)
    return {
        "original": [a.text for a in test],
        "headline": [a.text.split("\n", 1)[0] for a in test],
        "first30": [cut_tokens(a.text, pattern, 30) for a in test],
        "first50": [cut_tokens(a.text, pattern, 50) for a in test],
        "lower": [a.text.lower() for a in test],
        "upper": [a.text.upper() for a in test],
        "no_lead": [without_lead(a.text) for a in test],
        "append2000": [a.text + "\n\n" + filler[a.label] for a in test],
    }


def time_runtimes(runtimes: dict, texts: list[str], rounds: int) -> dict:
    """{name: {1: ms, 4: ms}} per article through each runtime: one at a time, and in length-sorted chunks of 4 (as
    the service batches), best of ``rounds`` passes over ``texts`` (tokenizing included); within a round the
    runtimes take turns, so that load on a shared host falls on all of them alike."""
    import time

    best = {n: {1: float("inf"), 4: float("inf")} for n in runtimes}
    for _ in range(rounds):
        for batch in (1, 4):
            for n, rt in runtimes.items():
                t0 = time.perf_counter()
                rt.predict_logits(texts, batch_size=batch)
                best[n][batch] = min(best[n][batch], 1000 * (time.perf_counter() - t0) / len(texts))
    return best


def cost_per_article(rt, texts: list[str], rounds: int = 3) -> dict:
    """ms per test article through the runtime at batch 1 and 4 (time_runtimes)."""
    best = time_runtimes({"model": rt}, texts, rounds)["model"]
    return {
        "ms_per_article_batch1": best[1],
        "ms_per_article_batch4": best[4],
        "precision": rt.precision,
        "articles": len(texts),
    }


def plot_robustness(path: Path, table: dict) -> None:
    from training.common.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(table))
    for k, (who, color) in enumerate((("model", "C0"), ("svm", "C1"))):
        vals = [table[v][who] for v in table]
        ax.bar(
            x + (k - 0.5) * 0.38, vals, 0.38, label="exported model" if who == "model" else "TF-IDF + SVM", color=color
        )
        for xi, val in zip(x, vals):
            ax.annotate(f"{val:.3f}", (xi + (k - 0.5) * 0.38, val), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(table))
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.08)
    ax.set_title("Robustness on the test split")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(path: Path, bins: list[dict], ece: float) -> None:
    from training.common.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], s=[8 + b["n"] for b in bins])
    for b in bins:
        ax.annotate(
            str(b["n"]), (b["confidence"], b["accuracy"]), xytext=(4, -10), textcoords="offset points", fontsize=7
        )
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability on the test split (ECE {ece:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    from runtime.classifier import ClassifierRuntime
    from training.classifier.baseline import tfidf_svm
    from training.classifier.calibration import ece, reliability
    from training.classifier.report import classification_metrics

    rt = ClassifierRuntime(args.models, provider="cpu", intra_threads=args.threads, precision=args.precision)
    if rt.labels != list(bbc.LABELS):
        raise UserError(f"model labels {rt.labels} differ from the corpus labels {list(bbc.LABELS)}")
    wanted = set((rt.manifest.get("split") or {}).get("test", []))
    if not wanted:
        raise UserError("the manifest records no test split: nothing to analyse")
    articles = bbc.read_corpus(data_path(args.data_dir, "bbc"))
    test = [a for a in articles if a.id in wanted]
    if len(test) != len(wanted):
        raise UserError(f"corpus holds {len(test)} of the {len(wanted)} test articles in the manifest")
    rest = [a for a in articles if a.id not in wanted]
    y = np.array([a.label for a in test])
    edits = variants(test, rt.pattern)

    probs = rt.predict_proba(edits["original"])
    pred = probs.argmax(1)
    metrics = classification_metrics(y, pred, rt.labels)
    errors = []
    for i in np.flatnonzero(pred != y):
        top = np.argsort(-probs[i])[:2]
        errors.append(
            {
                "id": test[i].id,
                "title": test[i].text.split("\n", 1)[0],
                "true": rt.labels[y[i]],
                "top2": [[rt.labels[k], float(probs[i, k])] for k in top],
                "true_probability": float(probs[i, y[i]]),
                "tokens": len(rt.tokenize(test[i].text)),
            }
        )
    calib = {
        "ece": ece(probs, y),
        "bins": reliability(probs, y),
        "mean_confidence": float(probs.max(1).mean()),
        "accuracy": metrics["accuracy"],
    }

    table = {}
    for name, texts in edits.items():
        p = probs if name == "original" else rt.predict_proba(texts)
        svm = tfidf_svm([a.text for a in rest], [a.label for a in rest], texts)
        table[name] = {
            "model": float((p.argmax(1) == y).mean()),
            "svm": float((svm == y).mean()),
            "mean_tokens": float(np.mean([len(rt.tokenize(t)) for t in texts])),
        }
        log.info("%-11s model %.4f  svm %.4f", name, table[name]["model"], table[name]["svm"])

    speed = cost_per_article(rt, edits["original"])
    log.info("cost per article (%s, %d thread): %s", rt.precision, args.threads, speed)
    out = make_run_dir(args.out, "analysis")
    result = {
        "model": {
            "precision": rt.precision,
            "ensemble": rt.manifest.get("ensemble"),
            "created": rt.manifest.get("created"),
        },
        "n": len(test),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"],
        "errors": errors,
        "calibration": calib,
        "robustness": table,
        "speed": speed,
        "svm_trained_on": f"{len(rest)} corpus articles outside the test split",
    }
    write_json(out / "analysis.json", result)
    plot_robustness(out / "robustness.png", table)
    plot_reliability(out / "reliability.png", calib["bins"], calib["ece"])
    for e in errors:
        log.info("error %s %r: true %s, top-2 %s", e["id"], e["title"][:60], e["true"], e["top2"])
    print(
        json.dumps(
            {
                "out": str(out),
                "accuracy": metrics["accuracy"],
                "errors": len(errors),
                "ece": calib["ece"],
                "robustness": {k: round(v["model"], 4) for k, v in table.items()},
            }
        )
    )
    return 0
