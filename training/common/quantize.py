"""``quantize``: int8 variants of exported ONNX graphs, measured against fp32 and accepted only above a quality bar.

    quantize_file(src, dst)           onnxruntime.quantization.quantize_dynamic with QInt8 weights
    quantize_role(kind, role, ...)    an LSTM generator's step and decode graphs row-wise (rowint8.py), others so
    classifier_quality(...)           held-out accuracy fp32 vs int8, agreement, max abs logit difference
    generator_quality(...)            bits/char fp32 vs int8, teacher forced through the step graphs
    add_int8_classifier / _generator  quantize + measure + record the manifest's "precisions" entry
    quantize_folder(folder, data)     the same for an already exported folder, its evaluation data read from disk

Both export commands call ``add_int8_*`` on the folder they have just written; ``python -m training quantize``
calls ``quantize_folder`` on each folder of an exported-models root (no checkpoint needed). The fp32 files are
only read. A variant that misses its bar is still written, with ``"accepted": false``, so the runtime's ``auto``
keeps fp32; the ``quantize`` command then exits 1. Schema and rule: docs/export_format.md. No torch, and nothing
from training.classifier or training.generator: the quality is measured through the serving runtime.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.manifest import MANIFEST, load_manifest, precision_variants, write_manifest
from training.common.cli import DATA_DIR_ENV, UserError
from training.common.files import read_text

METHOD = "onnxruntime.quantization.quantize_dynamic: QInt8 weights (per tensor), activations quantized at run time"
# the generator's step graph runs batches of streams: its activations get one scale per row (a stream's numbers do not
# depend on its batch-mates); the prefill graph reads one prompt per call, where per tensor is per stream already
GENERATOR_METHOD = (
    "step and decode: training.common.rowint8 (int8 weights per output column, activations quantized per row at run "
    "time: batch-independent); prefill: " + METHOD + " (one prompt per call)"
)
# acceptance bars (docs/export_format.md): int8 must not lose accuracy / may cost at most 0.005 bits per char
CLASSIFIER_BAR = {"min_accuracy_change": 0.0, "min_agreement": 0.995}
GENERATOR_BAR = {"max_bits_per_char_change": 0.005}
EVAL_CHARS = 64_000  # the canon's last characters: inside the 5% validation tail the generator never trained on
STREAMS = 64  # parallel teacher-forced rows of the bits/char evaluation
PREFILL_CHARS = 1000  # prompt read by both prefill graphs for the informational prefill comparison


def int8_name(name: str) -> str:
    """model.onnx -> model.int8.onnx"""
    return name[: -len(".onnx")] + ".int8.onnx"


def quantize_file(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of one ONNX graph (weights QInt8; MatMul/Gather/LSTM become integer ops)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its "consider pre-processing" advice is for static (calibrated) quantization
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def quantize_role(kind: str, role: str, src: Path, dst: Path, weights: dict | None = None) -> None:
    """The int8 variant of one graph of an exported folder. With an LSTM generator's ``weights``
    (rowint8.lstm_weights of its fp32 step graph): the step graph row-wise, and the decode graph with that same
    row-wise step inside; every other graph dynamically quantized."""
    if kind == "generator" and weights is not None and role in ("step", "decode"):
        import onnx

        from training.common.decode_graph import decode_graph
        from training.common.rowint8 import step_graph

        onnx.save(step_graph(weights) if role == "step" else decode_graph(weights), str(dst))
    else:
        quantize_file(src, dst)


# ------------------------------------------------------------------ quality
def _int8_twin(runtime, files: dict, **sessions):
    """A shallow copy of an fp32 runtime running the int8 graphs: same encoding and code, other sessions, and
    ``.precision`` "int8", so it runs as the runtime runs int8 (the classifier: each text alone). Opening the
    folder with precision="int8" would warn instead: the variant is not accepted before it is measured."""
    twin = copy.copy(runtime)
    for name, sess in sessions.items():
        setattr(twin, name, sess)
    twin.precision, twin.files = "int8", dict(files)
    return twin


def classifier_quality(
    folder: Path, int8_files: dict, texts: list[str], labels: list[int], evaluated_on: str, threads: int = 1
) -> tuple[dict, list[str]]:
    """fp32 and int8 on the same articles through ClassifierRuntime.predict_logits -> (quality, failures)."""
    from runtime.classifier import ClassifierRuntime
    from runtime.providers import make_session

    fp32 = ClassifierRuntime(folder, "cpu", threads, precision="fp32")
    int8 = _int8_twin(fp32, int8_files, session=make_session(folder / int8_files["model"], "cpu", threads))
    logits = {k: rt.predict_logits(texts) for k, rt in (("fp32", fp32), ("int8", int8))}  # (N, C) each
    y = np.asarray(labels)
    pred = {k: v.argmax(axis=1) for k, v in logits.items()}
    correct = {k: int((p == y).sum()) for k, p in pred.items()}
    n = len(y)
    q = {
        "evaluated_on": evaluated_on,
        "n": n,
        "accuracy": {k: v / n for k, v in correct.items()},
        "accuracy_change": (correct["int8"] - correct["fp32"]) / n,
        "agreement": float((pred["int8"] == pred["fp32"]).mean()),
        "max_abs_logit_diff": float(np.abs(logits["int8"] - logits["fp32"]).max()),
        "bar": dict(CLASSIFIER_BAR),
    }
    failures = []
    if q["accuracy_change"] < CLASSIFIER_BAR["min_accuracy_change"]:
        failures.append(f"accuracy {q['accuracy']['int8']:.4f} < fp32 {q['accuracy']['fp32']:.4f}")
    if q["agreement"] < CLASSIFIER_BAR["min_agreement"]:
        failures.append(f"agreement with fp32 {q['agreement']:.4f} < {CLASSIFIER_BAR['min_agreement']}")
    return q, failures


def bits_per_char(runtime, ids: np.ndarray, streams: int = STREAMS) -> float:
    """Mean -log2 p(next char) over ids (N,) cut into ``streams`` contiguous rows (B, n), each teacher forced
    through ``runtime.step`` from the zero state: one batched step call per position."""
    n = len(ids) // streams
    rows = ids[: n * streams].reshape(streams, n)  # (B, n)
    h, c = runtime.zero_state(streams)  # (L, B, H)
    b = np.arange(streams)
    nll = 0.0
    for t in range(n - 1):
        logits, h, c = runtime.step(rows[:, t], h, c)  # (B, V)
        z = logits.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll -= float(logp[b, rows[:, t + 1]].sum())
    return nll / (streams * (n - 1)) / math.log(2)


DECODE_CHECK_CHARS = 300
DECODE_CHECK_K = (1, 7, 64)


def decode_parity(runtime, chars: int = DECODE_CHECK_CHARS) -> dict:
    """The decode graph's text (``decode_steps``, K characters per call, for each K in DECODE_CHECK_K) vs the step
    graph's (``sample_next`` + ``advance`` per character), greedy and seeded -> {setting: {...}}."""
    from runtime.generator import sample_next

    out = {}
    for name, (t, k, p, seed) in {"greedy": (0.0, None, None, None), "seeded": (0.8, 20, 0.95, 3)}.items():
        state = runtime.start("Holmes", seed=seed)
        rng = runtime.rng_for(state)
        ref = []
        for _ in range(chars):  # the reference: one character per step call
            ref.append(sample_next(state.logits, t, k, p, rng))
            runtime.advance([state], ref[-1:])
        texts = {}
        for steps in DECODE_CHECK_K:
            state = runtime.start("Holmes", seed=seed)
            rng = runtime.rng_for(state)
            ids = []
            while len(ids) < chars:
                n = min(steps, chars - len(ids))
                dec = runtime.decode_steps([state], [rng], [(t, k, p)], n)
                dec.take(0, n, state, rng)
                ids += dec.ids[:, 0].tolist()
            texts[steps] = ids
        first = texts[DECODE_CHECK_K[0]]
        out[name] = {
            "chars": chars,
            "same_for_every_k": all(v == first for v in texts.values()),
            "equal_to_step_graph": first == ref,
            "first_difference": next((i for i, (a, b) in enumerate(zip(first, ref)) if a != b), None),
        }
    return out


def generator_quality(
    folder: Path, int8_files: dict, text: str, evaluated_on: str, threads: int = 1
) -> tuple[dict, list[str]]:
    """bits/char of fp32 and int8 step graphs on ``text`` (GeneratorRuntime.step) -> (quality, failures)."""
    from runtime.generator import GeneratorRuntime
    from runtime.providers import make_session

    fp32 = GeneratorRuntime(folder, "cpu", threads, precision="fp32")
    int8 = _int8_twin(
        fp32,
        int8_files,
        step_session=make_session(folder / int8_files["step"], "cpu", threads),
        prefill_session=make_session(folder / int8_files["prefill"], "cpu", threads),
        **(
            {"decode_session": make_session(folder / int8_files["decode"], "cpu", threads)}
            if "decode" in int8_files
            else {}
        ),
    )
    ids = fp32.encode(text)
    bpc = {k: bits_per_char(rt, ids) for k, rt in (("fp32", fp32), ("int8", int8))}
    prompt = ids[None, :PREFILL_CHARS]  # (1, T)
    after = {k: rt.prefill(prompt, *rt.zero_state(1))[0] for k, rt in (("fp32", fp32), ("int8", int8))}
    q = {
        "evaluated_on": evaluated_on,
        "n_chars": len(ids),
        "streams": STREAMS,
        "bits_per_char": bpc,
        "bits_per_char_change": bpc["int8"] - bpc["fp32"],
        "prefill_max_abs_logit_diff": float(np.abs(after["int8"] - after["fp32"]).max()),
        "bar": dict(GENERATOR_BAR),
    }
    failures = []
    if fp32.fused:
        # int8's decode graph runs the very step graph that was measured: its text must be the step graph's; fp32's
        # hand-built cell differs from the LSTM op by float rounding, so its equality is recorded, not required
        q["decode_parity"] = {k: decode_parity(rt) for k, rt in (("fp32", fp32), ("int8", int8))}
        for prec, checks in q["decode_parity"].items():
            for name, c in checks.items():
                if not c["same_for_every_k"] or (prec == "int8" and not c["equal_to_step_graph"]):
                    failures.append(f"{prec} decode graph: {name} text differs ({c})")
    if not q["bits_per_char_change"] <= GENERATOR_BAR["max_bits_per_char_change"]:
        failures.append(
            f"bits/char {bpc['int8']:.4f} vs fp32 {bpc['fp32']:.4f} "
            f"(+{q['bits_per_char_change']:.4f} > +{GENERATOR_BAR['max_bits_per_char_change']})"
        )
    return q, failures


# ------------------------------------------------------------------ folders
def _say(message: str) -> None:
    print(message, flush=True)


def add_fp32_decode(folder: Path, man: dict, weights: dict | None, say=_say) -> dict:
    """An LSTM generator's fp32 decode graph (decode_graph.py) from its step graph's ``weights``, written beside it
    and added to the fp32 files -> the manifest (not yet written). No weights (other kinds, cells): unchanged."""
    if weights is None:
        return man
    import onnx

    from training.common.decode_graph import decode_graph

    variants = precision_variants(man)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decode.onnx"
        onnx.save(decode_graph(weights, int8=False), str(out))
        shutil.move(str(out), folder / out.name)
    say(f"generator: decode.onnx {(folder / 'decode.onnx').stat().st_size / 1e6:.1f} MB (K characters per call)")
    fp32_files = {**variants["fp32"]["files"], "decode": "decode.onnx"}
    return {**man, "precisions": {**variants, "fp32": {**variants["fp32"], "files": fp32_files}}}


def quantize_graphs(folder: Path, kind: str, say=_say) -> tuple[dict, dict]:
    """Write <name>.int8.onnx beside every fp32 graph -> (manifest, {role: int8 filename}).

    Each file is quantized in a temporary folder and moved in complete (the folder never holds a partial graph or
    a stray file that write_manifest would hash); then the manifest is rewritten with the variant marked
    "not measured yet" (accepted false), so the folder verifies while it is measured, and stays safe if stopped."""
    from training.common.rowint8 import lstm_weights

    man = load_manifest(folder, kind)  # verifies the fp32 files first
    step = precision_variants(man)["fp32"]["files"].get("step")
    weights = lstm_weights(folder / step) if kind == "generator" else None  # read once, for both graphs
    man = add_fp32_decode(folder, man, weights, say)
    fp32_files = precision_variants(man)["fp32"]["files"]
    int8_files = {role: int8_name(name) for role, name in fp32_files.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for role, name in fp32_files.items():
            out = Path(tmp) / int8_files[role]
            quantize_role(kind, role, folder / name, out, weights)
            say(
                f"{kind}: {name} {(folder / name).stat().st_size / 1e6:.1f} MB -> "
                f"{out.name} {out.stat().st_size / 1e6:.1f} MB"
            )
            shutil.move(str(out), folder / out.name)
    write_int8_entry(folder, man, {"files": int8_files, "accepted": False, "verdict": "not measured yet"})
    return man, int8_files


def write_int8_entry(folder: Path, man: dict, entry: dict) -> None:
    """Rewrite the manifest with its "precisions" entry; every other key is kept as it was."""
    doc = {k: v for k, v in man.items() if k != "files"}  # write_manifest re-hashes every file
    doc["precisions"] = {"fp32": {"files": precision_variants(man)["fp32"]["files"]}, "int8": entry}
    write_manifest(folder, doc)


def _record(folder: Path, man: dict, int8_files: dict, quality: dict, failures: list[str]) -> dict:
    """The measured int8 entry, written to the manifest -> the entry."""
    from importlib import metadata

    entry = {
        "files": int8_files,
        # a decode graph is made exactly when the step graph is an LSTM's, rebuilt row-wise (quantize_graphs)
        "method": GENERATOR_METHOD if "decode" in int8_files else METHOD,
        "accepted": not failures,
        "verdict": "; ".join(failures) if failures else "meets the bar",
        "quality": quality,
        "quantized_with": {k: metadata.version(k) for k in ("onnxruntime", "onnx")},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_int8_entry(folder, man, entry)
    return entry


def add_int8_classifier(
    folder: Path, texts: list[str], labels: list[int], evaluated_on: str, threads: int = 1, say=_say
) -> dict:
    """Quantize an exported classifier folder, measure int8 on the labelled texts, record it -> the int8 entry."""
    man, int8_files = quantize_graphs(folder, "classifier", say)
    say(f"classifier: fp32 vs int8 on {evaluated_on} ...")
    quality, failures = classifier_quality(folder, int8_files, texts, labels, evaluated_on, threads)
    entry = _record(folder, man, int8_files, quality, failures)
    say(
        f"classifier: accuracy {quality['accuracy']['fp32']:.4f} -> {quality['accuracy']['int8']:.4f}, "
        f"agreement {quality['agreement']:.4f}, max |logit diff| {quality['max_abs_logit_diff']:.3g}: "
        + ("accepted" if entry["accepted"] else f"REJECTED ({entry['verdict']})")
    )
    return entry


def add_int8_generator(folder: Path, text: str, evaluated_on: str, threads: int = 1, say=_say) -> dict:
    """Quantize an exported generator folder, measure bits/char of int8 on ``text``, record it -> the int8 entry."""
    man, int8_files = quantize_graphs(folder, "generator", say)
    say(f"generator: bits/char of fp32 and int8 on {evaluated_on} ({STREAMS} teacher-forced streams) ...")
    quality, failures = generator_quality(folder, int8_files, text, evaluated_on, threads)
    entry = _record(folder, man, int8_files, quality, failures)
    q = quality["bits_per_char"]
    say(
        f"generator: bits/char {q['fp32']:.4f} -> {q['int8']:.4f} ({quality['bits_per_char_change']:+.4f}): "
        + ("accepted" if entry["accepted"] else f"REJECTED ({entry['verdict']})")
    )
    return entry


def classifier_test_split(manifest: dict, bbc_root: Path) -> tuple[list[str], list[int], str]:
    """The held-out test articles named in the manifest (``split.test`` ids, ``topic/nnn.txt``), read as training
    read them (text stripped) -> (texts, labels, description)."""
    ids = (manifest.get("split") or {}).get("test") or []
    if not ids:
        raise UserError("the classifier manifest records no test split: nothing held out to measure int8 on")
    missing = [i for i in ids if not (bbc_root / i).is_file()]
    if missing:
        raise UserError(f"{bbc_root}: {len(missing)} of the {len(ids)} test articles are missing, e.g. {missing[0]}")
    labels = list(manifest["labels"])
    return (
        [read_text(bbc_root / i).strip() for i in ids],
        [labels.index(i.split("/")[0]) for i in ids],
        f"the {len(ids)}-article held-out test split",
    )


def canon_tail(path: Path, chars: int = EVAL_CHARS) -> tuple[str, str]:
    """The last ``chars`` characters of the canon -> (text, description)."""
    if not path.is_file():
        raise UserError(f"text to measure the int8 generator on not found: {path}")
    text = read_text(path)[-chars:]
    return text, f"the last {len(text):,} characters of {path.name}"


def quantize_folder(folder: Path, data_dir: Path, threads: int = 1, say=_say) -> dict:
    """add_int8_* on an exported model folder, its evaluation data under ``data_dir`` -> the int8 entry."""
    man = load_manifest(folder, verify=False)  # add_int8_* verify it before they write anything
    kind = man.get("kind")
    if kind == "classifier":
        texts, labels, which = classifier_test_split(man, data_dir / "bbc")
        return add_int8_classifier(folder, texts, labels, which, threads, say)
    if kind == "generator":
        text, which = canon_tail(data_dir / "sherlock" / "canon.txt")
        return add_int8_generator(folder, text, which, threads, say)
    raise UserError(f"{folder / MANIFEST}: unknown kind {kind!r}")


# ------------------------------------------------------------------ command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "add int8 variants (model.int8.onnx; step/prefill.int8.onnx) to already exported model folders "
        "and record their measured quality in the manifests; exit code 1 when one misses its bar "
        "(it is then recorded with accepted=false and the runtime's auto keeps fp32)"
    )
    p.add_argument("--models", default="exported_models", help="exported-models root, or one model folder")
    p.add_argument("--data-dir", help="corpus root holding bbc/ and sherlock/canon.txt; unset: $DATA_DIR")
    p.add_argument("--only", choices=["classifier", "generator"], help="just this model of the root")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the evaluation")


def main(args) -> int:
    models = Path(args.models)
    if (models / MANIFEST).is_file():  # one model folder
        folders = [models]
    elif args.only:
        folders = [models / args.only]
    else:
        folders = [models / k for k in ("classifier", "generator") if (models / k / MANIFEST).is_file()]
        if not folders:
            raise UserError(f"{models}: no classifier/ or generator/ folder with a {MANIFEST}")
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        raise UserError(
            f"no data directory: pass --data-dir or set ${DATA_DIR_ENV} "
            "(the evaluation reads bbc/ and sherlock/canon.txt below it)"
        )
    rejected = []
    for folder in folders:
        t0 = time.perf_counter()
        entry = quantize_folder(folder, Path(data_dir), args.threads)
        print(f"{folder}: manifest updated ({time.perf_counter() - t0:.0f} s)", flush=True)
        if not entry["accepted"]:
            rejected.append(f"{folder.name}: {entry['verdict']}")
    if rejected:
        print(
            f"error: int8 missed its quality bar ({'; '.join(rejected)}); recorded with accepted=false, "
            "so precision auto keeps fp32",
            file=sys.stderr,
        )
        return 1
    return 0
