"""Model-level benchmarks: classifier ONNX Runtime vs TorchScript vs eager PyTorch, and int8 dynamic quantization.

torch is imported only inside the functions that time TorchScript / eager PyTorch; the service never imports it.
Timings interleave the backends round by round (so background noise hits all of them alike) and report medians.
"""
from __future__ import annotations

import math
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.texts import _read, articles, data_dir, prose
from runtime.manifest import load_manifest
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
    from training.classifier.model import ClassifierConfig, TextClassifier

    model = TextClassifier(ClassifierConfig.from_dict(manifest["config"]))
    model.load_state_dict(ts_module.state_dict())
    return model.eval()


def classifier_backends(folder: Path, threads: int = 1, rounds: int = 20, n_single: int = 16,
                        batch: int = 32) -> dict:
    """ms per article for ONNX Runtime, TorchScript and eager PyTorch at batch 1 and at batch ``batch``."""
    import torch

    torch.set_num_threads(threads)
    man = load_manifest(folder, "classifier")
    texts = [t for _, t in articles(limit=500, seed=1)]
    singles = [encode(man, [t]) for t in texts[:n_single]]
    big = encode(man, texts[n_single:n_single + batch])
    sess = make_session(folder / "model.onnx", "cpu", intra_threads=threads)
    ts = torch.jit.load(str(folder / "model.ts")).eval()
    eager = eager_classifier(man, ts)
    t_singles = [(torch.from_numpy(i), torch.from_numpy(n)) for i, n in singles]
    t_big = (torch.from_numpy(big[0]), torch.from_numpy(big[1]))
    # same answers first: the comparison is meaningless otherwise
    with torch.inference_mode():
        ref = eager(*t_big).numpy()
        diffs = {"torchscript": float(np.abs(ts(*t_big).numpy() - ref).max()),
                 "onnxruntime": float(np.abs(sess.run(None, {"ids": big[0], "lengths": big[1]})[0] - ref).max())}

    def ort_fn(inputs):
        return lambda: [sess.run(None, {"ids": i, "lengths": n}) for i, n in inputs]

    def torch_fn(model, inputs):
        def f():
            with torch.inference_mode():
                for i, n in inputs:
                    model(i, n)
        return f

    out = {"threads": threads, "rounds": rounds, "max_abs_logit_diff_vs_eager": diffs,
           "tokens_batch1_mean": float(np.mean([n[0] for _, n in singles])),
           "tokens_batch_mean": float(big[1].mean()), "batch": batch}
    for label, ort_in, t_in, per in (("batch1", singles, t_singles, len(singles)),
                                     (f"batch{batch}", [big], [t_big], batch)):
        med = interleaved({"onnxruntime": ort_fn(ort_in), "torchscript": torch_fn(ts, t_in),
                           "eager": torch_fn(eager, t_in)}, rounds)
        ms = {k: v / per * 1000 for k, v in med.items()}
        out[label] = {"ms_per_article": ms, "ort_speedup_vs_eager": ms["eager"] / ms["onnxruntime"],
                      "ort_speedup_vs_torchscript": ms["torchscript"] / ms["onnxruntime"],
                      "torchscript_speedup_vs_eager": ms["eager"] / ms["torchscript"]}
    return out


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def _test_articles(manifest: dict) -> tuple[list[str], list[int], str]:
    """The classifier's held-out test split (ids listed in the manifest), else every article of the corpus."""
    labels = {name: i for i, name in enumerate(manifest["labels"])}
    root = data_dir() / "bbc"
    ids = (manifest.get("split") or {}).get("test") or []
    if ids and all((root / i).is_file() for i in ids):
        return ([_read(root / i).strip() for i in ids], [labels[i.split("/")[0]] for i in ids],
                f"the {len(ids)}-article held-out test split")
    pairs = [(t, labels[topic]) for topic, t in articles(limit=10_000) if topic in labels]
    return [t for t, _ in pairs], [y for _, y in pairs], f"all {len(pairs)} BBC articles (train+test)"


def quantize_classifier(folder: Path, threads: int = 1, rounds: int = 15) -> dict:
    man = load_manifest(folder, "classifier")
    texts, ys, which = _test_articles(man)
    with tempfile.TemporaryDirectory() as tmp:
        q_path = Path(tmp) / "model.int8.onnx"
        _quantize(folder / "model.onnx", q_path)
        sessions = {"fp32": make_session(folder / "model.onnx", "cpu", threads),
                    "int8": make_session(q_path, "cpu", threads)}
        sizes = {"fp32": (folder / "model.onnx").stat().st_size, "int8": q_path.stat().st_size}
        preds = {}
        for k, s in sessions.items():
            p = []
            for i in range(0, len(texts), 32):
                ids, n = encode(man, texts[i:i + 32])
                p.extend(s.run(None, {"ids": ids, "lengths": n})[0].argmax(1).tolist())
            preds[k] = np.array(p)
        single = [encode(man, [t]) for t in texts[:16]]
        big = encode(man, texts[16:48])
        med1 = interleaved({k: (lambda s=s: [s.run(None, {"ids": i, "lengths": n}) for i, n in single])
                            for k, s in sessions.items()}, rounds)
        med32 = interleaved({k: (lambda s=s: s.run(None, {"ids": big[0], "lengths": big[1]}))
                             for k, s in sessions.items()}, rounds)
    y = np.array(ys)
    acc = {k: float((p == y).mean()) for k, p in preds.items()}
    return {"evaluated_on": which, "n": len(y), "accuracy": acc, "accuracy_change": acc["int8"] - acc["fp32"],
            "agreement": float((preds["int8"] == preds["fp32"]).mean()), "file_bytes": sizes,
            "speedup_batch1": med1["fp32"] / med1["int8"], "speedup_batch32": med32["fp32"] / med32["int8"]}


def _bpc(sess, man: dict, text: str, streams: int = 64) -> float:
    index = {ch: i for i, ch in enumerate(man["vocab"])}
    ids = np.array([index.get(ch, man["unk_id"]) for ch in text], dtype=np.int64)
    n = len(ids) // streams
    ids = ids[: n * streams].reshape(streams, n)
    L, H = man["num_layers"], man["hidden_size"]
    h = np.zeros((L, streams, H), np.float32)
    c = np.zeros_like(h)
    nll = 0.0
    rows = np.arange(streams)
    for t in range(n - 1):
        logits, h, c = sess.run(None, {"ids": ids[:, t], "h": h, "c": c})
        m = logits.max(1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
        nll -= float(logp[rows, ids[:, t + 1]].sum())
    return nll / (streams * (n - 1)) / math.log(2)


def quantize_generator(folder: Path, threads: int = 1, rounds: int = 10, eval_chars: int = 64_000) -> dict:
    """bits per character of fp32 vs int8 on the last ``eval_chars`` characters of the canon (the tail of the
    corpus, i.e. the validation side of a head/tail split), and step / prefill speed ratios."""
    man = load_manifest(folder, "generator")
    text = prose()[-eval_chars:]
    L, H = man["num_layers"], man["hidden_size"]
    index = {ch: i for i, ch in enumerate(man["vocab"])}
    prompt = np.array([[index.get(ch, man["unk_id"]) for ch in prose()[:2000]]], dtype=np.int64)
    zeros = {"h": np.zeros((L, 1, H), np.float32), "c": np.zeros((L, 1, H), np.float32)}
    out: dict = {"evaluated_on": f"last {len(text):,} characters of the canon"}
    with tempfile.TemporaryDirectory() as tmp:
        steps, prefills = {}, {}
        for name in ("step", "prefill"):
            _quantize(folder / f"{name}.onnx", Path(tmp) / f"{name}.int8.onnx")
        for k, suffix in (("fp32", ".onnx"), ("int8", ".int8.onnx")):
            base = folder if k == "fp32" else Path(tmp)
            steps[k] = make_session(base / f"step{suffix}", "cpu", threads)
            prefills[k] = make_session(base / f"prefill{suffix}", "cpu", threads)
        out["bpc"] = {k: _bpc(s, man, text) for k, s in steps.items()}
        one = np.array([5], dtype=np.int64)
        step_med = interleaved({k: (lambda s=s: [s.run(None, {"ids": one, **zeros}) for _ in range(100)])
                                for k, s in steps.items()}, rounds)
        pre_med = interleaved({k: (lambda s=s: s.run(None, {"ids": prompt, **zeros}))
                               for k, s in prefills.items()}, rounds)
    out["bpc_change"] = out["bpc"]["int8"] - out["bpc"]["fp32"]
    out["step_speedup"] = step_med["fp32"] / step_med["int8"]
    out["prefill_speedup"] = pre_med["fp32"] / pre_med["int8"]
    out["step_ms"] = {k: v / 100 * 1000 for k, v in step_med.items()}
    return out


def int8_copy(models: Path, dest: Path) -> Path:
    """A copy of the exported-models root with every ONNX graph int8-quantized (dynamic) and the manifests
    re-hashed, so the service can be benchmarked on it (``python -m loadtests.bench --int8``)."""
    import json
    import shutil

    from runtime.manifest import MANIFEST, write_manifest

    for kind in ("classifier", "generator"):
        src, dst = models / kind, dest / kind
        load_manifest(src, kind)
        shutil.copytree(src, dst, dirs_exist_ok=True)
        for onnx_file in sorted(dst.glob("*.onnx")):
            tmp = onnx_file.with_suffix(".int8.tmp")
            _quantize(onnx_file, tmp)
            tmp.replace(onnx_file)
        doc = json.loads((dst / MANIFEST).read_text())
        for key in ("files", "format_version"):
            doc.pop(key, None)
        doc["quantized"] = "int8 dynamic (onnxruntime.quantization.quantize_dynamic) by loadtests.bench --int8"
        write_manifest(dst, doc)
    return dest


def generator_in_process(folder: Path, threads: int = 1, chars: int = 2000) -> dict:
    """chars/s of one stream with no server in between (runtime.generator.generate: sample + step per
    character): the ceiling that the HTTP figure is compared with."""
    from runtime.generator import GeneratorRuntime, generate

    rt = GeneratorRuntime(folder, "cpu", threads)
    "".join(generate(rt, "Holmes", 50, seed=0))     # warm-up
    rates = []
    for seed in range(3):
        t0 = time.perf_counter()
        n = len("".join(generate(rt, "Holmes", chars, temperature=0.8, top_k=20, seed=seed)))
        rates.append(n / (time.perf_counter() - t0))
    return {"threads": threads, "chars": chars, "chars_per_s": statistics.median(rates)}
