"""Language-model pretraining of the classifier's embedding and recurrent layers, on unlabeled article text.

The first two stages of ULMFiT (Howard & Ruder, 2018), on this corpus only: before the classifier sees a label,
its forward LSTM learns to predict each next token and its backward LSTM each previous one, from the texts the
classifier trains on (never the test split's). Then ``train()`` starts from these weights; its head is new.

    ids (B, T) -> TextClassifier.token_states (B, T, H * dirs), training mode (word and embedding dropout on)
    forward half at t  -> token t+1      backward half at t -> token t-1     (t+1 < length for both)
    -> dropout -> adaptive softmax per direction (the vocabulary is sorted by frequency, as it needs)

The adaptive softmax (frequent words in a full head, rare ones in smaller clusters) makes an epoch about 4x
cheaper than a full softmax over a ~16k vocabulary. The heads are thrown away after pretraining.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from training.classifier.model import ClassifierConfig, TextClassifier
from training.classifier.train import collate, initial_model, length_batches
from training.common.devices import seed_everything

log = logging.getLogger(__name__)

CUTOFFS = (2000, 8000)  # vocabulary ids: head, then two tail clusters (fewer where the vocab is smaller)
BATCH_SIZE = 16
CLIP = 1.0


def lm_heads(config: ClassifierConfig) -> nn.ModuleList:
    """One adaptive softmax per direction over the vocabulary, from that direction's hidden state (H)."""
    cutoffs = [c for c in CUTOFFS if c < config.vocab_size - 1] or [max(1, config.vocab_size // 4)]  # >= 1 needed
    dirs = 2 if config.bidirectional else 1
    return nn.ModuleList(
        nn.AdaptiveLogSoftmaxWithLoss(config.hidden_size, config.vocab_size, cutoffs, div_value=4.0)
        for _ in range(dirs)
    )


def lm_loss(model: TextClassifier, heads: nn.ModuleList, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean NLL per predicted token (nats) of next-token (forward) and previous-token (backward) prediction."""
    H = model.config.hidden_size
    states = model.dropout(model.token_states(ids, lengths))  # (B, T, H * dirs)
    T = ids.size(1)
    valid = torch.arange(T - 1, device=ids.device).unsqueeze(0) + 1 < lengths.unsqueeze(1)  # (B, T-1)
    # forward state at t predicts t+1; backward state at t+1 (it has read t+1..end) predicts t
    pairs = [(states[:, :-1, :H], ids[:, 1:])]
    if model.config.bidirectional:
        pairs.append((states[:, 1:, H:], ids[:, :-1]))
    losses = [head(h[valid], y[valid]).loss for head, (h, y) in zip(heads, pairs)]
    return torch.stack(losses).mean()


def pretrain_lm(
    config: ClassifierConfig,
    seqs: list[list[int]],
    epochs: int,
    lr: float,
    seed: int = 0,
    embeddings=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache: str | Path | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Pretrain a fresh TextClassifier's embedding and RNNs as language models on ``seqs`` (token ids).

    -> (state_dict without the head, for ``train(init_state=...)``; per-epoch history). ``cache`` (a .pt path)
    keeps the result, so a resumed run does not pretrain again."""
    if cache is not None and Path(cache).is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        return saved["state"], saved["history"]
    seed_everything(seed)
    rng = random.Random(seed)
    device = torch.device(device)
    model = initial_model(config, embeddings)
    heads = lm_heads(config)
    model.to(device).train()
    heads.to(device).train()
    params = [*model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    seq_lengths = [len(s) for s in seqs]
    batches_per_epoch = len(length_batches(seq_lengths, BATCH_SIZE, None))
    # one-cycle: warm up over the first 10% of steps, then anneal (ULMFiT's slanted triangular schedule)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * batches_per_epoch), pct_start=0.1
    )
    history = []
    for epoch in range(1, epochs + 1):
        total, n = 0.0, 0
        batches = length_batches(seq_lengths, BATCH_SIZE, rng)
        for batch in tqdm(batches, desc=f"LM pretraining {epoch}/{epochs}", disable=not progress, leave=False):
            ids, lengths = collate([seqs[i] for i in batch])
            loss = lm_loss(model, heads, ids.to(device), lengths.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        history.append({"epoch": epoch, "lm_loss": total / max(1, n)})
        log.info("LM pretraining epoch %d: %s", epoch, history[-1])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("head.")}
    if cache is not None:
        torch.save({"state": state, "history": history}, cache)
    return state, history
