"""``lab NAME``: run one recurrent-network lab and write ``runs/labs/NAME/``.

The folder holds config.json (the arguments), metrics.json (every figure the lab measured, its seconds and
library versions) and its PNG plots. The last stdout line is one JSON object with the lab's headline figures.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from training.labs import LABS


def add_arguments(p) -> None:
    import argparse

    sub = p.add_subparsers(dest="lab", metavar="NAME", required=True)
    for name, (module, help_) in LABS.items():
        lp = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        lp.add_argument("--quick", action="store_true", help="the test size (seconds): fewer steps, smaller sweeps")
        lp.add_argument(
            "--device",
            default="cpu",
            choices=["auto", "cpu", "cuda"],
            help="torch device; auto = cuda when there is one",
        )
        lp.add_argument("--seed", type=int, default=0)
        lp.add_argument(
            "--threads",
            type=int,
            default=1,
            help="CPU threads for torch and BLAS (small models: more threads were slower, common.py)",
        )
        lp.add_argument("--out", default="runs/labs", help="root folder; the lab writes OUT/NAME/")
        lp.add_argument("--no-progress", action="store_true", help="no progress bars")
        importlib.import_module(module).add_arguments(lp)  # lab modules import torch only inside run()


def main(args) -> int:
    from training.common.devices import library_versions, pick_device, seed_everything
    from training.common.files import write_json
    from training.labs.common import LabContext, cpu_threads

    seed_everything(args.seed)
    out = Path(args.out) / args.lab
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "command"}
    write_json(out / "config.json", config)
    ctx = LabContext(
        name=args.lab,
        out=out,
        quick=args.quick,
        device=pick_device(args.device),
        seed=args.seed,
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    with cpu_threads(args.threads):
        result = importlib.import_module(LABS[args.lab][0]).run(args, ctx)
    seconds = round(time.perf_counter() - t0, 1)
    write_json(
        out / "metrics.json",
        {
            "lab": args.lab,
            "quick": args.quick,
            "device": str(ctx.device),
            "seconds": seconds,
            "headline": result.headline,
            **result.metrics,
            "plots": result.plots,
            "versions": library_versions(),
        },
    )
    for plot in result.plots:
        print(f"plot: {out / plot}")
    print(json.dumps({"lab": args.lab, **result.headline, "seconds": seconds}, default=float))
    return 0
