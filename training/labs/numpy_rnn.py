"""numpy-rnn: a vanilla RNN and an LSTM with hand-written BPTT in NumPy, gradient-checked three ways, then trained.

The checks (float64, identical weights; see numpy_checks.py) compare the NumPy gradients of the whole model
(cell + readout + cross-entropy) with central finite differences, with PyTorch autograd, and through a
truncated-BPTT window that starts from a carried, detached state. Relative error of two gradient entries
a and b is |a - b| / max(|a| + |b|, 1e-12); each check reports the largest over every entry it compares.

Then a NumPy LSTM and an ``nn.LSTM`` of the same size train side by side in float64 as character models on
characters 200 000 - 350 000 of the Sherlock canon (90 % train, the last 10 % validation): same initial
weights, same batches (B parallel streams, state carried and detached between windows), gradient clipping
and Adam (``--optimizer sgd``: plain SGD) written out in NumPy against ``torch.optim``. Both loss curves go on
one plot, with their gap. Both run on the lab command's ``--threads`` (1 by default, BLAS and torch alike).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

from training.labs.common import LabResult

LN2 = math.log(2)
LR = {"adam": 3e-3, "sgd": 1.0}  # SGD on a mean loss needs a large step
SLICE = (200_000, 350_000)  # end of A Study in Scarlet, start of The Sign of the Four


@dataclass(frozen=True)
class Setup:
    hidden: int = 128
    batch: int = 32  # parallel streams
    bptt: int = 64  # characters per truncated-BPTT window
    steps: int = 700
    optimizer: str = "adam"  # or "sgd"
    lr: float | None = None  # None: 3e-3 for Adam, 1.0 for SGD
    clip: float = 1.0
    eval_every: int = 100


QUICK = Setup(hidden=32, batch=16, bptt=24, steps=40, eval_every=20)


def add_arguments(p) -> None:
    p.add_argument("--text", default=None, help="the canon ($DATA_DIR/sherlock/canon.txt)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps ({Setup.steps}; --quick {QUICK.steps})")
    p.add_argument("--hidden", type=int, default=None, help=f"LSTM units ({Setup.hidden}; --quick {QUICK.hidden})")
    p.add_argument("--optimizer", default=Setup.optimizer, choices=["adam", "sgd"], help="both models")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate ({LR['adam']} Adam, {LR['sgd']} SGD)")


def load_ids(text_arg):
    """The Sherlock slice as (train ids, val ids, vocab)."""
    from training.common.cli import data_path
    from training.common.files import read_text
    from training.generator.data import CharVocab, split_text

    text = read_text(data_path(text_arg, "sherlock/canon.txt"))[SLICE[0] : SLICE[1]]
    train_text, val_text = split_text(text, 0.1)
    vocab = CharVocab.build(train_text)
    return vocab.encode(train_text), vocab.encode(val_text), vocab


def evaluate(np_params, model, val_ids, device, bptt: int = 256, batch: int = 8) -> tuple[float, float]:
    """Validation bits per character of (NumPy, PyTorch), state carried along each of ``batch`` streams."""
    import torch

    from training.generator.data import chunks, streams
    from training.labs import numpy_cells as nc
    from training.labs.numpy_checks import torch_state

    data = streams(val_ids, batch)
    state = nc.zero_state(np_params, batch)
    tstate = torch_state(model, state, device)
    totals, count = [0.0, 0.0], 0
    with torch.no_grad():
        for x, y in chunks(data, bptt):
            loss, state, _ = nc.forward(np_params, "lstm", x, y, state)
            tloss, tstate = model.loss(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), tstate)
            totals[0] += loss * y.size
            totals[1] += tloss.item() * y.size
            count += y.size
    return totals[0] / count / LN2, totals[1] / count / LN2


def train_pair(setup: Setup, train_ids, val_ids, vocab_size: int, ctx) -> dict:
    """Train the NumPy LSTM and its nn.LSTM twin in lockstep on the same batches; their histories."""
    import numpy as np
    import torch

    from training.generator.data import chunks, streams
    from training.labs import numpy_cells as nc
    from training.labs.numpy_checks import TorchCharModel, torch_state

    params = nc.init_params("lstm", vocab_size, setup.hidden, np.random.default_rng(ctx.seed))
    model = TorchCharModel.from_numpy(params, "lstm", ctx.device)
    lr = setup.lr or LR[setup.optimizer]
    if setup.optimizer == "adam":
        opt_np, opt_t = nc.Adam(params, lr=lr), torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt_np, opt_t = nc.SGD(params, lr=lr), torch.optim.SGD(model.parameters(), lr=lr)
    data = streams(train_ids, setup.batch)  # (B, N // B): B contiguous passages
    hist = {"step": [], "numpy_bpc": [], "torch_bpc": [], "eval_step": [], "numpy_val_bpc": [], "torch_val_bpc": []}
    seconds = {"numpy": 0.0, "torch": 0.0}
    windows = iter(())
    for step in ctx.bar(range(1, setup.steps + 1), total=setup.steps, desc="numpy-rnn train"):
        try:
            x, y = next(windows)
        except StopIteration:  # a new pass over the text: the state restarts at zero
            windows = chunks(data, setup.bptt)
            x, y = next(windows)
            state = nc.zero_state(params, setup.batch)
            tstate = torch_state(model, state, ctx.device)
        t0 = time.perf_counter()
        loss, grads, _, state = nc.loss_and_grads(params, "lstm", x, y, state)  # state leaves the window
        nc.clip_grad_norm(grads, setup.clip)
        opt_np.step(params, grads)
        t1 = time.perf_counter()
        tloss, tstate = model.loss(
            torch.from_numpy(x).to(ctx.device), torch.from_numpy(y).to(ctx.device), tuple(s.detach() for s in tstate)
        )  # detached: gradients stop here
        opt_t.zero_grad(set_to_none=True)
        tloss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
        opt_t.step()
        seconds["numpy"] += t1 - t0
        seconds["torch"] += time.perf_counter() - t1
        hist["step"].append(step)
        hist["numpy_bpc"].append(loss / LN2)
        hist["torch_bpc"].append(tloss.item() / LN2)
        if step % setup.eval_every == 0 or step == setup.steps:
            v_np, v_t = evaluate(params, model, val_ids, ctx.device)
            hist["eval_step"].append(step)
            hist["numpy_val_bpc"].append(v_np)
            hist["torch_val_bpc"].append(v_t)
    weight_gap = max(float(np.abs(params[k] - p.detach().cpu().numpy()).max()) for k, p in model.named_numpy())
    return {"history": hist, "seconds": seconds, "max_weight_gap": weight_gap}


def plot(path, hist: dict, title: str) -> None:
    import numpy as np

    from training.common.plots import pyplot

    plt = pyplot()
    fig, (ax, gap) = plt.subplots(2, 1, figsize=(7, 5.5), dpi=100, sharex=True, height_ratios=(3, 1.3))
    ax.plot(hist["step"], hist["numpy_bpc"], lw=2.5, alpha=0.6, label="NumPy LSTM (train window)")
    ax.plot(hist["step"], hist["torch_bpc"], lw=1, ls="--", color="k", label="nn.LSTM (train window)")
    ax.plot(hist["eval_step"], hist["numpy_val_bpc"], "o", ms=7, alpha=0.6, label="NumPy validation")
    ax.plot(hist["eval_step"], hist["torch_val_bpc"], "x", ms=7, color="k", label="nn.LSTM validation")
    ax.set(title=title, ylabel="bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    diff = np.abs(np.array(hist["numpy_bpc"]) - np.array(hist["torch_bpc"]))
    gap.semilogy(hist["step"], np.maximum(diff, 1e-17), lw=1, color="tab:red")
    gap.set(xlabel="step", ylabel="|NumPy - torch|")
    gap.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args, ctx) -> LabResult:
    import numpy as np

    from training.labs.numpy_checks import run_checks

    base = QUICK if ctx.quick else Setup()
    flags = {"steps": args.steps, "hidden": args.hidden, "lr": args.lr, "optimizer": args.optimizer}
    setup = replace(base, **{k: v for k, v in flags.items() if v is not None})
    setup = replace(setup, lr=setup.lr or LR[setup.optimizer])
    train_ids, val_ids, vocab = load_ids(args.text)

    t0 = time.perf_counter()
    checks = run_checks(train_ids, len(vocab), ctx.seed, ctx.device)
    check_seconds = time.perf_counter() - t0
    per_check = {name: max(c[name]["max_rel_error"] for c in checks.values()) for name in next(iter(checks.values()))}
    max_rel = max(per_check.values())

    trained = train_pair(setup, train_ids, val_ids, len(vocab), ctx)
    hist = trained["history"]
    gaps = np.abs(np.array(hist["numpy_bpc"]) - np.array(hist["torch_bpc"]))  # (steps,)
    lockstep = int(np.argmax(gaps > 1e-9)) if (gaps > 1e-9).any() else len(gaps)  # steps before they part
    tail = max(1, min(50, len(hist["step"]) // 5))  # the final train loss: mean of the last windows
    headline = {
        "max_rel_error": max_rel,
        **{f"{k}_rel_error": v for k, v in per_check.items()},
        "numpy_train_bpc": round(float(np.mean(hist["numpy_bpc"][-tail:])), 4),
        "torch_train_bpc": round(float(np.mean(hist["torch_bpc"][-tail:])), 4),
        "numpy_val_bpc": round(hist["numpy_val_bpc"][-1], 4),
        "torch_val_bpc": round(hist["torch_val_bpc"][-1], 4),
        "max_train_loss_gap": float(gaps.max()),
        "lockstep_steps": lockstep,
        "steps": setup.steps,
    }
    plot(
        ctx.path("loss_curves.png"),
        hist,
        f"NumPy LSTM vs nn.LSTM, H={setup.hidden}, {setup.optimizer}: identical init and batches",
    )
    return LabResult(
        headline=headline,
        metrics={
            "setup": asdict(setup),
            "slice": list(SLICE),
            "vocab_size": len(vocab),
            "train_chars": len(train_ids),
            "val_chars": len(val_ids),
            "relative_error": "|a - b| / max(|a| + |b|, 1e-12), max over entries",
            "checks": checks,
            "check_seconds": round(check_seconds, 2),
            "train_seconds": trained["seconds"],
            "ms_per_step": {k: 1000 * v / setup.steps for k, v in trained["seconds"].items()},
            "max_weight_gap": trained["max_weight_gap"],
            "history": hist,
        },
        plots=["loss_curves.png"],
    )
