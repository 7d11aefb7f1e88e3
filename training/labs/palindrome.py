"""Palindrome: does reading the sequence both ways help to tell whether it reads the same both ways?

    x (B, T, 10): one-hot digits       label: 1 if x == reversed(x)

Half of every batch are true palindromes; the other half are non-palindromes, half of them near-misses (a
palindrome with one digit of one half changed, so exactly one pair disagrees) and half uniformly random digits.
A unidirectional model must hold the first half until its mirror arrives; a bidirectional one reads both ends
last, one direction each (the readout concatenates both directions' final states). The two have the same cell
and, by choosing their hidden sizes, the same parameter count. Each (model, T, seed) trains a fresh model until
it scores >= 0.99 on held-out sequences or the step budget runs out; accuracies are averaged over the seeds.
"""

from __future__ import annotations

LENGTHS, QUICK_LENGTHS = "4,6,8,12,16", "4,16"
SOLVED = 0.95
DIGITS = 10


def add_arguments(p) -> None:
    p.add_argument("--cell", default="lstm", choices=["rnn", "gru", "lstm"])
    p.add_argument("--lengths", default=None, help=f"sequence lengths to sweep ({LENGTHS}; --quick {QUICK_LENGTHS})")
    p.add_argument(
        "--hidden",
        type=int,
        default=32,
        help="hidden size per direction of the bidirectional model; the unidirectional one gets the "
        "hidden size with the nearest parameter count",
    )
    p.add_argument("--steps", type=int, default=None, help="step budget per (model, length) (2500; --quick 1000)")
    p.add_argument("--batch", type=int, default=64, help="fresh random sequences per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument(
        "--seeds", type=int, default=None, help="training seeds per (model, length), accuracies averaged (2; --quick 1)"
    )


def digit_batch(n: int, length: int, gen, device):
    """n sequences (n, T, 10) one-hot and labels (n,): n//2 palindromes, then near-misses and random ones."""
    import torch
    import torch.nn.functional as F

    half = length // 2
    seq = torch.randint(0, DIGITS, (n, length), generator=gen)
    pos, near = n // 2, n // 2 + (n - n // 2) // 2  # [0, pos) palindromes, [pos, near)
    seq[:near, length - half :] = seq[:near, :half].flip(1)  # mirror the first half
    k = torch.randint(0, half, (near - pos,), generator=gen)  # near-miss: change one digit ...
    side = torch.randint(0, 2, (near - pos,), generator=gen).bool()  # ... in either half
    at = torch.where(side, length - 1 - k, k)
    rows = torch.arange(pos, near)
    seq[rows, at] = (seq[rows, at] + torch.randint(1, DIGITS, (near - pos,), generator=gen)) % DIGITS
    label = (seq == seq.flip(1)).all(1).float()  # random ones can be palindromes too
    return F.one_hot(seq, DIGITS).float().to(device), label.to(device)


def run(args, ctx):
    import torch

    from training.common.plots import pyplot
    from training.labs import seqtasks as st
    from training.labs.common import LabResult

    lengths = sorted(int(n) for n in (args.lengths or (QUICK_LENGTHS if ctx.quick else LENGTHS)).split(","))
    steps = args.steps or (1000 if ctx.quick else 2500)
    seeds = [ctx.seed + k for k in range(args.seeds or (1 if ctx.quick else 2))]
    dev = ctx.device
    bi_model = st.SeqModel(args.cell, DIGITS, args.hidden, 1, bidirectional=True)
    uni_hidden = st.matched_hidden(args.cell, DIGITS, 1, st.count_params(bi_model))
    shapes = {"unidirectional": (uni_hidden, False), "bidirectional": (args.hidden, True)}
    params = {k: st.count_params(st.SeqModel(args.cell, DIGITS, h, 1, bidirectional=b)) for k, (h, b) in shapes.items()}
    label = {k: f"{k} (H={h}{' x2' if b else ''}, {params[k]} params)" for k, (h, b) in shapes.items()}
    parts = ("palindromes", "near_misses", "random")  # digit_batch's layout: 1/2, 1/4, 1/4

    def part_slices(n: int):
        return dict(zip(parts, (slice(0, n // 2), slice(n // 2, 3 * n // 4), slice(3 * n // 4, n))))

    runs = {}
    for kind, (hidden, bidir) in shapes.items():
        for i, length in enumerate(lengths):
            for s_ in seeds:
                seed = s_ * 1000 + i  # the same data for both models
                gen = torch.Generator().manual_seed(seed)
                x_val, y_val = digit_batch(2000, length, torch.Generator().manual_seed(seed + 10**6), dev)
                torch.manual_seed(seed)
                model = st.SeqModel(args.cell, DIGITS, hidden, 1, bidirectional=bidir).to(dev)
                hist = st.train(
                    model,
                    lambda step, length=length, gen=gen: digit_batch(args.batch, length, gen, dev),
                    st.bce_loss,
                    steps=steps,
                    ctx=ctx,
                    lr=args.lr,
                    desc=f"palindrome {kind} T={length} seed {s_}",
                    check_every=50,
                    check=lambda m, x_val=x_val, y_val=y_val: st.binary_accuracy(m, x_val, y_val) >= 0.99,
                )
                runs[f"{kind}/{length}/seed{s_}"] = {
                    "accuracy": st.binary_accuracy(model, x_val, y_val),
                    "steps": hist["steps"],
                    "seconds": hist["seconds"],  # and where the errors are, by kind of held-out sequence:
                    **{
                        f"acc_{p}": st.binary_accuracy(model, x_val[sl], y_val[sl])
                        for p, sl in part_slices(len(y_val)).items()
                    },
                    "loss_curve": st.downsample(hist["loss"]),
                    "grad_norm_curve": st.downsample(hist["grad_norm"]),
                }

    def mean(kind: str, length: int, key: str = "accuracy") -> float:
        return sum(runs[f"{kind}/{length}/seed{s_}"][key] for s_ in seeds) / len(seeds)

    acc = {k: [mean(k, n) for n in lengths] for k in shapes}

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.3), dpi=100)
    st.sweep_plot(a, lengths, {label[k]: acc[k] for k in shapes}, "held-out accuracy", chance=0.5, threshold=SOLVED)
    for line, kind in zip(a.get_lines(), shapes):  # each seed as a dot around the mean
        for s_ in seeds:
            a.plot(
                lengths,
                [runs[f"{kind}/{n}/seed{s_}"]["accuracy"] for n in lengths],
                ".",
                ms=5,
                alpha=0.5,
                color=line.get_color(),
            )
    a.set_title(f"palindrome ({args.cell}, <= {steps} steps): mean of {len(seeds)} seed(s), dots = each")
    a.set_ylim(0.4, 1.03)
    for line, kind in zip(a.get_lines(), shapes):  # same colour per model as on the left
        for p, ls in zip(parts[:2], ("-", "--")):
            b.plot(
                lengths,
                [mean(kind, n, f"acc_{p}") for n in lengths],
                ls=ls,
                marker="o",
                ms=4,
                color=line.get_color(),
                label=f"{kind}: {p.replace('_', '-')}",
            )
    st.sweep_plot(b, lengths, {}, "held-out accuracy", chance=0.5)
    b.set_title("by kind: palindromes, near-misses (one pair differs)")
    b.set_ylim(-0.03, 1.03)
    fig.tight_layout()
    fig.savefig(ctx.path("palindrome.png"))
    plt.close(fig)

    headline = {
        "cell": args.cell,
        "params_uni": params["unidirectional"],
        "params_bi": params["bidirectional"],
        "hidden_uni": uni_hidden,
        "hidden_bi": args.hidden,
        "seeds": len(seeds),
    }
    headline.update({f"{k[:3]}_solved_up_to": st.solved_up_to(lengths, acc[k], SOLVED) for k in shapes})
    for n in lengths[-3:]:
        headline.update({f"{k[:3]}_acc_T{n}": round(acc[k][lengths.index(n)], 3) for k in shapes})
    metrics = {
        "lengths": lengths,
        "accuracy": acc,
        "params": params,
        "hidden": {k: h for k, (h, _) in shapes.items()},
        "seeds": seeds,
        "steps_budget": steps,
        "threshold": SOLVED,
        "runs": runs,
        "accuracy_by_kind": {k: {p: [mean(k, n, f"acc_{p}") for n in lengths] for p in parts} for k in shapes},
    }
    return LabResult(headline=headline, metrics=metrics, plots=["palindrome.png"])
