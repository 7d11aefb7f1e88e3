"""``export-generator``: a generator checkpoint -> step + prefill graphs (ONNX and TorchScript) + manifest.

Layout and signatures follow docs/export_format.md. Before anything is written to the model folder, the
export is checked for batch 1 and batch 8: ONNX Runtime and TorchScript logits must match PyTorch's within
``--tol`` after a prompt and along 500 greedy characters, and the greedy characters must be identical.
A failed check fails the export and leaves the previous folder untouched. Both graphs are then dynamically
quantized (step.int8.onnx, prefill.int8.onnx) and their bits per character measured against fp32 on the last
64,000 characters of the canon (``--text``; training.common.quantize); the manifest's ``precisions`` entry records
the numbers and whether int8 met its bar (a miss is a warning, not a failed export: the runtime then keeps fp32).
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from runtime.manifest import ArtifactError, write_manifest
from runtime.providers import make_session
from training.common.cli import UserError, data_path
from training.common.devices import library_versions
from training.common.files import read_json
from training.common.quantize import EVAL_CHARS, add_int8_generator, canon_tail

log = logging.getLogger(__name__)
# batch row b reads 32 characters of this passage starting at 9 * b
PASSAGE = (
    '     "You have been in Afghanistan, I perceive." "How on earth did you know that?" I asked in '
    "astonishment.\n\n     "
)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="best.pt, or a run folder holding one")
    p.add_argument("--out", default="exported_models", help="exported-models root; writes <out>/generator")
    p.add_argument("--check-chars", type=int, default=500, help="greedy characters compared across runtimes")
    p.add_argument("--tol", type=float, default=1e-4, help="largest allowed logit difference")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--model-id",
        default="sherlock-char-lstm",
        help="the model's name in the manifest: what /v1/models lists and /v1/completions' model field names",
    )
    p.add_argument(
        "--text",
        help=f"canon whose last {EVAL_CHARS:,} characters measure the int8 graphs "
        "(default $DATA_DIR/sherlock/canon.txt)",
    )


def _wrappers(model):
    import torch

    class Step(torch.nn.Module):
        """ids (B,), h, c (L, B, H) -> logits (B, V), h_out, c_out."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids, h, c):
            return self.model.forward_last(ids[:, None], h, c)

    class Prefill(Step):
        """ids (B, T), h, c -> logits of the last position (B, V), h_out, c_out."""

        def forward(self, ids, h, c):
            return self.model.forward_last(ids, h, c)

    return Step().eval(), Prefill().eval()


def export_graphs(model, folder: Path, opset: int = 17) -> None:
    """Write step/prefill as .onnx (dynamic batch, and time for prefill) and as traced .ts."""
    import torch

    step, prefill = _wrappers(model)
    h, c = model.init_state(2)
    names = dict(input_names=["ids", "h", "c"], output_names=["logits", "h_out", "c_out"])
    state_axes = {
        "h": {1: "batch"},
        "c": {1: "batch"},
        "h_out": {1: "batch"},
        "c_out": {1: "batch"},
        "logits": {0: "batch"},
    }
    examples = {
        "step": (step, torch.zeros(2, dtype=torch.long), {"ids": {0: "batch"}}),
        "prefill": (prefill, torch.zeros(2, 3, dtype=torch.long), {"ids": {0: "batch", 1: "time"}}),
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and LSTM batch-size notices
        for name, (module, ids, ids_axes) in examples.items():
            # the TorchScript-based exporter: it maps nn.LSTM onto the ONNX LSTM op with h/c as inputs
            torch.onnx.export(
                module,
                (ids, h, c),
                str(folder / f"{name}.onnx"),
                opset_version=opset,
                dynamo=False,
                dynamic_axes={**ids_axes, **state_axes},
                **names,
            )
            torch.jit.trace(module, (ids, h, c), check_trace=False).save(str(folder / f"{name}.ts"))


def check_parity(model, folder: Path, vocab, chars: int = 500, tol: float = 1e-4) -> dict:
    """Compare PyTorch, TorchScript and ONNX Runtime for batch 1 and 8; raise ArtifactError on a mismatch."""
    import torch

    step_pt, prefill_pt = _wrappers(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice: TorchScript is part of the contract
        scripted = tuple(torch.jit.load(str(folder / f"{n}.ts")) for n in ("step", "prefill"))
    runners = {"pytorch": (step_pt, prefill_pt), "torchscript": scripted}
    sessions = {n: make_session(folder / f"{n}.onnx", "cpu") for n in ("step", "prefill")}

    def run_onnx(name):
        def call(ids, h, c):
            out = sessions[name].run(None, {"ids": ids.numpy(), "h": h.numpy(), "c": c.numpy()})
            return tuple(torch.from_numpy(o) for o in out)

        return call

    runners["onnx"] = (run_onnx("step"), run_onnx("prefill"))
    report: dict = {"chars": chars, "tolerance": tol}
    for batch in (1, 8):
        ids = torch.from_numpy(np.stack([vocab.encode(PASSAGE[9 * b : 9 * b + 32]) for b in range(batch)]))  # (B, T)
        greedy, logits_seen = {}, {}
        with torch.no_grad():
            for name, (step, prefill) in runners.items():
                h, c = model.init_state(batch)
                logits, h, c = prefill(ids, h, c)
                out, seen = [], [logits]
                for _ in range(chars):
                    nxt = logits.argmax(-1)  # (B,)
                    out.append(nxt)
                    logits, h, c = step(nxt, h, c)
                    seen.append(logits)
                greedy[name], logits_seen[name] = torch.stack(out, 1), torch.stack(seen)
        for name in ("torchscript", "onnx"):
            equal = bool(torch.equal(greedy[name], greedy["pytorch"]))
            diff = float((logits_seen[name] - logits_seen["pytorch"]).abs().max())
            report[f"{name}_b{batch}"] = {"greedy_equal": equal, "max_abs_logit_diff": diff}
            if not equal or diff > tol:
                raise ArtifactError(
                    f"export check failed: {name} batch {batch}: greedy equal {equal}, "
                    f"max logit difference {diff:.2e} (tolerance {tol:.0e})"
                )
        report[f"sample_b{batch}"] = vocab.decode(greedy["pytorch"][0, :80].tolist())
    return report


def main(args) -> int:
    import torch

    from training.generator.data import CharVocab
    from training.generator.model import load_checkpoint, num_params

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    eval_text, evaluated_on = canon_tail(data_path(args.text, "sherlock/canon.txt"))  # before any work
    torch.set_num_threads(1)
    model, ckpt = load_checkpoint(path)
    vocab = CharVocab.from_json(ckpt["vocab"])
    metrics = {"val_bits_per_char": ckpt["val_bpc"], "step": ckpt["step"], "params": num_params(model)}
    run_metrics = path.parent / "metrics.json"
    if run_metrics.is_file():
        m = read_json(run_metrics)
        metrics.update({k: m[k] for k in ("train_seconds", "epochs", "train_chars", "val_chars") if k in m})

    dest = Path(args.out) / "generator"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".generator-") as tmp:
        tmp = Path(tmp)
        export_graphs(model, tmp, args.opset)
        parity = check_parity(model, tmp, vocab, args.check_chars, args.tol)
        write_manifest(
            tmp,
            {
                "kind": "generator",
                "id": args.model_id,
                "vocab": list(vocab.chars),
                "unk_id": vocab.unk_id,
                "num_layers": model.cfg.num_layers,
                "hidden_size": model.cfg.hidden_size,
                "config": model.cfg.to_dict(),
                "train_config": ckpt.get("train_config"),
                "metrics": metrics,
                "corpus_fingerprint": ckpt.get("corpus_fingerprint"),
                "versions": library_versions(),
                "parity": parity,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            },
        )
        int8 = add_int8_generator(tmp, eval_text, evaluated_on, say=log.info)
        if not int8["accepted"]:
            log.warning(
                "int8 variant missed its bar (%s): recorded with accepted=false, fp32 stays the default",
                int8["verdict"],
            )
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(tmp, dest)
    dest.chmod(0o755)  # the temporary folder was private (0700)
    sizes = {p.name: p.stat().st_size for p in sorted(dest.iterdir())}
    worst = max(v["max_abs_logit_diff"] for k, v in parity.items() if isinstance(v, dict))
    bpc = int8["quality"]["bits_per_char"]
    print(
        f"exported {dest}: {', '.join(f'{n} {s / 1e6:.1f} MB' for n, s in sizes.items())}; "
        f"greedy {args.check_chars} chars equal for batch 1 and 8, max logit difference {worst:.2e}; "
        f"int8 bits/char {bpc['int8']:.4f} (fp32 {bpc['fp32']:.4f}): "
        + ("accepted" if int8["accepted"] else "not accepted")
    )
    return 0
