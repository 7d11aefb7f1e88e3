"""export-classifier: checkpoint -> exported_models/classifier/{model.onnx, model.ts, model.int8.onnx, manifest.json}.

model.ts is the traced model (its graph has no packed sequences: see training/classifier/model.py); model.onnx is
built by hand from the weights (training/classifier/onnx_graph.py: one bidirectional RNN op per layer with
``sequence_lens``, so each row stops at its own length), or traced too for a model with the wide branch. Both have
dynamic batch and length. Then both files are checked against eager PyTorch on real articles of several lengths and
batch sizes (one-token rows beside the longest article included);
the eager model is also compared with the packed-sequence reference. Above ``--tolerance`` max abs logit
difference nothing is written. Then model.onnx is dynamically quantized to model.int8.onnx and measured on the
held-out test split (training.common.quantize); the manifest's ``precisions`` entry records the numbers and whether
int8 met its bar (a miss is a warning, not a failed export: the runtime then keeps fp32). The folder follows
docs/export_format.md; serving reads it without torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from runtime.manifest import write_manifest
from runtime.providers import make_session
from training.classifier import data as bbc
from training.classifier import onnx_graph
from training.classifier.model import ClassifierConfig, Ensemble, TextClassifier, reference_forward
from training.classifier.tokenizer import Vocab
from training.classifier.train import collate
from training.common.cli import UserError, data_path
from training.common.devices import library_versions
from training.common.files import read_json
from training.common.quantize import add_int8_classifier

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 3, 8, 16, 32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir",
        nargs="+",
        help="a train-classifier run folder (holds model.pt, split.json, metrics.json); several "
        "runs on the same split and vocabulary (e.g. --seed 0, 1, 2) export their ensemble as "
        "one graph",
    )
    parser.add_argument(
        "--temperature",
        default="1",
        help="divide the output logits by T: a number, or 'fit' (T minimising the validation NLL)",
    )
    parser.add_argument(
        "--cv",
        metavar="CV_JSON:NAME",
        help="record model NAME's cross-validation figures from a cv-classifier run's cv.json (accuracy mean ± std "
        "beside the SVM's on the same folds, the paired interval, out-of-fold ECE) in the manifest: the figures "
        "that rank models (the test split's are kept as a secondary figure)",
    )
    parser.add_argument("--out", default="exported_models", help="exported models root; writes <out>/classifier")
    parser.add_argument("--data-dir", help="corpus for the parity check (default: the run's, or $DATA_DIR/bbc)")
    parser.add_argument("--csv", help="read the parity corpus from a CSV instead")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference allowed")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--threads", type=int, default=1)


def load_checkpoint(path: str | Path) -> tuple[TextClassifier, dict]:
    path = Path(path)
    path = path / "model.pt" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"no checkpoint at {path} (run train-classifier first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: no pickled classes
    model = TextClassifier(ClassifierConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def parity_batches(texts: list[str], vocab: Vocab, max_len: int) -> list[list[list[int]]]:
    """Batches of real articles: each batch size over short, median and longest articles, and mixed."""
    enc = sorted((vocab.encode(t, max_len) for t in texts), key=len)
    n = len(enc)
    out = []
    for b in BATCH_SIZES:
        b = min(b, n)
        out += [enc[:b], enc[n // 2 : n // 2 + b], enc[n - b :], enc[:: max(1, n // b)][:b]]
    # a headline-only input, a one-token input; one-token rows beside the longest article
    one = [vocab.encode("the")[0]]
    out += [[vocab.encode(texts[0].split("\n")[0], max_len), one], [one, enc[-1], one]]
    return out


def export(model: TextClassifier, folder: Path, opset: int) -> None:
    ids, lengths = collate([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7]])  # example input; B and T stay dynamic
    with torch.no_grad():
        ts = torch.jit.trace(model, (ids, lengths), check_trace=False)
    ts.save(str(folder / "model.ts"))
    if onnx_graph.supported(model):
        onnx_graph.save(model, folder / "model.onnx", opset)
        return
    # the wide (TF-IDF) branch is not in the hand-built graph: trace it (its RNNs then run over the padded length)
    torch.onnx.export(
        model,
        (ids, lengths),
        str(folder / "model.onnx"),
        input_names=["ids", "lengths"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={"ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}},
    )


def check_parity(model: TextClassifier | Ensemble, folder: Path, batches) -> dict:
    ts = torch.jit.load(str(folder / "model.ts"))
    sess = make_session(folder / "model.onnx", provider="cpu")
    worst = {"onnx": 0.0, "torchscript": 0.0, "packed_reference": 0.0}
    cases = []
    with torch.no_grad():
        for seqs in batches:
            ids, lengths = collate(seqs)
            ref = model(ids, lengths).numpy()
            onnx = sess.run(["logits"], {"ids": ids.numpy(), "lengths": lengths.numpy()})[0]
            diff = {
                "onnx": float(np.abs(onnx - ref).max()),
                "torchscript": float(np.abs(ts(ids, lengths).numpy() - ref).max()),
                "packed_reference": float(np.abs(reference_forward(model, ids, lengths).numpy() - ref).max()),
            }
            cases.append({"batch": len(seqs), "min_len": int(lengths.min()), "max_len": int(lengths.max()), **diff})
            worst = {k: max(worst[k], diff[k]) for k in worst}
    return {"max_abs_diff": worst, "cases": cases}


def load_runs(run_dirs: list[str]) -> list[tuple[TextClassifier, dict, dict, dict]]:
    """(model, checkpoint, split, metrics) per run; several runs must share split, vocabulary and config."""
    runs = []
    for r in map(Path, run_dirs):
        model, ckpt = load_checkpoint(r)
        for name in ("split.json", "metrics.json"):
            if not (r / name).is_file():
                raise UserError(f"{r}: no {name} (pass a train-classifier run folder)")
        runs.append((model, ckpt, read_json(r / "split.json"), read_json(r / "metrics.json")))
    first = runs[0]
    for r, (_, ckpt, split, _) in zip(run_dirs[1:], runs[1:]):
        for what, a, b in (
            ("vocabulary", ckpt["vocab"], first[1]["vocab"]),
            ("max_len", ckpt["max_len"], first[1]["max_len"]),
            ("config", ckpt["config"], first[1]["config"]),
            ("split", split["test"], first[2]["test"]),
        ):
            if a != b:
                raise UserError(f"{r}: its {what} differs from {run_dirs[0]}'s; ensemble members must share it")
    return runs


def ensemble_of(runs, temperature: float = 1.0) -> Ensemble:
    ens = Ensemble([m.config for m, *_ in runs], temperature)
    for member, (model, *_) in zip(ens.members, runs):
        member.load_state_dict(model.state_dict())
    return ens.eval()


def score_model(model, texts: list[str], labels: list[int], vocab: Vocab, max_len: int) -> tuple[np.ndarray, dict]:
    """-> logits (N, C), classification metrics of the PyTorch model (for an ensemble's manifest entry)."""
    from training.classifier.report import classification_metrics
    from training.classifier.train import Encoded, predict

    logits = predict(model, Encoded([vocab.encode(t, max_len) for t in texts], labels)).numpy()
    return logits, classification_metrics(labels, logits.argmax(1), list(bbc.LABELS))


def cv_figures(spec: str) -> dict:
    """``CV_JSON:NAME`` -> the manifest's ``cv`` entry: NAME's and the SVM's accuracy over the same folds, their
    paired difference with its 95% interval, and NAME's out-of-fold ECE before and after temperature scaling."""
    from training.classifier.cv import COMPARE_WITH

    path, _, name = spec.rpartition(":")
    if not path or not Path(path).is_file():
        raise UserError(f"--cv must be CV_JSON:NAME with an existing cv.json, got {spec!r}")
    doc = read_json(path)
    models, pairs = doc["models"], doc["paired_accuracy"]
    if name not in models:
        raise UserError(f"--cv: {path} has no model {name!r}; it has {sorted(models)}")
    m, svm, pair = models[name], models[COMPARE_WITH], pairs[f"{name} - {COMPARE_WITH}"]

    def r(x):
        return round(float(x), 6)

    return {
        "model": name,
        "folds": doc["folds"],
        "articles": doc["n"],
        "accuracy_mean": r(m["accuracy_mean"]),
        "accuracy_std": r(m["accuracy_std"]),
        "macro_f1_mean": r(m["macro_f1_mean"]),
        "errors": int(round((1 - m["pooled_accuracy"]) * doc["n"])),
        "svm_accuracy_mean": r(svm["accuracy_mean"]),
        "svm_accuracy_std": r(svm["accuracy_std"]),
        "svm_errors": int(round((1 - svm["pooled_accuracy"]) * doc["n"])),
        "minus_svm": r(pair["mean"]),
        "minus_svm_ci95": [r(x) for x in pair["ci95"]],
        "discordant": {"only_model_right": pair["only_a_right"], "only_svm_right": pair["only_b_right"]},
        # out-of-fold ECE over all articles at once where the run has it, else the mean of the folds' ECE
        **{k: r(m.get("oof_" + k, m.get(k + "_mean"))) for k in ("ece", "ece_scaled") if k + "_mean" in m},
        "source": str(path),
    }


def main(args) -> int:
    from training.classifier.calibration import ece, fit_temperature, softmax

    torch.set_num_threads(args.threads)
    fixed_t = None
    if args.temperature != "fit":
        try:
            fixed_t = float(args.temperature)
            if not fixed_t > 0:
                raise ValueError
        except ValueError:
            raise UserError(f"--temperature must be a number > 0 or 'fit', got {args.temperature!r}") from None
    cv = cv_figures(args.cv) if args.cv else None
    runs = load_runs(args.run_dir)
    model, ckpt, split, metrics = runs[0]
    data_cfg = ckpt["run_config"]["data"]
    csv_path = args.csv or (None if args.data_dir else data_cfg.get("csv"))
    articles = bbc.read_corpus(
        None if csv_path else data_path(args.data_dir or data_cfg.get("data_dir"), "bbc"), csv_path
    )
    by_id = {a.id: a for a in articles}
    missing = [i for i in split["test"] + split.get("val", []) if i not in by_id]
    if missing:
        raise UserError(f"corpus lacks {len(missing)} test/val article(s) of the run, e.g. {missing[0]}")
    vocab, max_len = Vocab(ckpt["vocab"]), ckpt["max_len"]
    batches = parity_batches([by_id[i].text for i in split["test"]], vocab, max_len)
    t, v = metrics["test"], metrics["val"]["accuracy"]
    ensemble = calibration = None
    if len(runs) > 1 or fixed_t != 1.0:  # one run at T = 1 exports exactly the trained model
        model = ensemble_of(runs)
        val = [by_id[i] for i in split["val"]]
        val_logits, val_m = score_model(model, [a.text for a in val], [a.label for a in val], vocab, max_len)
        temp = fixed_t or fit_temperature(val_logits, np.array([a.label for a in val]))
        test = [by_id[i] for i in split["test"]]
        raw, t = score_model(model, [a.text for a in test], [a.label for a in test], vocab, max_len)
        model.temperature.fill_(temp)
        test_logits = raw / temp  # Ensemble.forward divides by T last; T > 0 keeps every argmax (and so t)
        v = val_m["accuracy"]
        ty = np.array([a.label for a in test])
        calibration = {
            "method": "temperature scaling: the output logits are divided by T inside the graph, so every "
            "probability the runtime and /classify give is the calibrated one",
            "temperature": temp,
            "fitted_on": f"the {len(val)}-article validation split (minimum NLL)" if fixed_t is None else "fixed",
            "ece_bins": 15,
            "test_ece_before": ece(softmax(raw), ty),
            "test_ece": ece(softmax(test_logits), ty),
            "test_mean_confidence": float(softmax(test_logits).max(1).mean()),
            **({"cv_ece_before": cv["ece"], "cv_ece": cv["ece_scaled"]} if cv and "ece_scaled" in cv else {}),
        }
        log.info("T = %.3f: test ECE %.3f -> %.3f", temp, calibration["test_ece_before"], calibration["test_ece"])
        ensemble = {
            "members": len(runs),
            "temperature": temp,
            "runs": [Path(r).name for r in args.run_dir],
            "seeds": [c["run_config"].get("train", {}).get("seed") for _, c, _, _ in runs],
            "member_test_accuracy": [m["test"]["accuracy"] for *_, m in runs],
            "train_seconds": [m.get("train_seconds") for *_, m in runs],
        }
        log.info(
            "ensemble of %d: test accuracy %.4f (members %s), T = %.3f",
            len(runs),
            t["accuracy"],
            ensemble["member_test_accuracy"],
            temp,
        )

    out = Path(args.out) / "classifier"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".classifier-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        export(model, tmp, args.opset)
        parity = check_parity(model, tmp, batches)
        worst = max(parity["max_abs_diff"].values())
        log.info("parity over %d batches: %s", len(batches), parity["max_abs_diff"])
        if not worst <= args.tolerance:
            raise UserError(
                f"parity check failed: max abs logit difference {worst:.3g} > {args.tolerance:g} "
                f"({parity['max_abs_diff']}); nothing exported"
            )
        b = metrics["baseline_tfidf_svm"]
        write_manifest(
            tmp,
            {
                "kind": "classifier",
                "labels": ckpt["labels"],
                "vocab": ckpt["vocab"],
                "tokenizer": ckpt["tokenizer"],
                "max_len": max_len,
                "config": ckpt["config"],
                "metrics": {
                    "test_accuracy": t["accuracy"],
                    "test_macro_f1": t["macro_f1"],
                    "test_n": t["n"],
                    "val_accuracy": v,
                    "baseline_tfidf_svm_accuracy": b["accuracy"],
                    "baseline_tfidf_svm_macro_f1": b["macro_f1"],
                    "train_seconds": sum(m.get("train_seconds") or 0 for *_, m in runs),
                },
                **({"ensemble": ensemble} if ensemble else {}),
                **({"calibration": calibration} if calibration else {}),
                **({"cv": cv} if cv else {}),
                "corpus_fingerprint": split["corpus_fingerprint"],
                "versions": library_versions(),
                "parity": parity,
                "split": {"test": split["test"], "duplicates": split.get("duplicates")},
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )
        test = [by_id[i] for i in split["test"]]
        labels = [ckpt["labels"].index(bbc.LABELS[a.label]) for a in test]  # class ids in the manifest's order
        int8 = add_int8_classifier(
            tmp,
            [a.text for a in test],
            labels,
            f"the {len(test)}-article held-out test split",
            args.threads,
            say=log.info,
        )
        if not int8["accepted"]:
            log.warning(
                "int8 variant missed its bar (%s): recorded with accepted=false, fp32 stays the default",
                int8["verdict"],
            )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    q = int8["quality"]
    print(
        f"exported {out}: parity onnx {parity['max_abs_diff']['onnx']:.2e}, "
        f"torchscript {parity['max_abs_diff']['torchscript']:.2e}; int8 accuracy {q['accuracy']['int8']:.4f} "
        f"(fp32 {q['accuracy']['fp32']:.4f}), agreement {q['agreement']:.4f}: "
        + ("accepted" if int8["accepted"] else "not accepted")
    )
    return 0
