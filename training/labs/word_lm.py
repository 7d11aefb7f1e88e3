"""A word-level LSTM language model whose log-loss converts exactly into bits per character.

Tokens rebuild the text exactly: ``"".join(tokenize(text)) == text``. A token is a word (letters with inner
apostrophes: ``Holmes's``, cased), a run of digits, a run of whitespace (``" "``, ``"\\n     "``, the
paragraph break ``"\\n\\n     "``: spaces, line breaks and indentation are predicted like words) or any other
single character (punctuation; ``to-day`` is ``to`` ``-`` ``day``). The vocabulary keeps the most frequent
``max_size - 1`` training tokens; id 0 is ``<unk>``.

The model is then a distribution over texts: pick a token; if it is ``<unk>``, spell it out with ``Speller``, a
character bigram model of the out-of-vocabulary tokens of the training text (add-one smoothed, with an
end-of-token symbol). So the cost of a text is

    bits = sum over its tokens of -log2 p(token | tokens before)  +  for each <unk>: -log2 p_speller(spelling)

and bits / characters is directly comparable with a character model's bits per character (an upper bound on
-log2 p(text): the model also gives some mass to other tokenisations of the same text, e.g. " " " " for "  ").

    ids (B, T) -> Embedding (B, T, E) -> LSTM (B, T, H) -> Linear (B, T, V), weights tied to the embedding

Only the char-vs-word lab imports this module, inside its run(); it imports torch at the top (lab modules do not).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.generator.train import TrainConfig, lr_at

PATTERN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+|\s+|.", re.DOTALL)
UNK, UNK_ID = "<unk>", 0
LN2 = math.log(2)


def tokenize(text: str) -> list[str]:
    return PATTERN.findall(text)


class WordVocab:
    def __init__(self, itos: list[str]):
        self.itos = itos
        self.stoi = {t: i for i, t in enumerate(itos)}

    @classmethod
    def build(cls, tokens: list[str], max_size: int = 10000) -> WordVocab:
        counts = Counter(tokens)
        kept = sorted(counts, key=lambda t: (-counts[t], t))[: max_size - 1]  # ties alphabetical: deterministic
        return cls([UNK, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> np.ndarray:
        return np.array([self.stoi.get(t, UNK_ID) for t in tokens], dtype=np.int64)


class Speller:
    """Character bigram model of out-of-vocabulary tokens: bits to spell one, and sampling one.

    The alphabet is the training text's characters, an end-of-token symbol and an escape (a character never
    seen in training costs the escape plus 16 bits for its code point)."""

    def __init__(self, oov_tokens: list[str], chars: set[str]):
        self.sym = ["\x02", "\x03", "\x1b", *sorted(chars - {"\x02", "\x03", "\x1b"})]  # start, end, escape
        self.index = {ch: i for i, ch in enumerate(self.sym)}
        counts = np.ones((len(self.sym), len(self.sym)))  # add-one: every transition possible
        for tok in oov_tokens:
            seq = self._ids(tok)
            np.add.at(counts, (seq[:-1], seq[1:]), 1)
        counts[:, 0] = 0  # nothing goes back to the start symbol
        with np.errstate(divide="ignore"):
            self.logp = np.log2(counts / counts.sum(1, keepdims=True))  # (S, S): row = previous symbol

    def _ids(self, tok: str) -> np.ndarray:
        return np.array([0, *(self.index.get(ch, 2) for ch in tok), 1])

    def bits(self, tok: str) -> float:
        seq = self._ids(tok)
        return float(-self.logp[seq[:-1], seq[1:]].sum() + 16 * (seq == 2).sum())

    def sample(self, rng: np.random.Generator, temperature: float = 1.0, max_len: int = 20) -> str:
        out, prev = [], 0
        for _ in range(max_len):
            p = np.exp2(self.logp[prev] / temperature)
            prev = int(rng.choice(len(p), p=p / p.sum()))
            if prev == 1:
                break
            out.append(self.sym[prev] if prev != 2 else "?")
        return "".join(out)


@dataclass(frozen=True)
class WordConfig:
    vocab_size: int
    embed_dim: int = 256  # = hidden_size when tied
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.2
    tied: bool = True


class WordLM(nn.Module):
    def __init__(self, cfg: WordConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.rnn = nn.LSTM(
            cfg.embed_dim,
            cfg.hidden_size,
            cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.proj = (
            nn.Linear(cfg.hidden_size, cfg.embed_dim)
            if cfg.tied and cfg.embed_dim != cfg.hidden_size
            else nn.Identity()
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = nn.Linear(cfg.embed_dim if cfg.tied else cfg.hidden_size, cfg.vocab_size)
        if cfg.tied:  # one matrix reads and writes words: fewer parameters, better with little data
            self.decoder.weight = self.embed.weight

    def forward(self, ids, state=None):
        """ids (B, T) -> logits (B, T, V), state (h, c) each (L, B, H)."""
        out, state = self.rnn(self.drop(self.embed(ids)), state)  # (B, T, H)
        return self.decoder(self.proj(self.drop(out))), state


def token_bits(model: WordLM, ids: np.ndarray, first: int, device="cpu", chunk: int = 1024) -> np.ndarray:
    """-log2 p of every token of ids (N,), read as one stream from the zero state; ``first`` is the input
    before ids[0] (a start token, as the char model reads "\\n")."""
    model.eval()
    x = torch.from_numpy(np.concatenate([[first], ids[:-1]])).to(device)
    y = torch.from_numpy(ids).to(device)
    out, state = [], None
    with torch.no_grad():
        for i in range(0, len(ids), chunk):  # state carried: the same numbers as one long pass
            logits, state = model(x[None, i : i + chunk], state)  # (1, chunk, V)
            out.append(F.cross_entropy(logits[0], y[i : i + chunk], reduction="none") / LN2)
    return torch.cat(out).cpu().numpy()


def train(
    model: WordLM,
    ids: np.ndarray,
    *,
    minutes: float,
    batch: int = 32,
    bptt: int = 64,
    lr: float = 3e-3,
    warmup: int = 50,
    on_eval=None,
    evals: int = 8,
    bar=None,
) -> dict:
    """Truncated BPTT over ``batch`` contiguous streams until the time budget ends; the learning rate warms
    up linearly, then follows a cosine on wall-clock progress (``training.generator.train.lr_at``). ``on_eval()``
    (outside the clock) ``evals`` times."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99)
    )
    dev = next(model.parameters()).device
    n = len(ids) // batch
    data = torch.from_numpy(ids[: n * batch].reshape(batch, n)).to(dev)  # (B, N): row b = b-th slice of the text
    schedule = TrainConfig(lr=lr, warmup_steps=warmup, min_lr_frac=0.05)  # the generator's warm-up + cosine
    budget, elapsed, step, epoch = minutes * 60, 0.0, 0, 0
    history, losses, next_eval = [], [], 1
    state = None
    while elapsed < budget:
        i = (step * bptt) % (n - 1 - bptt)
        if i < bptt and step:  # a new pass: the streams start over from zero
            state, epoch = None, epoch + 1
        t0 = time.perf_counter()
        model.train()
        progress = elapsed / budget
        for g in opt.param_groups:
            g["lr"] = lr_at(schedule, step, progress)
        x, y = data[:, i : i + bptt], data[:, i + 1 : i + 1 + bptt]
        state = None if state is None else tuple(s.detach() for s in state)  # gradients stop at the chunk edge
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item() / LN2)
        elapsed += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        if on_eval is not None and (elapsed >= budget * next_eval / evals):
            history.append(
                {"step": step, "minutes": elapsed / 60, "train_bits_per_token": float(np.mean(losses)), **on_eval()}
            )
            losses, next_eval = [], next_eval + 1
    return {
        "steps": step,
        "epochs": step * bptt / n,
        "train_seconds": elapsed,
        "history": history,
        "tokens_seen": step * bptt * batch,
    }


def sample(
    model: WordLM,
    vocab: WordVocab,
    speller: Speller,
    prompt: str,
    chars: int,
    temperature: float,
    seed: int = 0,
    device="cpu",
) -> str:
    """At least ``chars`` characters after ``prompt``; a sampled <unk> is spelled by the speller."""
    model.eval()
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(vocab.encode(tokenize(prompt))).to(device)
    out: list[str] = []
    with torch.no_grad():
        logits, state = model(ids[None])
        while sum(map(len, out)) < chars:
            p = torch.softmax(logits[0, -1].double() / temperature, 0).cpu().numpy()
            i = int(rng.choice(len(p), p=p / p.sum()))
            out.append(speller.sample(rng, temperature) if i == UNK_ID else vocab.itos[i])
            logits, state = model(torch.tensor([[i]], device=device), state)
    return "".join(out)
