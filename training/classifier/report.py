"""Classifier run report: metrics.json and PNG plots in the run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.common.files import write_json
from training.common.plots import plot_bars, plot_confusion, plot_curves


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/accuracy and the confusion matrix (rows = true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ks = list(range(len(labels)))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=ks, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=ks)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ks, average="macro", zero_division=0)),
        # per-class accuracy = recall: the share of each true class predicted correctly
        "per_class": {
            lab: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(support[k])}
            for k, lab in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
    }


def write_report(run_dir: str | Path, history: list[dict], metrics: dict, labels: list[str]) -> None:
    """metrics.json plus curves.png, lr.png, confusion.png, per_class.png."""
    run = Path(run_dir)
    write_json(run / "metrics.json", {**metrics, "history": history})
    epochs = [h["epoch"] for h in history]

    def series(key):
        return epochs, [h[key] for h in history]

    plot_curves(
        run / "loss.png",
        {"train": series("train_loss"), "val": series("val_loss")},
        "Cross-entropy (label-smoothed)",
        "epoch",
        "loss",
    )
    plot_curves(
        run / "accuracy.png", {"train": series("train_acc"), "val": series("val_acc")}, "Accuracy", "epoch", "accuracy"
    )
    plot_curves(
        run / "lr.png", {"lr": series("lr")}, "Learning rate (ReduceLROnPlateau)", "epoch", "learning rate", logy=True
    )
    test = metrics["test"]
    plot_confusion(
        run / "confusion.png",
        np.array(test["confusion_matrix"]),
        labels,
        f"Test confusion matrix (accuracy {test['accuracy']:.3f})",
    )
    per_class = {lab: v["recall"] for lab, v in test["per_class"].items()}
    lo = max(0.0, min(per_class.values(), default=0.0) - 0.05)
    plot_bars(
        run / "per_class.png", per_class, "Test accuracy per class", "accuracy", ylim=(lo, 1 + 0.1 * (1 - lo))
    )  # headroom for the value labels
