"""bench-generator: what a model shape costs, measured side by side in one run (random weights: speed only).

For each shape ``LxH`` (layers x hidden): the training step (forward + backward + AdamW on a batch of
``--batch-size`` streams x ``--bptt`` characters) in float32 and under bfloat16 autocast, interleaved so that
both see the same machine; and the served step, one character of one stream through the dynamically quantized
int8 ONNX step graph (what the service runs on CPU) with 1 and 2 intra-op threads. Each shape's figures are also
given relative to the first shape. The last line printed is JSON.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    # the generator's own defaults (CharConfig, TrainConfig), as train-generator's flags take them
    from training.generator.cli import config_defaults
    from training.generator.model import CharConfig
    from training.generator.train import TrainConfig

    m, t = config_defaults(CharConfig), config_defaults(TrainConfig)
    p.add_argument("--shapes", default="2x512,2x640,2x768,3x512", help="comma-separated LAYERSxHIDDEN")
    p.add_argument("--embed-dim", type=int, default=m["embed_dim"])
    p.add_argument("--vocab-size", type=int, default=93)
    p.add_argument("--batch-size", type=int, default=t["batch_size"])
    p.add_argument("--bptt", type=int, default=t["bptt"])
    p.add_argument("--train-steps", type=int, default=4, help="timed training steps per precision (after 1 warm-up)")
    p.add_argument("--serve-steps", type=int, default=2000, help="timed int8 steps per thread count")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the training steps")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    from training.common.cli import UserError

    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise UserError(f"--shapes wants LAYERSxHIDDEN[,...], e.g. 2x512,3x512; got {text!r}")
    return shapes


def train_step_seconds(model, batch: int, bptt: int, steps: int) -> dict[str, float]:
    """Median seconds per training step, fp32 and bf16 interleaved step by step."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, model.cfg.vocab_size, (batch, bptt))
    y = torch.randint(0, model.cfg.vocab_size, (batch, bptt))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for k in range(steps + 1):
        for name in times:
            t0 = time.perf_counter()
            h, c = model.init_state(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                logits, _, _ = model(x, h, c)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k:  # the first round warms up both
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def served_steps_per_second(model, steps: int) -> dict[int, float]:
    """int8 ONNX step graph, batch 1, greedy feedback off (fixed input): steps per second at 1 and 2 threads."""
    import numpy as np

    from runtime.providers import make_session
    from training.common.quantize import quantize_role
    from training.common.rowint8 import lstm_weights
    from training.generator.export import export_graphs

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_graphs(model, folder)
        step = folder / "step.onnx"
        quantize_role("generator", "step", step, folder / "step.int8.onnx", lstm_weights(step))  # as exports do
        out = {}
        for threads in (1, 2):
            sess = make_session(folder / "step.int8.onnx", provider="cpu", intra_threads=threads)
            h, c = (s.numpy() for s in model.init_state(1))
            feed = {"ids": np.array([5], dtype=np.int64), "h": h, "c": c}
            for _ in range(100):
                sess.run(None, feed)
            t0 = time.perf_counter()
            for _ in range(steps):
                _, feed["h"], feed["c"] = sess.run(None, feed)
            out[threads] = steps / (time.perf_counter() - t0)
    return out


def main(args) -> int:
    import torch

    from training.generator.model import CharConfig, CharRNN, num_params

    shapes = parse_shapes(args.shapes)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for layers, hidden in shapes:
        model = CharRNN(
            CharConfig(vocab_size=args.vocab_size, embed_dim=args.embed_dim, hidden_size=hidden, num_layers=layers)
        )
        step = train_step_seconds(model.train(), args.batch_size, args.bptt, args.train_steps)
        served = served_steps_per_second(model.eval(), args.serve_steps)
        chars = args.batch_size * args.bptt
        rows.append(
            {
                "shape": f"{layers}x{hidden}",
                "params_m": num_params(model) / 1e6,
                "train_chars_per_s": {k: chars / v for k, v in step.items()},
                "bf16_speedup": step["fp32"] / step["bf16"],
                "int8_steps_per_s": {str(k): v for k, v in served.items()},
            }
        )
        r = rows[-1]
        log.info(
            "%s (%.2f M): train fp32 %.0f, bf16 %.0f chars/s (bf16 %.2fx); served int8 %.0f / %.0f steps/s "
            "(1 / 2 threads)",
            r["shape"],
            r["params_m"],
            r["train_chars_per_s"]["fp32"],
            r["train_chars_per_s"]["bf16"],
            r["bf16_speedup"],
            served[1],
            served[2],
        )
    base = rows[0]
    for r in rows:
        r["vs_first"] = {
            "train_bf16": r["train_chars_per_s"]["bf16"] / base["train_chars_per_s"]["bf16"],
            "served_2_threads": r["int8_steps_per_s"]["2"] / base["int8_steps_per_s"]["2"],
        }
    print(
        f"{'shape':>7} {'M params':>8} {'fp32 c/s':>9} {'bf16 c/s':>9} {'bf16 x':>6} {'int8 1t':>8} {'int8 2t':>8} "
        f"{'train vs 1st':>12} {'served vs 1st':>13}"
    )
    for r in rows:
        print(
            f"{r['shape']:>7} {r['params_m']:>8.2f} {r['train_chars_per_s']['fp32']:>9.0f} "
            f"{r['train_chars_per_s']['bf16']:>9.0f} {r['bf16_speedup']:>6.2f} {r['int8_steps_per_s']['1']:>8.0f} "
            f"{r['int8_steps_per_s']['2']:>8.0f} {r['vs_first']['train_bf16']:>12.2f} "
            f"{r['vs_first']['served_2_threads']:>13.2f}"
        )
    print(json.dumps({"threads": args.threads, "batch_size": args.batch_size, "bptt": args.bptt, "shapes": rows}))
    return 0
