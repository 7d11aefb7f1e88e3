"""``train-generator``: train the character-level generator and write a run folder.

The run folder holds config.json, vocab.json, best.pt (config + state_dict + vocab), last.pt (to resume),
metrics.json, curves.png (train and validation bits/char over time) and samples.txt (T = 0.6 and 0.8).
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from training.common.cli import UserError, data_path, make_run_dir
from training.common.files import read_json, read_text, write_json

log = logging.getLogger(__name__)
CANON = "sherlock/canon.txt"


def config_defaults(cls) -> dict:
    """A config dataclass's field defaults by name (fields without one left out): the flags' defaults."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def flag_values(args, cls) -> dict:
    """The values of the flags named after ``cls``'s fields (a field without a flag keeps its default)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def add_arguments(p) -> None:
    # the model's and the loop's own defaults (model.py, train.py), never restated here: they cannot drift
    from training.generator.model import CELLS, CharConfig
    from training.generator.train import TrainConfig

    m, t = config_defaults(CharConfig), config_defaults(TrainConfig)
    p.add_argument("--text", help=f"training text (default $DATA_DIR/{CANON})")
    p.add_argument("--val-frac", type=float, default=0.05, help="last fraction of the text held out")
    p.add_argument("--min-count", type=int, default=2, help="rarer characters map to <unk>")
    g = p.add_argument_group("model")
    g.add_argument("--cell", default=m["cell"], choices=list(CELLS))
    g.add_argument("--embed-dim", type=int, default=m["embed_dim"])
    g.add_argument("--hidden-size", type=int, default=m["hidden_size"])
    g.add_argument("--num-layers", type=int, default=m["num_layers"])
    g.add_argument(
        "--dropout", type=float, default=m["dropout"], help="on the embeddings, between layers and before the decoder"
    )
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=t["batch_size"], help="parallel streams")
    g.add_argument("--bptt", type=int, default=t["bptt"], help="characters per truncated-BPTT chunk")
    g.add_argument("--lr", type=float, default=t["lr"])
    g.add_argument("--min-lr-frac", type=float, default=t["min_lr_frac"])
    g.add_argument("--warmup-steps", type=int, default=t["warmup_steps"])
    g.add_argument("--weight-decay", type=float, default=t["weight_decay"])
    g.add_argument("--clip", type=float, default=t["clip"])
    g.add_argument("--epochs", type=float, default=t["epochs"], help="upper bound on passes over the text")
    g.add_argument(
        "--time-budget-min",
        type=float,
        default=t["time_budget_min"],
        help="stop after this many minutes (cosine follows the clock)",
    )
    g.add_argument("--eval-every", type=int, default=t["eval_every"], help="steps between validations")
    g.add_argument(
        "--patience", type=int, default=t["patience"], help="validations without improvement before stopping"
    )
    g.add_argument(
        "--bf16", action="store_true", default=t["bf16"], help="bfloat16 autocast (fast on AVX512-BF16 CPUs)"
    )
    g.add_argument("--seed", type=int, default=t["seed"])
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="runs", help="root folder for new run folders")
    p.add_argument("--run-dir", help="use this run folder (with --resume: continue its last.pt)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def main(args) -> int:
    import torch

    from training.common.plots import plot_curves
    from training.generator.data import CharVocab, fingerprint, split_text
    from training.generator.model import CharConfig, load_checkpoint
    from training.generator.train import TrainConfig, sample, train

    run = Path(args.run_dir) if args.run_dir else make_run_dir(args.out, "generator")
    if args.resume and not (run / "last.pt").is_file():
        raise UserError(f"--resume: no last.pt in {run}")
    doc = read_json(run / "config.json") if args.resume else None
    # a resumed run reads the text and split it was started with, unless --text names the file's new place
    path = data_path(args.text, CANON) if args.text or not doc else Path(doc["text"])
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    text = read_text(path)
    if len(text) < 1000:
        raise UserError(f"{path}: {len(text)} characters is too little text to train on")
    if doc and fingerprint(text) != doc["corpus_fingerprint"]:
        raise UserError(f"--resume: {path} is not the text {run} was trained on (fingerprint differs)")
    torch.set_num_threads(args.threads)
    run.mkdir(parents=True, exist_ok=True)
    val_frac = doc["val_frac"] if doc else args.val_frac
    train_text, val_text = split_text(text, val_frac)
    if args.resume:
        vocab = CharVocab.from_json(read_json(run / "vocab.json"))
        model_cfg, cfg = CharConfig(**doc["model"]), TrainConfig(**doc["train"])
    else:
        vocab = CharVocab.build(train_text, args.min_count)
        model_cfg = CharConfig(vocab_size=len(vocab), **flag_values(args, CharConfig))
        cfg = TrainConfig(**flag_values(args, TrainConfig))
        write_json(run / "vocab.json", vocab.to_json())
    fp = fingerprint(text)
    write_json(
        run / "config.json",
        {
            "model": model_cfg.to_dict(),
            "train": asdict(cfg),
            "text": str(path.resolve()),
            "val_frac": val_frac,
            "corpus_fingerprint": fp,
            "threads": args.threads,
        },
    )
    print(f"run folder: {run}")
    result = train(
        model_cfg,
        cfg,
        vocab.encode(train_text),
        vocab.encode(val_text),
        vocab,
        run,
        resume=args.resume,
        extra={"corpus_fingerprint": fp, "val_frac": val_frac},
        progress=not args.no_progress,
    )

    hist = result["history"]
    minutes = [r["minutes"] for r in hist]
    plot_curves(
        run / "curves.png",
        {"train": (minutes, [r["train_bpc"] for r in hist]), "validation": (minutes, [r["val_bpc"] for r in hist])},
        title="char-LSTM on the Sherlock Holmes canon",
        xlabel="training minutes",
        ylabel="bits per char",
    )
    model, _ = load_checkpoint(run / "best.pt")
    samples = {f"T={t}": sample(model, vocab, "\n     ", 600, t, seed=args.seed) for t in (0.6, 0.8)}
    (run / "samples.txt").write_text("".join(f"--- {k} ---\n{v}\n\n" for k, v in samples.items()))
    metrics = {
        k: result[k] for k in ("best_val_bpc", "best_step", "steps", "train_seconds", "params", "steps_per_epoch")
    }
    metrics.update(
        epochs=result["steps"] / result["steps_per_epoch"],
        train_chars=len(train_text),
        val_chars=len(val_text),
        vocab_size=len(vocab),
        history=hist,
    )
    write_json(run / "metrics.json", metrics)
    print(
        f"best validation {result['best_val_bpc']:.4f} bits/char at step {result['best_step']} "
        f"({result['train_seconds'] / 60:.1f} min); run folder {run}"
    )
    return 0
