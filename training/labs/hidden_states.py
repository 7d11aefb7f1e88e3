"""Hidden states: what do a recurrent network's states look like, and do single units mean anything?

Three models, one tool (PCA by SVD of the centred states):

    sine LSTM (training.labs.sine):  the hidden trajectory over a held-out noisy sine, coloured by phase;
                                     how well the first two PCs decode the phase (R^2 of cos/sin of it)
    committed classifier (BiLSTM):   pooled features of the held-out test articles per topic in 2-D PCA
                                     (variance explained, silhouette, leave-one-out nearest-centroid accuracy);
                                     per-token states of one article per topic as trajectories
    committed char model (2 x 512):  h and c of both layers over a stretch of the validation tail, each unit
                                     correlated with text features (inside quotes, chars since newline, next
                                     char is newline, at a word boundary); the same for an untrained copy

The untrained copy is the control: a random LSTM's units also follow what the input shows directly (a space was
just read); only the gap between trained and untrained says that training made a unit.
"""

from __future__ import annotations

import math

from training.labs.committed import char_states, load_char_model, load_classifier

FEATURES = ("inside_quotes", "chars_since_newline", "next_is_newline", "word_boundary")
STREAMS, WARM = 16, 200  # char trace: parallel pieces; leading states of each piece left out (no context yet)


def add_arguments(p) -> None:
    p.add_argument("--models", default="exported_models", help="exported-models root")
    p.add_argument("--data-dir", help="BBC folder (unset: $DATA_DIR/bbc)")
    p.add_argument("--text", help="the canon (unset: $DATA_DIR/sherlock/canon.txt)")
    p.add_argument("--articles", type=int, default=0, help="held-out test articles embedded (0 = all; --quick 50)")
    p.add_argument("--chars", type=int, default=60000, help="validation characters traced (--quick 8000)")
    p.add_argument("--sine-steps", type=int, help="sine LSTM training steps (unset: the sine lab's)")


def pca(x, k: int = 2):
    """x (N, D) -> coords (N, k), share of variance of each of the k components (k,)."""
    import numpy as np

    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)  # rows of vt: principal directions
    return xc @ vt[:k].T, (s[:k] ** 2) / (s**2).sum()


# ---------------------------------------------------------------- sine
def sine_part(args, ctx) -> dict:
    import numpy as np
    import torch

    from training.labs.sine import fit_forecaster, sine_series

    model, fit = fit_forecaster("lstm", ctx, hidden=32, steps=args.sine_steps)
    t, _, noisy = sine_series(600, seed=ctx.seed + 1)  # held out: fresh noise
    with torch.no_grad():
        _, out, _ = model(torch.from_numpy(noisy).to(ctx.device).view(1, -1, 1))  # out (1, T, H)
    keep = slice(50, None)  # the first steps are the state settling from zero
    h, phase = out[0].cpu().numpy()[keep], ((t % 50.0) / 50.0)[keep]
    coords, var = pca(h)
    # a ring means the 2 PCs encode the phase: least squares from [pc1, pc2, 1] to [cos, sin] of it
    a = np.c_[coords, np.ones(len(coords))]
    target = np.c_[np.cos(2 * math.pi * phase), np.sin(2 * math.pi * phase)]
    resid = target - a @ np.linalg.lstsq(a, target, rcond=None)[0]
    r2 = 1 - (resid**2).sum() / ((target - target.mean(0)) ** 2).sum()
    return {
        "coords": coords,
        "phase": phase,
        "var": var.tolist(),
        "phase_r2": float(r2),
        "one_step_mse": fit["one_step_mse"],
        "train_steps": fit["steps"],
    }


# ---------------------------------------------------------------- classifier
def loo_centroid_accuracy(x, y) -> float:
    """Nearest class centroid, each point's own class centroid computed without it."""
    import numpy as np

    classes = np.unique(y)
    n = np.array([(y == c).sum() for c in classes])
    cent = np.stack([x[y == c].mean(0) for c in classes])  # (C, D)
    d = ((x[:, None] - cent[None]) ** 2).sum(-1)  # (N, C)
    own = np.searchsorted(classes, y)
    loo = (n[own, None] * cent[own] - x) / (n[own, None] - 1)  # own centroid without the point
    d[np.arange(len(x)), own] = ((x - loo) ** 2).sum(-1)
    return float((classes[d.argmin(1)] == y).mean())


def classifier_part(args, ctx) -> dict:
    import numpy as np
    import torch
    from sklearn.metrics import silhouette_score

    from training.classifier import data as bbc
    from training.classifier.model import pool
    from training.classifier.tokenizer import Vocab
    from training.classifier.train import collate
    from training.common.cli import data_path

    model, man = load_classifier(args.models)
    model.to(ctx.device)
    c = model.config
    by_id = {a.id: a for a in bbc.read_folder(data_path(args.data_dir, "bbc"))}
    test = [by_id[i] for i in man["split"]["test"]]  # held out from training; ids sorted by topic
    n = args.articles or (50 if ctx.quick else len(test))
    if n < len(test):
        test = bbc.first_per_class(test, math.ceil(n / len(man["labels"])))
    y = np.array([man["labels"].index(bbc.LABELS[a.label]) for a in test])
    vocab = Vocab(man["vocab"])
    seqs = [vocab.encode(a.text, man["max_len"]) for a in test]
    pooled, tokens, logits, worst = [], [], [], 0.0
    with torch.no_grad():
        for i in ctx.bar(range(0, len(seqs), 32), desc="classifier"):
            ids, lengths = (t.to(ctx.device) for t in collate(seqs[i : i + 32]))
            out = model.token_states(ids, lengths)  # (B, T, 2H)
            feats = pool(out, lengths, c.poolings, c.hidden_size, c.bidirectional)  # (B, 2H * poolings)
            logits.append(model.head(feats).cpu())
            worst = max(worst, float((logits[-1] - model(ids, lengths).cpu()).abs().max()))  # same model?
            pooled.append(feats.cpu().numpy())
            tokens += [out[b, :k].cpu().numpy() for b, k in enumerate(lengths.tolist())]
    pooled = np.concatenate(pooled)  # (N, 2H * poolings)
    coords, var = pca(pooled)
    tok_coords, tok_var = pca(np.concatenate(tokens))  # every token of every article, (sum T, 2)
    starts = np.cumsum([0] + [len(t) for t in tokens])
    first = [int(np.flatnonzero(y == k)[0]) for k in np.unique(y)]  # one article per topic
    return {
        "coords": coords,
        "y": y,
        "labels": man["labels"],
        "n": len(test),
        "var": var.tolist(),
        "silhouette_2d": float(silhouette_score(coords, y)),
        "silhouette_full": float(silhouette_score(pooled, y)),
        "centroid_acc_2d": loo_centroid_accuracy(coords, y),
        "centroid_acc_full": loo_centroid_accuracy(pooled, y),
        "accuracy": float((torch.cat(logits).argmax(1).numpy() == y).mean()),
        "logit_check": worst,
        "token_var": tok_var.tolist(),
        "token_cloud": tok_coords[:: max(1, len(tok_coords) // 2000)],
        "trajectories": {test[i].id: (int(y[i]), tok_coords[starts[i] : starts[i + 1]]) for i in first},
    }


# ---------------------------------------------------------------- char model
def text_features(text: str):
    """(N, 4) float32 in FEATURES order, each describing the text up to and including character i."""
    import numpy as np

    out = np.zeros((len(text), len(FEATURES)), np.float32)
    inside, since, prev = 0, 0, ""
    for i, ch in enumerate(text):
        if ch == "\n" and prev == "\n":
            inside = 0  # a paragraph break: an unclosed quote is reopened by the next paragraph's "
        inside ^= ch == '"'
        since = 0 if ch == "\n" else since + 1
        out[i] = (inside, since, text[i + 1 : i + 2] == "\n", not (ch.isalnum() or ch == "'"))
        prev = ch
    return out


def correlate(states, feats):
    """Pearson r of every unit (N, U) with every feature (N, F) -> (U, F)."""
    zs = (states - states.mean(0)) / (states.std(0) + 1e-8)
    zf = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    return zs.T @ zf / len(zs)


def char_part(args, ctx) -> dict:
    import numpy as np
    import torch

    from training.generator.model import CharConfig, CharRNN
    from training.labs.committed import canon_split

    model, vocab, man = load_char_model(args.models)
    _, val, _ = canon_split(args.text, man)
    n = min(len(val), 8000 if ctx.quick else args.chars)
    length = n // STREAMS
    stretch = val[: length * STREAMS]
    ids = vocab.encode(stretch).reshape(STREAMS, length)  # piece b is the b-th consecutive slice
    feats = text_features(stretch).reshape(STREAMS, length, -1)[:, WARM:].reshape(-1, len(FEATURES))
    torch.manual_seed(ctx.seed)
    untrained = CharRNN(CharConfig(**man["config"])).eval()  # the control: same shapes, random weights
    names = [
        f"L{i + 1}.{kind}[{u}]"
        for i in range(model.cfg.num_layers)
        for kind in "hc"
        for u in range(model.cfg.hidden_size)
    ]  # the order of char_states' last axis
    found, sentence = {}, None
    for which, m in (("trained", model), ("untrained", untrained)):
        m.to(ctx.device)
        states, check = char_states(m, ids, ctx.device)  # (B, T, U)
        r = correlate(states[:, WARM:].reshape(-1, states.shape[-1]), feats)  # (U, F)
        best = np.abs(r).argmax(0)
        top = {
            f: {"unit": names[u], "index": int(u), "r": float(r[u, k])} for k, (f, u) in enumerate(zip(FEATURES, best))
        }
        found[which] = {
            "check_max_abs_diff": check,
            "top": top,
            "units_abs_r_over_0.5": {f: int((np.abs(r[:, k]) > 0.5).sum()) for k, f in enumerate(FEATURES)},
        }
        if which == "trained":  # trace one quoted passage across a line break, read after 256 chars of context
            start = stretch.find('\n\n     "', 300) + 2
            text = stretch[start - 256 : start + 170]
            s, _ = char_states(m, vocab.encode(text)[None], ctx.device)
            sentence = {"text": text[256:], "units": s[0, 256:][:, best], "feats": text_features(text)[256:]}
    return {"chars": len(stretch), "streams": STREAMS, "warm": WARM, **found, "sentence": sentence}


# ---------------------------------------------------------------- plots and run
def plot_all(ctx, sine, clf, char) -> list[str]:
    import numpy as np

    from training.common.plots import pyplot

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    sc = a.scatter(*sine["coords"].T, c=sine["phase"], cmap="twilight", s=10)
    a.plot(*sine["coords"].T, color="grey", lw=0.3)
    a.set(
        title=f"sine LSTM hidden state over a held-out series\n({sum(sine['var']):.0%} of variance; phase "
        f"R² {sine['phase_r2']:.2f} from 2 PCs)",
        xlabel="PC1",
        ylabel="PC2",
    )
    fig.colorbar(sc, ax=a, label="phase")
    colors = plt.get_cmap("tab10")
    for k, label in enumerate(clf["labels"]):
        b.scatter(*clf["coords"][clf["y"] == k].T, s=12, color=colors(k), label=label)
    b.set(
        title=f"classifier: pooled features of {clf['n']} test articles\n({sum(clf['var']):.0%} of variance; "
        f"silhouette {clf['silhouette_2d']:.2f}, nearest centroid {clf['centroid_acc_2d']:.0%})",
        xlabel="PC1",
        ylabel="PC2",
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.path("pca_sine_classifier.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=100)
    ax.scatter(*clf["token_cloud"].T, s=1, color="lightgrey")
    for aid, (k, traj) in clf["trajectories"].items():
        w = min(15, len(traj))  # a running mean over 15 tokens: the path, not the token-to-token jitter
        traj = np.stack([np.convolve(traj[:, j], np.ones(w) / w, mode="valid") for j in range(2)], 1)
        ax.plot(*traj.T, lw=1, color=colors(k), label=f"{aid} ({clf['labels'][k]})")
        ax.plot(*traj[0], "o", color=colors(k)), ax.plot(*traj[-1], "x", color=colors(k), ms=8)
    ax.set(
        title=f"classifier: per-token BiLSTM states, PCA of all tokens ({sum(clf['token_var']):.0%})\n"
        "one article per topic (running mean of 15 tokens): o start, x end",
        xlabel="PC1",
        ylabel="PC2",
    )
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.path("classifier_tokens.png"))
    plt.close(fig)

    s = char["sentence"]
    units = s["units"] / (np.abs(s["units"]).max(0) + 1e-8)  # (T, F), each unit scaled to [-1, 1]
    rows = np.concatenate([units.T, (s["feats"] / (s["feats"].max(0) + 1e-8)).T])  # (2F, T)
    top = char["trained"]["top"]
    labels = [f"{top[f]['unit']} (r {top[f]['r']:+.2f} with {f})" for f in FEATURES]
    labels += [f"feature: {f}" for f in FEATURES]
    fig, ax = plt.subplots(figsize=(17, 4), dpi=100)
    ax.imshow(rows, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(s["text"])), [{"\n": "⏎", " ": "·"}.get(ch, ch) for ch in s["text"]], fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title("committed char model: best unit per feature over one passage (trained; scaled per row)")
    fig.tight_layout()
    fig.savefig(ctx.path("char_units.png"))
    plt.close(fig)
    return ["pca_sine_classifier.png", "classifier_tokens.png", "char_units.png"]


def run(args, ctx):
    from training.labs.common import LabResult

    sine = sine_part(args, ctx)
    clf = classifier_part(args, ctx)
    char = char_part(args, ctx)
    plots = plot_all(ctx, sine, clf, char)
    headline = {
        "sine_pc12_var": round(sum(sine["var"]), 3),
        "sine_phase_r2": round(sine["phase_r2"], 3),
        "clf_pc12_var": round(sum(clf["var"]), 3),
        "clf_silhouette_2d": round(clf["silhouette_2d"], 3),
        "clf_centroid_acc_2d": round(clf["centroid_acc_2d"], 3),
    }
    for f in FEATURES:
        headline[f"char_r_{f}"] = round(char["trained"]["top"][f]["r"], 3)
        headline[f"char_r_{f}_untrained"] = round(char["untrained"]["top"][f]["r"], 3)
    drop = ("coords", "phase", "y", "token_cloud", "trajectories")
    metrics = {
        "sine": {k: v for k, v in sine.items() if k not in drop},
        "classifier": {k: v for k, v in clf.items() if k not in drop},
        "char": {**{k: v for k, v in char.items() if k != "sentence"}, "sentence": char["sentence"]["text"]},
    }
    return LabResult(headline=headline, metrics=metrics, plots=plots)
