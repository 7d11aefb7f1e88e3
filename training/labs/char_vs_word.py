"""char-vs-word: the committed character LSTM against a word LSTM trained here, both in bits per character.

Both models are scored on the same text: the committed generator's validation tail of the Sherlock canon (its
manifest's train/validation sizes, through the generator's own ``split_text``).

    char model:  the exported ONNX graphs (fp32), training.generator.evaluate.bits_per_char: 64 pieces side by
                 side, each read after the 256 characters before it (the first after the "\\n" prime)
    word model:  training.labs.word_lm: tokens that rebuild the text exactly (words, digit runs, whitespace
                 runs, single punctuation); its bits per token summed over the tail, plus the bits to spell
                 each <unk> with a character bigram model of the training text's OOV tokens, divided by the
                 tail's characters. One stream from the zero state, after a paragraph-break start token.

A per-character PyTorch pass of the char model (same pieces) splits both models' bits by the kind of token each
character belongs to (in-vocabulary word, whitespace, punctuation, number, or a token outside the word
vocabulary, whatever its kind): where does each model pay?
"""

from __future__ import annotations

PROMPT = "\n\n     "  # a paragraph break: the word model's start token and both models' sampling prompt
KINDS = ("word", "space", "punct", "number", "unknown")  # unknown: any token outside the word vocabulary


def add_arguments(p) -> None:
    p.add_argument("--models", default="exported_models", help="exported-models root (the char model)")
    p.add_argument("--text", help="the canon (unset: $DATA_DIR/sherlock/canon.txt)")
    p.add_argument("--minutes", type=float, default=1.5, help="word-model training budget (--quick 0.1)")
    p.add_argument("--vocab", type=int, default=10000, help="word vocabulary size, <unk> included")
    p.add_argument("--embed-dim", type=int, default=512, help="tied to the decoder (--quick 128)")
    p.add_argument("--hidden-size", type=int, default=512, help="(--quick 128)")
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=32, help="parallel token streams")
    p.add_argument("--bptt", type=int, default=64, help="tokens per truncated-BPTT chunk")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--tail-chars", type=int, default=0, help="score the first N tail characters (0 = all; --quick 12000)"
    )
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of both models")
    p.add_argument("--sample-chars", type=int, default=400)


def kind_of(tok: str) -> int:
    return 0 if tok[0].isalpha() else 1 if tok[0].isspace() else 3 if tok[0].isdigit() else 2


def char_bits(model, ids, prime, device, streams: int = 64, context: int = 256):
    """-log2 p of every character of ids (N,), the pieces and contexts of evaluate.bits_per_char (PyTorch)."""
    import numpy as np
    import torch

    n = len(ids)
    streams = max(1, min(streams, n // 64 or 1))
    bounds = np.linspace(0, n, streams + 1).astype(int)
    rows, width = [], context + int(np.diff(bounds).max())
    for s, e in zip(bounds[:-1], bounds[1:]):
        ctx = ids[max(0, s - context) : s] if s else prime  # the first piece reads the "\n" prime
        seq = np.concatenate([ctx, ids[s:e]])  # input: context + piece; the last input only feeds nothing
        rows.append((len(ctx), e - s, np.pad(seq, (0, width + 1 - len(seq)))))  # right padding never leaks back
    x = torch.from_numpy(np.stack([r[2] for r in rows])).to(device)  # (B, width + 1)
    with torch.no_grad():
        logits, _, _ = model(x[:, :-1], *model.init_state(len(rows), device))  # (B, width, V)
        logp = torch.log_softmax(logits.float(), -1).gather(2, x[:, 1:, None])[..., 0].cpu().numpy()
    # piece b's character j is predicted at position c_b - 1 + j
    return -np.concatenate([logp[b, c - 1 : c - 1 + k] for b, (c, k, _) in enumerate(rows)]) / np.log(2)


def run(args, ctx):
    import numpy as np
    import torch

    from runtime.generator import GeneratorRuntime, TextStream
    from training.generator.evaluate import bits_per_char
    from training.labs import word_lm as wl
    from training.labs.committed import canon_split, load_char_model
    from training.labs.common import LabResult

    char_model, _, man = load_char_model(args.models)
    train_text, val_text, val_frac = canon_split(args.text, man)
    tail = val_text[: args.tail_chars or (12000 if ctx.quick else len(val_text))]
    minutes = 0.1 if ctx.quick else args.minutes
    dev = ctx.device

    # ---- the char model: ONNX through the evaluate code, then per character in PyTorch for the breakdown
    provider = "cuda" if dev.type == "cuda" else "cpu"
    runtime = GeneratorRuntime(args.models, provider, intra_threads=torch.get_num_threads(), precision="fp32")
    char_ids = runtime.encode(tail)
    char_bpc = bits_per_char(runtime, char_ids)
    per_char = char_bits(char_model.to(dev), char_ids, runtime.encode(runtime.PRIME), dev)  # (N,)

    # ---- the word model
    train_toks, tail_toks = wl.tokenize(train_text), wl.tokenize(tail)
    assert "".join(tail_toks) == tail and "".join(train_toks) == train_text  # exact reconstruction
    wv = wl.WordVocab.build(train_toks, args.vocab)
    train_ids, tail_ids = wv.encode(train_toks), wv.encode(tail_toks)
    speller = wl.Speller([t for t, i in zip(train_toks, train_ids) if i == wl.UNK_ID], set(train_text))
    unk_bits = np.array([speller.bits(t) if i == wl.UNK_ID else 0.0 for t, i in zip(tail_toks, tail_ids)])
    lens = np.array([len(t) for t in tail_toks])
    first = wv.stoi[PROMPT]
    torch.manual_seed(ctx.seed)
    dims = (128, 128) if ctx.quick else (args.embed_dim, args.hidden_size)  # quick: a model that learns in seconds
    cfg = wl.WordConfig(len(wv), *dims, args.num_layers, args.dropout)
    model = wl.WordLM(cfg).to(dev)
    n_curve = min(len(tail_ids), 3000)  # the curve: the first tokens of the tail, outside the time budget

    def curve_point():
        bits = wl.token_bits(model, tail_ids[:n_curve], first, dev) + unk_bits[:n_curve]
        return {"val_bits_per_char_head": float(bits.sum() / lens[:n_curve].sum())}

    with ctx.bar(desc="word LSTM (steps)") as bar:
        fit = wl.train(
            model,
            train_ids,
            minutes=minutes,
            batch=args.batch_size,
            bptt=args.bptt,
            lr=args.lr,
            warmup=10 if ctx.quick else 50,
            on_eval=curve_point,
            evals=4 if ctx.quick else 8,
            bar=bar,
        )
    tok_bits = wl.token_bits(model, tail_ids, first, dev)  # (tokens,)
    word_total = tok_bits.sum() + unk_bits.sum()
    word_bpc = float(word_total / len(tail))
    # the context-free reference: unigram token frequencies of the training text (add-one), same unk spelling
    counts = np.bincount(train_ids, minlength=len(wv)) + 1.0
    unigram_bpc = float((-np.log2(counts / counts.sum())[tail_ids].sum() + unk_bits.sum()) / len(tail))

    # ---- where the bits go: per kind of token, bits per character of that kind
    kinds = np.array([kind_of(t) for t in tail_toks])
    kinds[tail_ids == wl.UNK_ID] = KINDS.index("unknown")
    char_kind = np.repeat(kinds, lens)  # (N,): the kind of each character's token
    breakdown = {}
    for k, name in enumerate(KINDS):
        n_chars = int(lens[kinds == k].sum())
        w = float(tok_bits[kinds == k].sum() + unk_bits[kinds == k].sum())
        c = float(per_char[char_kind == k].sum())
        breakdown[name] = {
            "chars": n_chars,
            "tokens": int((kinds == k).sum()),
            "char_model_bits": c,
            "word_model_bits": w,
            "char_model_bpc": c / max(n_chars, 1),
            "word_model_bpc": w / max(n_chars, 1),
        }

    # ---- samples at the same temperature from the same prompt
    t = args.temperature
    char_sample = "".join(TextStream(runtime, PROMPT, args.sample_chars, temperature=t, seed=ctx.seed))
    word_sample = wl.sample(model, wv, speller, PROMPT, args.sample_chars, t, seed=ctx.seed, device=dev)
    ctx.path("samples.txt").write_text(
        f"--- committed char model (ONNX fp32), T={t}, prompt {PROMPT!r} ---\n{char_sample}\n\n"
        f"--- word LSTM ({minutes:g} min), T={t}, same prompt (<unk> spelled by the bigram speller) ---\n"
        f"{word_sample}\n"
    )

    plots = [plot(ctx, fit["history"], char_bpc, word_bpc, float(per_char[: lens[:n_curve].sum()].mean()), breakdown)]
    oov = float((tail_ids == wl.UNK_ID).mean())
    headline = {
        "char_bpc": round(char_bpc, 4),
        "word_bpc": round(word_bpc, 4),
        "word_minus_char_bpc": round(word_bpc - char_bpc, 4),
        "word_over_char": round(word_bpc / char_bpc, 3),
        "word_unigram_bpc": round(unigram_bpc, 4),
        "tail_chars": len(tail),
        "oov_token_rate": round(oov, 4),
        "word_unk_share_of_bits": round(float(unk_bits.sum() / word_total), 3),
        "word_train_minutes": round(fit["train_seconds"] / 60, 2),
        "word_epochs": round(fit["epochs"], 2),
    }
    metrics = {
        "split": {"val_frac": val_frac, "train_chars": len(train_text), "val_chars": len(val_text)},
        "char_model": {
            "bits_per_char_onnx": char_bpc,
            "bits_per_char_pytorch": float(per_char.mean()),
            "trained_minutes": man["metrics"]["train_seconds"] / 60,
            "params": man["metrics"]["params"],
        },
        "word_model": {
            "config": vars(cfg),
            "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(wv),
            "train_tokens": len(train_ids),
            "tail_tokens": len(tail_ids),
            "bits_per_token": float(tok_bits.mean()),
            "perplexity": float(2 ** tok_bits.mean()),
            "unk_spelling_bits": float(unk_bits.sum()),
            "unk_share_of_bits": float(unk_bits.sum() / word_total),
            "oov_token_rate": oov,
            "unigram_bits_per_char": unigram_bpc,
            "batch_size": args.batch_size,
            "bptt": args.bptt,
            "lr": args.lr,
            **fit,
        },
        "breakdown": breakdown,
        "samples": {"temperature": t, "prompt": PROMPT, "char": char_sample, "word": word_sample},
    }
    return LabResult(headline=headline, metrics=metrics, plots=plots)


def plot(ctx, history, char_bpc, word_bpc, char_head_bpc, breakdown) -> str:
    import numpy as np

    from training.common.plots import pyplot

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100)
    a.plot(
        [h["minutes"] for h in history],
        [h["val_bits_per_char_head"] for h in history],
        marker="o",
        label="word LSTM (first 3,000 tail tokens)",
    )
    a.axhline(char_head_bpc, color="tab:red", ls="--", label=f"committed char LSTM, same text ({char_head_bpc:.3f})")
    a.set(
        title="word LSTM while training, in bits per character",
        xlabel="training minutes (word model)",
        ylabel="bits per character",
    )
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    x = np.arange(len(KINDS))
    for off, who, color in ((-0.2, "char_model", "tab:red"), (0.2, "word_model", "tab:blue")):
        vals = [breakdown[k][f"{who}_bpc"] for k in KINDS]
        bars = b.bar(x + off, vals, 0.4, color=color, label=who.replace("_", " "))
        b.bar_label(bars, fmt="%.2f", fontsize=7)
    b.set_xticks(
        x, [f"{k}\n({breakdown[k]['chars'] / sum(v['chars'] for v in breakdown.values()):.0%} of chars)" for k in KINDS]
    )
    b.set(
        title=f"where the bits go (whole tail: char {char_bpc:.3f}, word {word_bpc:.3f} bits/char overall)",
        ylabel="bits per character of that kind",
    )
    b.title.set_fontsize(10)
    b.grid(axis="y", alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.path("char_vs_word.png"))
    plt.close(fig)
    return "char_vs_word.png"
