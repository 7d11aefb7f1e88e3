"""The classifier training loop: ``train(model_config, train_config, data, on_epoch_end=...)``.

AdamW, cross-entropy with label smoothing, gradient clipping, ReduceLROnPlateau (factor 0.5) and early
stopping on validation loss with the best weights restored; optionally (``ema``) an exponential moving average of
the weights is what gets validated and returned. Batches hold articles of similar length.
The loop knows nothing of Optuna: a search hooks in through ``on_epoch_end(epoch, metrics)``, which may
raise to stop the run. With ``run_dir`` it saves ``last.pt`` after every epoch and resumes from it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from training.classifier.model import ClassifierConfig, TextClassifier
from training.common.devices import seed_everything
from training.common.files import save_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    clip: float = 1.0  # max gradient norm
    patience: int = 4  # early stopping: epochs without val-loss improvement
    lr_patience: int = 1  # ReduceLROnPlateau patience
    bf16: bool = False  # bfloat16 autocast for the training steps on CPU (evaluation stays float32)
    ema: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights (decay/step)
    crop: float = 0.0  # share of training articles replaced, each epoch, by a random window of them
    pretrain_epochs: int = 0  # > 0: first pretrain embedding + RNNs as language models on the non-test texts
    pretrain_lr: float = 3e-3  # peak learning rate of that pretraining (one-cycle schedule)
    embed_lr_scale: float = 1.0  # the embedding's learning rate is lr x this (pretrained vectors: move them less)
    freeze_embed_epochs: int = 0  # the embedding stays fixed for this many epochs first
    wide_lr_scale: float = 1.0  # a wide-and-deep model's linear n-gram layer learns at lr x this
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Encoded:
    """One split: token ids per article (already cut to max_len) and class ids."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


CROP_MIN = 30  # tokens: the shortest window crop draws (about a headline and its first sentence)


def crop_views(seqs: list[list[int]], share: float, rng: random.Random, min_len: int = CROP_MIN) -> list[list[int]]:
    """Each article longer than min_len is, with probability ``share``, replaced by one contiguous window of
    min_len..len tokens at a random place: more distinct inputs per article, and the model cannot rely on one
    part of it. share 0 draws nothing from rng (runs without crop stay bit-identical)."""
    if share <= 0:
        return seqs
    out = []
    for s in seqs:
        if len(s) > min_len and rng.random() < share:
            n = rng.randint(min_len, len(s))
            start = rng.randint(0, len(s) - n)
            s = s[start : start + n]
        out.append(s)
    return out


def collate(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, T) right-padded with 0, lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths


def length_batches(lengths: list[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Index batches of similar length. With rng: shuffled pools of 8 batches are sorted by length, cut
    into batches, and the batch order is shuffled; without: sorted by length (evaluation)."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    pool = batch_size * 8
    batches = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def predict(model: TextClassifier, data: Encoded, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """Logits (N, C) in data order."""
    model.eval()
    out = torch.empty(len(data), model.config.num_classes)
    for batch in length_batches([len(s) for s in data.ids], batch_size, None):
        ids, lengths = collate([data.ids[i] for i in batch])
        out[batch] = model(ids.to(device), lengths.to(device)).float().cpu()
    return out


def evaluate(model: TextClassifier, data: Encoded, device="cpu", smoothing: float = 0.0) -> dict[str, float]:
    """loss: with the training label smoothing (early stopping); nll: plain cross-entropy, comparable
    across runs with different smoothing (the search's objective)."""
    logits = predict(model, data, device=device)
    y = torch.tensor(data.labels)
    return {
        "loss": F.cross_entropy(logits, y, label_smoothing=smoothing).item(),
        "nll": F.cross_entropy(logits, y).item(),
        "acc": (logits.argmax(1) == y).float().mean().item(),
    }


def initial_model(model_config: ClassifierConfig, embeddings=None, wide_vocab=None) -> TextClassifier:
    """A fresh model (its weights are drawn here: seed before); ``embeddings`` (V, E) replaces the embedding table;
    ``wide_vocab`` = (keys, idf) of wide.feature_vocab sets a wide-and-deep model's n-gram features."""
    model = TextClassifier(model_config)
    if embeddings is not None:
        model.embedding.weight.data.copy_(torch.as_tensor(embeddings))
    if model_config.wide_features:
        if wide_vocab is None:
            raise ValueError("a wide-and-deep model needs wide_vocab (wide.feature_vocab of the training ids)")
        model.set_wide(*wide_vocab)
    return model


def train(
    model_config: ClassifierConfig,
    config: TrainConfig,
    data: dict[str, Encoded],
    on_epoch_end: Callable[[int, dict], None] | None = None,
    run_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    embeddings=None,
    init_state: dict | None = None,
    wide_vocab=None,
) -> tuple[TextClassifier, list[dict]]:
    """Train on data["train"], early-stop on data["val"]; returns (model with best weights, history).
    ``embeddings`` (V, E), when given, initialises the embedding table (e.g. LSA vectors); ``init_state``, a
    state_dict without the head (pretrain.pretrain_lm), then replaces the embedding and RNN weights."""
    seed_everything(config.seed)
    rng = random.Random(config.seed)
    device = torch.device(device)
    model = initial_model(model_config, embeddings, wide_vocab)
    if init_state is not None:
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(f"init_state does not fit the model: missing {missing}, unexpected {unexpected}")
    model.to(device)
    embed = list(model.embedding.parameters())
    wide_ = list(model.wide.parameters()) if model_config.wide_features else []
    rest = [p for p in model.parameters() if all(p is not e for e in embed + wide_)]
    groups = [{"params": rest}]  # own groups for the scaled rates, so the plateau schedule scales them all
    if wide_:
        groups.append({"params": wide_, "lr": config.lr * config.wide_lr_scale})
    if config.embed_lr_scale > 0:  # 0 = never trained
        groups.append({"params": embed, "lr": config.lr * config.embed_lr_scale})
    else:
        model.embedding.weight.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=config.lr_patience)
    # the averaged weights are what is validated, early-stopped on and returned; the raw ones keep training
    ema = (
        torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema))
        if config.ema > 0
        else None
    )
    scored = ema.module if ema is not None else model
    state = {"epoch": 0, "history": [], "best_loss": float("inf"), "best_state": None, "bad_epochs": 0}
    ckpt = Path(run_dir) / "last.pt" if run_dir else None
    if ckpt and ckpt.is_file():  # resume where the interrupted run stopped
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        state = saved["state"]
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("resumed %s at epoch %d", ckpt, state["epoch"])

    epochs = tqdm(
        range(state["epoch"], config.epochs),
        desc="epochs",
        initial=state["epoch"],
        total=config.epochs,
        disable=not progress,
    )
    for epoch in epochs:
        if state["bad_epochs"] >= config.patience:
            break
        model.train()
        if config.embed_lr_scale > 0:
            model.embedding.weight.requires_grad_(epoch >= config.freeze_embed_epochs)
        t0, total_loss, correct, seen = time.time(), 0.0, 0, 0
        views = crop_views(data["train"].ids, config.crop, rng)
        batches = length_batches([len(s) for s in views], config.batch_size, rng)
        for batch in tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
            ids, lengths = collate([views[i] for i in batch])
            y = torch.tensor([data["train"].labels[i] for i in batch], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(ids.to(device), lengths.to(device)).float()  # (B, C)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(batch)
        val = evaluate(scored, data["val"], device, config.label_smoothing)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "val_loss": val["loss"],
            "val_nll": val["nll"],
            "val_acc": val["acc"],
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
        }
        sched.step(val["loss"])
        state["history"].append(metrics)
        if val["loss"] < state["best_loss"]:
            state["best_loss"], state["bad_epochs"] = val["loss"], 0
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        epochs.set_postfix(
            loss=f"{metrics['train_loss']:.3f}", val_loss=f"{val['loss']:.3f}", val_acc=f"{val['acc']:.3f}"
        )
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items()})
        if ckpt:
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "state": state,
                    "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                },
                ckpt,
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)  # may raise (e.g. a pruned Optuna trial)
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return model.eval(), state["history"]
