"""``generate``: stream text from the exported generator to the terminal as it is produced.

Runs the ONNX model through runtime/generator.py (the service's own numerics). The same seed gives the
same text; ``--temperature 0`` is greedy.
"""

from __future__ import annotations

import sys

from training.common.cli import UserError


def add_arguments(p) -> None:
    p.add_argument("prompt", nargs="?", default="", help="text to continue (empty: start at a line start)")
    p.add_argument("--models", default="exported_models", help="exported-models root or the generator folder")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (argmax)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely characters")
    p.add_argument("--top-p", type=float, help="nucleus: the smallest set with this much probability")
    p.add_argument("--seed", type=int, help="same seed, same text (default: random)")
    p.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")


def main(args) -> int:
    from runtime.generator import GeneratorRuntime, generate

    if args.length < 0:
        raise UserError(f"--length must be >= 0, got {args.length}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    runtime = GeneratorRuntime(args.models, args.provider, args.threads)
    out = sys.stdout
    out.write(args.prompt)
    for ch in generate(runtime, args.prompt, args.length, args.temperature, args.top_k, args.top_p, args.seed):
        out.write(ch)
        out.flush()  # stream: each character appears as soon as it is sampled
    out.write("\n")
    return 0
