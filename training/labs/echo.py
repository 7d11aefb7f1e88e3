"""Echo: remember the first bit. For how long can a vanilla RNN, a GRU and an LSTM carry one bit?

    x (B, T, 1): random bits as +-1      target: x_1's bit, read from the final state after step T

Everything after step 1 is distraction, so the only way to beat chance (0.5) is to keep x_1 for T-1 steps, and
the only training signal for doing so is the gradient that reaches step 1 back through T-1 recurrent steps.
Each (model, T) trains a fresh model of the same hidden size (fresh random batches, Adam, clip 1) until it scores
>= 0.99 on held-out sequences or the step budget runs out; a model that scores near chance (< 0.6) at one length
is not trained on the longer ones. For one length the norm of dL/dh_t is measured against t, at initialisation
and after training: how much signal from the loss reaches each step.

Models are CELL or CELL:B. The gated cells run twice: with PyTorch's initialisation (forget / update gate bias
around 0, so each step keeps about half of the state) and with the gate bias +B (sigmoid(3) = 0.95 kept per step).
"""

from __future__ import annotations

LENGTHS, QUICK_LENGTHS = "5,10,20,50,100,200", "5,50"
MODELS, QUICK_MODELS = "rnn,gru,lstm,gru:3,lstm:3", "rnn,lstm,lstm:3"
SOLVED, GIVE_UP = 0.95, 0.6


def add_arguments(p) -> None:
    p.add_argument(
        "--models", default=None, help=f"comma-separated CELL or CELL:GATE_BIAS ({MODELS}; --quick {QUICK_MODELS})"
    )
    p.add_argument("--lengths", default=None, help=f"sequence lengths to sweep ({LENGTHS}; --quick {QUICK_LENGTHS})")
    p.add_argument("--hidden", type=int, default=32, help="hidden size, the same for every cell")
    p.add_argument("--steps", type=int, default=None, help="step budget per (model, length) (1000; --quick 300)")
    p.add_argument("--batch", type=int, default=64, help="fresh random sequences per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument(
        "--grad-length",
        type=int,
        default=None,
        help="a swept length whose dL/dh_t curves are plotted (default: the longest <= 100)",
    )


def bits(n: int, length: int, gen, device):
    """n sequences of +-1 bits (n, T, 1) and the first bit as a 0/1 label (n,)."""
    import torch

    b = torch.randint(0, 2, (n, length, 1), generator=gen).float()
    return (2 * b - 1).to(device), b[:, 0, 0].to(device)


def parse_models(spec: str) -> dict[str, tuple[str, float]]:
    """'rnn,lstm:3' -> {'rnn': ('rnn', 0.0), 'lstm:3': ('lstm', 3.0)}"""
    out = {}
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        cell, _, bias = name.partition(":")
        out[name] = (cell, float(bias or 0))
    return out


def run(args, ctx):
    import torch

    from training.common.plots import pyplot
    from training.labs import seqtasks as st
    from training.labs.common import LabResult

    models = parse_models(args.models or (QUICK_MODELS if ctx.quick else MODELS))
    lengths = sorted(int(n) for n in (args.lengths or (QUICK_LENGTHS if ctx.quick else LENGTHS)).split(","))
    steps = args.steps or (300 if ctx.quick else 1000)
    short = [n for n in lengths if n <= 100]
    glen = args.grad_length if args.grad_length in lengths else max(short) if short else lengths[0]
    dev = ctx.device

    acc, runs, grads, params = {m: [] for m in models}, {}, {}, {}
    for name, (cell, bias) in models.items():
        for i, length in enumerate(lengths):
            seed = ctx.seed * 1000 + i  # per length; the same for every model
            torch.manual_seed(seed)
            model = st.SeqModel(cell, 1, args.hidden, 1, gate_bias=bias).to(dev)
            params[name] = st.count_params(model)
            if length == glen:  # measured even if it is not trained
                x_g, y_g = bits(256, length, torch.Generator().manual_seed(seed + 2 * 10**6), dev)
                grads[name] = {"init": st.hidden_grad_norms(model, x_g, y_g)}
            if acc[name] and (acc[name][-1] is None or acc[name][-1] < GIVE_UP):
                acc[name].append(None)  # near chance at a shorter length
                continue
            gen = torch.Generator().manual_seed(seed)
            x_val, y_val = bits(1000, length, torch.Generator().manual_seed(seed + 10**6), dev)
            hist = st.train(
                model,
                lambda step, length=length, gen=gen: bits(args.batch, length, gen, dev),
                st.bce_loss,
                steps=steps,
                ctx=ctx,
                lr=args.lr,
                desc=f"echo {name} T={length}",
                check_every=50,
                check=lambda m, x_val=x_val, y_val=y_val: st.binary_accuracy(m, x_val, y_val) >= 0.99,
            )
            a = st.binary_accuracy(model, x_val, y_val)
            acc[name].append(a)
            runs[f"{name}/{length}"] = {
                "accuracy": a,
                "steps": hist["steps"],
                "seconds": hist["seconds"],
                "final_loss": sum(hist["loss"][-20:]) / len(hist["loss"][-20:]),
                "loss_curve": st.downsample(hist["loss"]),
                "grad_norm_curve": st.downsample(hist["grad_norm"]),
            }
            if length == glen:
                grads[name]["trained"] = st.hidden_grad_norms(model, x_g, y_g)

    # reach: ||dL/dh_1|| / ||dL/dh_T||, the share of the loss's gradient that gets back to the step that matters
    reach = {m: {k: v["dL_dh"][0] / v["dL_dh"][-1] for k, v in g.items()} for m, g in grads.items()}

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for name, ys in acc.items():
        run_at = [(n, y) for n, y in zip(lengths, ys) if y is not None]
        a.plot(*zip(*run_at), marker="o", ms=4, color=colors[name], label=f"{name} ({params[name]} params)")
    st.sweep_plot(a, lengths, {}, "held-out accuracy", chance=0.5, threshold=SOLVED)
    a.set_title(f"echo the first bit, H={args.hidden}: accuracy vs length (<= {steps} steps)")
    a.set_ylim(0.4, 1.03)
    t = range(1, glen + 1)
    for name, g in grads.items():  # relative to the last step: the loss's
        for kind, ls, lw in (("init", "--", 1.0), ("trained", "-", 1.5)):  # scale (tiny once solved) divides out
            if kind in g:
                rel = [max(v / g[kind]["dL_dh"][-1], 1e-30) for v in g[kind]["dL_dh"]]
                b.plot(t, rel, ls=ls, lw=lw, color=colors[name], label=f"{name} {kind}")
    b.set_yscale("log")
    b.set_ylim(1e-30, 1e3)
    b.set(
        title=f"gradient reaching step t, T={glen} (0 drawn at 1e-30)",
        xlabel="step t",
        ylabel="||dL/dh_t|| / ||dL/dh_T||",
    )
    b.grid(alpha=0.3)
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(ctx.path("echo.png"))
    plt.close(fig)

    headline = {f"{m}_solved_up_to": st.solved_up_to(lengths, [y or 0.0 for y in acc[m]], SOLVED) for m in models}
    for n in [n for n in (20, 100) if n in lengths] or lengths[-1:]:
        headline.update(
            {
                f"{m}_acc_T{n}": None if acc[m][lengths.index(n)] is None else round(acc[m][lengths.index(n)], 3)
                for m in models
            }
        )
    headline.update({f"{m}_grad_reach_init_T{glen}": float(f"{r['init']:.2e}") for m, r in reach.items()})
    metrics = {
        "lengths": lengths,
        "accuracy": acc,
        "params": params,
        "steps_budget": steps,
        "threshold": SOLVED,
        "give_up_below": GIVE_UP,
        "runs": runs,
        "grad_length": glen,
        "grad_reach": reach,
        "grad_norms": {
            m: {k: {q: [float(f"{v:.4e}") for v in vals] for q, vals in d.items()} for k, d in g.items()}
            for m, g in grads.items()
        },
    }
    return LabResult(headline=headline, metrics=metrics, plots=["echo.png"])
