"""Noisy sine forecasting: how good is one step ahead, and how fast does a free-running forecast drift?

A vanilla RNN and an LSTM read a noisy sine (period 50 steps, Gaussian noise sd 0.1) and predict the next value at
every step (teacher forcing: the input is always the true noisy value). Two errors against the *clean* signal:

    one-step:     input the observed x_1..x_t, predict x_{t+1}             (what training optimises)
    closed-loop:  read C observed steps, then feed each prediction back  (errors compound with the horizon)

References: the noise variance (0.01) is what a perfect predictor of the noisy value would still score against
it; predicting 0 forever scores 0.5 (the sine's variance) against the clean signal.

``sine_series`` and ``fit_forecaster`` are imported by the hidden-states lab: keep their signatures stable.
"""

from __future__ import annotations

import math

TRAIN_LEN = 4000  # steps of the training series (80 periods)
WINDOW = 64  # training windows (B, WINDOW, 1), random starts
BATCH = 32
BURN_IN = 8  # steps at the start of each window left out of the loss: no context yet
STEPS, QUICK_STEPS = 1500, 150


def add_arguments(p) -> None:
    p.add_argument("--cells", default="rnn,lstm", help="comma-separated cells to compare (rnn, gru, lstm)")
    p.add_argument("--hidden", type=int, default=32, help="hidden size of every cell")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per cell ({STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--context", type=int, default=100, help="observed steps read before a closed-loop forecast")
    p.add_argument("--horizon", type=int, default=200, help="closed-loop steps (4 periods by default)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per cell, medians reported (5; --quick 1)")


def sine_series(length: int, *, period: float = 50.0, noise: float = 0.1, seed: int = 0):
    """(t, clean, noisy), each shape (length,), float32; the phase of step i is (t[i] % period) / period."""
    import numpy as np

    t = np.arange(length, dtype=np.float32)
    clean = np.sin(2 * math.pi * t / period).astype(np.float32)
    noisy = (clean + noise * np.random.default_rng(seed).standard_normal(length)).astype(np.float32)
    return t, clean, noisy


def fit_forecaster(
    cell: str, ctx, *, hidden: int = 32, steps: int | None = None, period: float = 50.0, noise: float = 0.1
):
    """Train a one-step forecaster (cell in {"rnn", "lstm"}, steps defaults by ctx.quick) on ctx.device; returns the
    model and a metrics dict. model(x) with x (B, T, 1) returns (pred (B, T, 1), outputs (B, T, H), state)."""
    import torch
    import torch.nn.functional as F

    from training.labs import seqtasks as st

    steps = steps or (QUICK_STEPS if ctx.quick else STEPS)
    dev = ctx.device
    torch.manual_seed(ctx.seed)  # the same init whatever ran before
    series = torch.from_numpy(sine_series(TRAIN_LEN, period=period, noise=noise, seed=ctx.seed)[2]).to(dev)
    gen = torch.Generator().manual_seed(ctx.seed)
    offsets = torch.arange(WINDOW + 1)

    def batch(step):
        starts = torch.randint(0, TRAIN_LEN - WINDOW - 1, (BATCH, 1), generator=gen)
        w = series[(starts + offsets).to(dev)].unsqueeze(-1)  # (B, W+1, 1)
        return w[:, :-1], w[:, 1:]  # input x_t, target x_{t+1}

    def loss_fn(model, x, y):
        return F.mse_loss(model(x)[0][:, BURN_IN:], y[:, BURN_IN:])

    model = st.SeqModel(cell, 1, hidden, 1, readout="all").to(dev)
    hist = st.train(model, batch, loss_fn, steps=steps, ctx=ctx, lr=3e-3, desc=f"sine {cell}")
    model.eval()
    metrics = {
        "cell": cell,
        "hidden": hidden,
        "params": st.count_params(model),
        "steps": hist["steps"],
        "train_seconds": hist["seconds"],
        "final_train_mse": sum(hist["loss"][-50:]) / len(hist["loss"][-50:]),
        "loss_curve": st.downsample(hist["loss"]),
        "grad_norm_curve": st.downsample(hist["grad_norm"]),
        **one_step_mse(model, ctx, period=period, noise=noise),
    }
    return model, metrics


def test_series(ctx, length: int = 1200, **kw):
    """The held-out series: the same sine, noise no training seed draws (seed + 10**6)."""
    return sine_series(length, seed=ctx.seed + 10**6, **kw)


def one_step_mse(model, ctx, *, period: float = 50.0, noise: float = 0.1, skip: int = 50) -> dict:
    """Teacher-forced one-step MSE on the held-out series (first ``skip`` steps left out: warm-up)."""
    import numpy as np
    import torch

    _, clean, noisy = test_series(ctx, period=period, noise=noise)
    with torch.no_grad():
        x = torch.from_numpy(noisy[:-1]).to(ctx.device).view(1, -1, 1)  # (1, T-1, 1)
        pred = model(x)[0].view(-1).cpu().numpy()  # (T-1,) predicts x_{t+1}
    p, c, n = pred[skip:], clean[1:][skip:], noisy[1:][skip:]
    return {
        "one_step_mse": float(np.mean((p - c) ** 2)),
        "one_step_mse_vs_noisy": float(np.mean((p - n) ** 2)),
        "persistence_mse": float(np.mean((noisy[:-1][skip:] - c) ** 2)),
    }  # predict x_{t+1} = x_t


def closed_loop(model, context, horizon: int):
    """Read context (K, C, 1), then feed each prediction back as the next input; returns (K, horizon)."""
    import torch

    with torch.no_grad():
        y, _, state = model(context)
        nxt, preds = y[:, -1:], []  # (K, 1, 1): the forecast of step C+1
        for _ in range(horizon):
            preds.append(nxt)
            nxt, _, state = model(nxt, state)
    return torch.cat(preds, 1)[..., 0]


def closed_loop_mse(model, ctx, *, context: int, horizon: int, starts: int = 32):
    """MSE against the clean signal at each horizon 1..H, averaged over ``starts`` phases of the held-out series."""
    import numpy as np
    import torch

    _, clean, noisy = test_series(ctx, length=context + horizon + 2 * starts + 1)
    s = np.arange(starts) * 2 + 1  # every other step: 32 phases of 50
    ctx_x = np.stack([noisy[i : i + context] for i in s])  # (K, C)
    truth = np.stack([clean[i + context : i + context + horizon] for i in s])  # (K, H)
    pred = closed_loop(model, torch.from_numpy(ctx_x).to(ctx.device).unsqueeze(-1), horizon).cpu().numpy()
    return ((pred - truth) ** 2).mean(0), pred[0], truth[0], ctx_x[0]


def run(args, ctx):
    import dataclasses

    import numpy as np

    from training.common.plots import pyplot
    from training.labs.common import LabResult

    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    horizon, context = args.horizon, args.context
    if ctx.quick:
        horizon = min(horizon, 100)
    seeds = [ctx.seed + k for k in range(args.seeds or (1 if ctx.quick else 5))]
    marks = [h for h in (1, 10, 50, 200) if h <= horizon]
    results, curves, examples = {}, {}, {}
    for cell in cells:
        per_seed, mses = [], []
        for seed in seeds:  # a fresh init and data order per seed
            model, m = fit_forecaster(cell, dataclasses.replace(ctx, seed=seed), hidden=args.hidden, steps=args.steps)
            mse, pred, truth, seen = closed_loop_mse(model, ctx, context=context, horizon=horizon)  # one test set
            m.update(one_step_mse(model, ctx))
            m["closed_loop_mse"] = {str(h): float(mse[h - 1]) for h in marks}
            m["closed_loop_mse_curve"] = [round(float(v), 6) for v in mse]
            per_seed.append({"seed": seed, **m})
            mses.append(mse)
            if seed == seeds[0]:
                examples[cell] = pred
        mses = np.stack(mses)  # (seeds, H)
        curves[cell] = (np.median(mses, 0), mses.min(0), mses.max(0))
        results[cell] = {
            "one_step_mse": float(np.median([m["one_step_mse"] for m in per_seed])),
            "closed_loop_mse": {str(h): float(curves[cell][0][h - 1]) for h in marks},
            "params": per_seed[0]["params"],
            "seeds": per_seed,
        }
    persistence = one_step_mse(model, ctx)["persistence_mse"]

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=100)
    tail = min(context, 50)
    xs_seen, xs_ahead = np.arange(-tail, 0), np.arange(horizon)
    a.plot(xs_seen, seen[-tail:], ".", color="grey", ms=3, label="observed (noisy)")
    a.plot(xs_ahead, truth, color="black", lw=1, label="true (clean)")
    for cell, pred in examples.items():
        a.plot(xs_ahead, pred, lw=1.2, label=f"{cell} closed-loop")
    a.axvline(0, color="grey", ls=":", lw=1)
    a.set(
        title=f"closed-loop forecast after {context} observed steps (seed {seeds[0]})",
        xlabel="steps after the context",
        ylabel="x",
    )
    a.legend(fontsize=8, loc="lower left")
    hs = np.arange(1, horizon + 1)
    for cell, (med, lo, hi) in curves.items():
        (line,) = b.plot(hs, med, label=f"{cell} (one-step {results[cell]['one_step_mse']:.4f})")
        if len(seeds) > 1:
            b.fill_between(hs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    b.axhline(0.5, color="grey", ls="--", lw=1, label="predict 0 (0.5)")
    b.axhline(0.01, color="grey", ls=":", lw=1, label="noise variance (0.01)")
    b.set_yscale("log")
    spread = f"{len(seeds)} seeds: median, range" if len(seeds) > 1 else "1 seed"
    b.set(title=f"closed-loop MSE vs clean signal ({spread})", xlabel="horizon (steps)", ylabel="MSE")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.path("sine.png"))
    plt.close(fig)

    headline = {}
    for cell, m in results.items():
        headline[f"{cell}_one_step_mse"] = round(m["one_step_mse"], 5)
        for h, v in m["closed_loop_mse"].items():
            if h != "1":
                headline[f"{cell}_closed_loop_mse_h{h}"] = round(v, 4)
    headline["persistence_one_step_mse"] = round(persistence, 5)
    headline["seeds"] = len(seeds)
    metrics = {
        "cells": results,
        "context": context,
        "horizon": horizon,
        "seeds": seeds,
        "persistence_one_step_mse": persistence,
        "noise_variance": 0.01,
        "predict_zero_mse": 0.5,
    }
    return LabResult(headline=headline, metrics=metrics, plots=["sine.png"])
