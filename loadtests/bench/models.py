"""Model-level benchmarks: classifier ONNX Runtime vs TorchScript vs eager PyTorch, and int8 vs fp32.

The int8 variants and their quality come from the exported folders (``precisions`` in the manifests, written by the
exports or ``python -m training quantize``); this module only times them.

torch is imported only inside the functions that time TorchScript / eager PyTorch; the service never imports it.
Timings interleave the backends round by round (so background noise hits all of them alike) and report medians.
"""

from __future__ import annotations

import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.texts import articles, data_dir, prose
from runtime.manifest import load_manifest, precision_variants
from runtime.providers import make_session


def encode(manifest: dict, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ids (B, T) int64 right-padded with 0 and lengths (B,), per docs/export_format.md."""
    tok = manifest["tokenizer"]
    pat = re.compile(tok["pattern"])
    index = {t: i for i, t in enumerate(manifest["vocab"])}
    seqs = []
    for text in texts:
        words = pat.findall(text.lower() if tok.get("lowercase", True) else text)[: manifest["max_len"]]
        seqs.append([index.get(w, 1) for w in words] or [1])
    ids = np.zeros((len(seqs), max(map(len, seqs))), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return ids, np.array([len(s) for s in seqs], dtype=np.int64)


def interleaved(fns: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calling them in a shuffled order every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    rng = random.Random(0)
    names = list(fns)
    for _ in range(rounds):
        rng.shuffle(names)
        for k in names:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def eager_classifier(manifest: dict, ts_module):
    """training.classifier.model.TextClassifier (the model that was exported) in eager mode, as a plain PyTorch web
    server would run it, with the TorchScript module's weights."""
    from training.classifier.model import from_manifest

    model = from_manifest(manifest)
    model.load_state_dict(ts_module.state_dict())
    return model.eval()


def classifier_backends(folder: Path, threads: int = 1, rounds: int = 20, n_single: int = 16, batch: int = 32) -> dict:
    """ms per article for ONNX Runtime, TorchScript and eager PyTorch at batch 1 and at batch ``batch``."""
    import torch

    torch.set_num_threads(threads)
    man = load_manifest(folder, "classifier")
    texts = [t for _, t in articles(limit=500, seed=1)]
    singles = [encode(man, [t]) for t in texts[:n_single]]
    big = encode(man, texts[n_single : n_single + batch])
    sess = make_session(folder / "model.onnx", "cpu", intra_threads=threads)
    ts = torch.jit.load(str(folder / "model.ts")).eval()
    eager = eager_classifier(man, ts)
    t_singles = [(torch.from_numpy(i), torch.from_numpy(n)) for i, n in singles]
    t_big = (torch.from_numpy(big[0]), torch.from_numpy(big[1]))
    # same answers first: the comparison is meaningless otherwise
    with torch.inference_mode():
        ref = eager(*t_big).numpy()
        diffs = {
            "torchscript": float(np.abs(ts(*t_big).numpy() - ref).max()),
            "onnxruntime": float(np.abs(sess.run(None, {"ids": big[0], "lengths": big[1]})[0] - ref).max()),
        }

    def ort_fn(inputs):
        return lambda: [sess.run(None, {"ids": i, "lengths": n}) for i, n in inputs]

    def torch_fn(model, inputs):
        def f():
            with torch.inference_mode():
                for i, n in inputs:
                    model(i, n)

        return f

    out = {
        "threads": threads,
        "rounds": rounds,
        "max_abs_logit_diff_vs_eager": diffs,
        "tokens_batch1_mean": float(np.mean([n[0] for _, n in singles])),
        "tokens_batch_mean": float(big[1].mean()),
        "batch": batch,
    }
    for label, ort_in, t_in, per in (
        ("batch1", singles, t_singles, len(singles)),
        (f"batch{batch}", [big], [t_big], batch),
    ):
        med = interleaved(
            {"onnxruntime": ort_fn(ort_in), "torchscript": torch_fn(ts, t_in), "eager": torch_fn(eager, t_in)}, rounds
        )
        ms = {k: v / per * 1000 for k, v in med.items()}
        out[label] = {
            "ms_per_article": ms,
            "ort_speedup_vs_eager": ms["eager"] / ms["onnxruntime"],
            "ort_speedup_vs_torchscript": ms["torchscript"] / ms["onnxruntime"],
            "torchscript_speedup_vs_eager": ms["eager"] / ms["torchscript"],
        }
    return out


def _int8_folder(folder: Path, kind: str, tmp: Path) -> Path:
    """``folder`` when its manifest has an int8 variant (written by the export or ``python -m training quantize``),
    else a copy under ``tmp`` given one by the same code (training.common.quantize.quantize_folder)."""
    if "int8" in precision_variants(load_manifest(folder, kind)):
        return folder
    from training.common.quantize import quantize_folder

    shutil.copytree(folder, tmp / kind)
    quantize_folder(tmp / kind, data_dir())
    return tmp / kind


def quantize_classifier(folder: Path, threads: int = 1, rounds: int = 15) -> dict:
    """The int8 variant's quality as the manifest records it (held-out accuracy, agreement with fp32), its size,
    and its speed against fp32 at batch 1 and 32 on real articles."""
    from runtime.classifier import ClassifierRuntime

    with tempfile.TemporaryDirectory() as tmp:
        folder = _int8_folder(folder, "classifier", Path(tmp))
        rts = {p: ClassifierRuntime(folder, "cpu", threads, precision=p) for p in ("fp32", "int8")}
        man = rts["fp32"].manifest
        entry = precision_variants(man)["int8"]
        sizes = {p: (folder / rt.files["model"]).stat().st_size for p, rt in rts.items()}
    texts = [t for _, t in articles(limit=500, seed=1)]
    single = [encode(man, [t]) for t in texts[:16]]
    big = encode(man, texts[16:48])
    sessions = {p: rt.session for p, rt in rts.items()}
    med1 = interleaved(
        {k: (lambda s=s: [s.run(None, {"ids": i, "lengths": n}) for i, n in single]) for k, s in sessions.items()},
        rounds,
    )
    med32 = interleaved(
        {k: (lambda s=s: s.run(None, {"ids": big[0], "lengths": big[1]})) for k, s in sessions.items()}, rounds
    )
    q = entry["quality"]
    return {
        "evaluated_on": q["evaluated_on"],
        "n": q["n"],
        "accuracy": q["accuracy"],
        "accuracy_change": q["accuracy_change"],
        "agreement": q["agreement"],
        "accepted": entry["accepted"],
        "file_bytes": sizes,
        "speedup_batch1": med1["fp32"] / med1["int8"],
        "speedup_batch32": med32["fp32"] / med32["int8"],
    }


def quantize_generator(folder: Path, threads: int = 1, rounds: int = 10) -> dict:
    """The int8 variant's bits per character as the manifest records it (the canon's last 64,000 characters,
    fp32 vs int8) and step / prefill speed ratios."""
    from runtime.generator import GeneratorRuntime

    with tempfile.TemporaryDirectory() as tmp:
        folder = _int8_folder(folder, "generator", Path(tmp))
        rts = {p: GeneratorRuntime(folder, "cpu", threads, precision=p) for p in ("fp32", "int8")}
    entry = precision_variants(rts["fp32"].manifest)["int8"]
    rt = rts["fp32"]
    prompt = rt.encode(prose()[:2000])[None]  # (1, 2000)
    zeros = dict(zip(("h", "c"), rt.zero_state(1)))
    one = np.array([5], dtype=np.int64)
    step_med = interleaved(
        {
            k: (lambda s=r.step_session: [s.run(None, {"ids": one, **zeros}) for _ in range(100)])
            for k, r in rts.items()
        },
        rounds,
    )
    pre_med = interleaved(
        {k: (lambda s=r.prefill_session: s.run(None, {"ids": prompt, **zeros})) for k, r in rts.items()}, rounds
    )
    q = entry["quality"]
    return {
        "evaluated_on": q["evaluated_on"],
        "bpc": q["bits_per_char"],
        "bpc_change": q["bits_per_char_change"],
        "accepted": entry["accepted"],
        "step_speedup": step_med["fp32"] / step_med["int8"],
        "prefill_speedup": pre_med["fp32"] / pre_med["int8"],
        "step_ms": {k: v / 100 * 1000 for k, v in step_med.items()},
    }
