"""Truncated-BPTT training loop for the character model.

The training text is laid out as B contiguous streams; each step reads the next ``bptt`` characters of
every stream, starting from the state the previous chunk left (detached, so gradients stop at the chunk
boundary). AdamW, gradient clipping, linear warm-up then cosine decay, evaluation on the validation tail in
bits per character, early stopping, best checkpoint kept. With a time budget the cosine schedule runs on
wall-clock progress, so the learning rate reaches its floor just as the budget runs out.

Knows nothing of Optuna: a search passes ``on_eval(step, metrics)`` (which may raise to stop the run).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime.generator import sample_next
from training.common.files import save_atomic
from training.generator.data import CharVocab, chunks, streams
from training.generator.model import CharConfig, CharRNN, num_params

log = logging.getLogger(__name__)
LN2 = math.log(2)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64  # parallel streams
    bptt: int = 128  # characters per truncated-BPTT chunk
    lr: float = 2e-3
    min_lr_frac: float = 0.05  # the cosine ends at lr * min_lr_frac
    warmup_steps: int = 100
    weight_decay: float = 0.05  # on weight matrices only
    clip: float = 1.0
    epochs: float = 10.0  # upper bound; the time budget usually ends the run first
    time_budget_min: float | None = None
    eval_every: int = 200  # steps
    patience: int = 4  # evaluations without improvement before stopping
    sample_every: int = 1  # print a sample every this many evaluations (0 = never)
    bf16: bool = False  # bfloat16 autocast on CPU: about 2x faster on CPUs with AVX512-BF16
    seed: int = 0


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr to lr * min_lr_frac as progress goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cos)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(model: CharRNN, data: np.ndarray, bptt: int = 256, bf16: bool = False) -> float:
    """Bits per character over (B, N) validation streams, state carried along each stream."""
    model.eval()
    h, c = model.init_state(data.shape[0])
    total, count = 0.0, 0
    for x, y in chunks(data, bptt):
        with _autocast(bf16):
            logits, h, c = model(torch.from_numpy(x), h, c)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += y.size
    return total / count / LN2


@torch.no_grad()
def sample(model: CharRNN, vocab: CharVocab, prompt: str, length: int, temperature: float, seed: int = 0) -> str:
    """Sample ``length`` characters after ``prompt`` (PyTorch, for progress reports)."""
    model.eval()
    rng = np.random.default_rng(seed)
    h, c = model.init_state(1)
    logits, h, c = model(torch.from_numpy(vocab.encode(prompt or "\n"))[None], h, c)
    out = []
    for _ in range(length):
        i = sample_next(logits[0, -1].numpy(), temperature, rng=rng)
        out.append(i)
        logits, h, c = model(torch.tensor([[i]]), h, c)
    return vocab.decode(out)


def _optimizer(model: CharRNN, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not model.embed.weight]
    rest = [p for p in model.parameters() if not any(p is q for q in decay)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def _checkpoint(model, model_cfg, cfg, vocab, step, val_bpc, extra=None) -> dict:
    ckpt = {
        "config": model_cfg.to_dict(),
        "state_dict": model.state_dict(),
        "vocab": vocab.to_json(),
        "train_config": asdict(cfg),
        "step": step,
        "val_bpc": val_bpc,
    }
    return {**ckpt, **(extra or {})}


def train(
    model_cfg: CharConfig,
    cfg: TrainConfig,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    vocab: CharVocab,
    out_dir: str | Path,
    on_eval: Callable[[int, dict], None] | None = None,
    resume: bool = False,
    extra: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train, keeping ``out_dir/best.pt`` (best validation bpc) and ``out_dir/last.pt`` (for resuming).

    Returns {"best_val_bpc", "best_step", "steps", "train_seconds", "history": [...], "params"}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = CharRNN(model_cfg)
    opt = _optimizer(model, cfg)
    val = streams(val_ids, min(16, max(1, len(val_ids) // 512)))
    steps_per_epoch = math.ceil((len(train_ids) // cfg.batch_size - 1) / cfg.bptt)
    max_steps = int(cfg.epochs * steps_per_epoch)
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    state = {
        "step": 0,
        "epoch": 0,
        "chunk": 0,
        "elapsed": 0.0,
        "best_bpc": float("inf"),
        "best_step": 0,
        "bad_evals": 0,
        "history": [],
    }
    carry = None  # (h, c) where an interrupted epoch stopped, so its next chunk starts from the same state
    if resume and (out_dir / "last.pt").is_file():
        last = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(last["state_dict"])
        opt.load_state_dict(last["optimizer"])
        state = last["loop"]
        rng.bit_generator.state = last["rng"]
        if "torch_rng" in last:  # dropout masks continue as they would have (older last.pt files lack it)
            torch.set_rng_state(last["torch_rng"])
            carry = (last["h"], last["c"])
        log.info(
            "resumed from %s at step %d (%.1f min trained)", out_dir / "last.pt", state["step"], state["elapsed"] / 60
        )
    log.info(
        "model: %s, %.2fM parameters; %d steps per epoch of %d chars",
        model_cfg,
        num_params(model) / 1e6,
        steps_per_epoch,
        steps_per_epoch * cfg.batch_size * cfg.bptt,
    )

    def progress_now() -> float:
        p = state["step"] / max_steps
        return max(p, state["elapsed"] / budget_s) if budget_s else p

    def do_eval(train_bpc: float, h: torch.Tensor, c: torch.Tensor) -> bool:
        """Evaluate, checkpoint (with the carried state h, c), report; return True when training should stop."""
        torch_rng = torch.get_rng_state()  # as the training steps left it: sampling below must not shift it
        bpc = evaluate(model, val, bf16=cfg.bf16)
        rec = {
            "step": state["step"],
            "epoch": state["step"] / steps_per_epoch,
            "minutes": state["elapsed"] / 60,
            "train_bpc": train_bpc,
            "val_bpc": bpc,
            "lr": opt.param_groups[0]["lr"],
        }
        state["history"].append(rec)
        improved = bpc < state["best_bpc"]
        if improved:
            state.update(best_bpc=bpc, best_step=state["step"], bad_evals=0)
            save_atomic(_checkpoint(model, model_cfg, cfg, vocab, state["step"], bpc, extra), out_dir / "best.pt")
        else:
            state["bad_evals"] += 1
        tqdm.write(
            f"step {state['step']} epoch {rec['epoch']:.2f} {rec['minutes']:.1f} min: train {train_bpc:.3f} "
            f"val {bpc:.3f} bits/char{' *' if improved else ''}"
        )
        n_evals = len(state["history"])
        if cfg.sample_every and n_evals % cfg.sample_every == 0:
            tqdm.write("  | " + sample(model, vocab, "\n", 200, 0.8, seed=n_evals).replace("\n", "\n  | "))
        torch.set_rng_state(torch_rng)
        save_atomic(
            {
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "loop": state,
                "rng": rng.bit_generator.state,
                "torch_rng": torch_rng,
                "h": h,
                "c": c,
            },
            out_dir / "last.pt",
        )
        if on_eval is not None:
            on_eval(state["step"], rec)
        return state["bad_evals"] >= cfg.patience

    bar = tqdm(
        total=max_steps * cfg.batch_size * cfg.bptt,
        initial=state["step"] * cfg.batch_size * cfg.bptt,
        unit="char",
        unit_scale=True,
        mininterval=10,
        disable=not progress,
        smoothing=0.05,
    )
    losses: list[float] = []
    stop = False
    while not stop and state["step"] < max_steps:
        # a fresh random offset each epoch moves the chunk boundaries; the state restarts at zero
        if state["chunk"] == 0:
            state["offset"] = int(rng.integers(0, cfg.bptt)) if state["epoch"] else 0
        data = streams(train_ids, cfg.batch_size, state["offset"])
        h, c = carry if carry is not None and state["chunk"] else model.init_state(cfg.batch_size)
        carry = None
        for i, (x, y) in enumerate(chunks(data, cfg.bptt)):
            if i < state["chunk"]:  # resuming mid-epoch
                continue
            t0 = time.perf_counter()
            model.train()
            lr = lr_at(cfg, state["step"], progress_now())
            for g in opt.param_groups:
                g["lr"] = lr
            with _autocast(cfg.bf16):
                logits, h, c = model(torch.from_numpy(x), h.detach(), c.detach())  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            h, c = h.float(), c.float()
            losses.append(loss.item() / LN2)
            state["step"] += 1
            state["chunk"] = i + 1
            bar.update(y.size)
            bar.set_postfix(bpc=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.2e}", refresh=False)
            state["elapsed"] += time.perf_counter() - t0
            out_of_time = budget_s is not None and state["elapsed"] >= budget_s
            if state["step"] % cfg.eval_every == 0 or out_of_time or state["step"] >= max_steps:
                t1 = time.perf_counter()
                stop = do_eval(float(np.mean(losses)), h.detach(), c.detach())
                stop = stop or out_of_time or state["step"] >= max_steps
                state["elapsed"] += time.perf_counter() - t1
                losses = []
            if stop:
                break
        else:
            state["epoch"] += 1
            state["chunk"] = 0
    bar.close()
    if losses:  # leftover steps since the last evaluation
        do_eval(float(np.mean(losses)), h.detach(), c.detach())
    return {
        "best_val_bpc": state["best_bpc"],
        "best_step": state["best_step"],
        "steps": state["step"],
        "train_seconds": state["elapsed"],
        "history": state["history"],
        "params": num_params(model),
        "steps_per_epoch": steps_per_epoch,
    }
