"""``evaluate-generator``: bits per character of the exported ONNX generator on a text file.

The text is cut into ``--streams`` consecutive pieces scored side by side with the batched step graph.
Each piece starts from the state that prefill leaves after reading the ``--context`` characters before
it (the first piece from the "\\n" prime), so every character is scored with context, as in one long pass.
The last line printed is JSON: {"bits_per_char": ..., "n_chars": ...}.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from runtime.logprobs import log_softmax
from training.common.cli import UserError
from training.common.files import read_text


def add_arguments(p) -> None:
    p.add_argument("--models", default="exported_models", help="exported-models root or the generator folder")
    p.add_argument("--text", required=True, help="text file to score")
    p.add_argument("--tail-frac", type=float, help="score only the last fraction (0.05 = the validation split)")
    p.add_argument("--streams", type=int, default=64, help="pieces scored in parallel (batch size)")
    p.add_argument("--context", type=int, default=256, help="characters read before each piece")
    p.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "int8"],
        help="which exported graphs to score (auto: what serving picks, int8 on CPU when accepted)",
    )


def bits_per_char(runtime, ids: np.ndarray, streams: int = 64, context: int = 256) -> float:
    """Mean -log2 p(char | everything before it) over ids (N,), scored as ``streams`` parallel pieces."""
    n = len(ids)
    streams = max(1, min(streams, n // 64 or 1))
    bounds = np.linspace(0, n, streams + 1).astype(int)
    prime = runtime.encode(runtime.PRIME)
    hs, cs, first = [], [], []
    for s in bounds[:-1]:  # warm each piece's state on the text just before it
        ctx = ids[max(0, s - context) : s] if s and context else prime
        logits, h, c = runtime.prefill(ctx[None], *runtime.zero_state(1))
        hs.append(h), cs.append(c), first.append(logits)
    h, c, logits = np.concatenate(hs, 1), np.concatenate(cs, 1), np.concatenate(first, 0)  # (L, B, H), (B, V)
    lengths = np.diff(bounds)
    rows = np.arange(streams)
    nll = 0.0
    for t in range(lengths.max()):
        live = t < lengths  # pieces differ in length by at most one
        pos = np.minimum(bounds[:-1] + t, n - 1)
        target = ids[pos]  # (B,)
        nll -= float(log_softmax(logits)[rows[live], target[live]].sum())
        if t + 1 < lengths.max():
            logits, h, c = runtime.step(target, h, c)
    return nll / n / math.log(2)


def main(args) -> int:
    from pathlib import Path

    from runtime.generator import GeneratorRuntime

    path = Path(args.text)
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    text = read_text(path)
    if args.tail_frac is not None:
        if not 0 < args.tail_frac <= 1:
            raise UserError(f"--tail-frac must be in (0, 1], got {args.tail_frac}")
        text = text[int(len(text) * (1 - args.tail_frac)) :]
    if not text:
        raise UserError(f"{path}: no text to score")
    runtime = GeneratorRuntime(args.models, args.provider, args.threads, precision=args.precision)
    ids = runtime.encode(text)
    t0 = time.perf_counter()
    bpc = bits_per_char(runtime, ids, args.streams, args.context)
    seconds = time.perf_counter() - t0
    unk = int((ids == runtime.unk_id).sum())
    print(f"{path}: {len(ids):,} characters ({unk} unknown) in {seconds:.1f} s ({len(ids) / seconds:,.0f} chars/s)")
    print(json.dumps({"bits_per_char": round(bpc, 5), "n_chars": len(ids), "precision": runtime.precision}))
    return 0
