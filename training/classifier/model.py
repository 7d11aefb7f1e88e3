"""Recurrent text classifier: the BiLSTM and the course's vanilla baseline are one module.

    ids (B, T) -> embedding (B, T, E) -> embedding dropout -> stacked RNN/GRU/LSTM, uni- or bidirectional
    -> pooling over the true length (any of last / mean / max, concatenated) -> dropout -> linear (B, C)

Padding never leaks in: the backward direction must start at each article's true end, which is what
packed sequences give. The model computes exactly that function without packing: per layer, one
unidirectional RNN reads the sequence, another reads it reversed *within its own length*, and outputs
beyond the length are masked. Two reasons: in torch 2.13 on CPU the backward pass through packed
sequences of unequal lengths is 10-20x slower (measured 6.3 s vs 0.35 s for a 32 x 420 batch), and packed
sequences do not export to ONNX. ``packed_forward`` runs the same weights through a stacked
``nn.LSTM``/``GRU``/``RNN`` on packed sequences; tests and the export check both agree to 1e-5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.classifier import wide
from training.classifier.tokenizer import PAD_ID, UNK_ID

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
POOLINGS = ("last", "mean", "max")


@dataclass(frozen=True)
class ClassifierConfig:
    vocab_size: int
    num_classes: int
    embed_dim: int = 128
    hidden_size: int = 96
    num_layers: int = 1
    bidirectional: bool = True
    cell: str = "lstm"  # rnn | gru | lstm
    pooling: str = "max+mean"  # any '+'-joined subset of last, mean, max
    word_dropout: float = 0.15  # training only: replace this share of tokens by <unk>
    embed_dropout: float = 0.4  # drops whole embedding channels (Dropout1d over E)
    dropout: float = 0.4  # between stacked layers and before the output layer
    wide_features: int = 0  # > 0: wide-and-deep, a linear layer over TF-IDF of this many n-grams (wide.py)
    wide_ngrams: int = 2  # the wide branch's n-grams: 1 (words) or 2 (words and word pairs)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {self.cell!r}")
        if not self.poolings or any(p not in POOLINGS for p in self.poolings):
            raise ValueError(f"pooling must join some of {POOLINGS} with '+', got {self.pooling!r}")
        if self.wide_features < 0 or self.wide_ngrams not in (1, 2):
            raise ValueError(
                f"wide_features must be >= 0 and wide_ngrams 1 or 2, got {self.wide_features}, {self.wide_ngrams}"
            )

    @property
    def poolings(self) -> tuple[str, ...]:
        return tuple(p for p in self.pooling.split("+") if p)

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def pool(
    out: torch.Tensor, lengths: torch.Tensor, poolings: tuple[str, ...], hidden: int, bidirectional: bool
) -> torch.Tensor:
    """out (B, T, D) zero beyond each length, lengths (B,) -> (B, D * len(poolings)); padding is masked."""
    T = out.size(1)
    mask = torch.arange(T, device=out.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    feats = []
    for p in poolings:
        if p == "mean":
            feats.append(out.sum(1) / lengths.unsqueeze(1).to(out.dtype))
        elif p == "max":
            feats.append(out.masked_fill(~mask.unsqueeze(2), float("-inf")).amax(1))
        else:  # last: forward direction at t = length-1, backward direction at t = 0 (its final step)
            idx = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.size(2))
            last = out.gather(1, idx).squeeze(1)  # (B, D)
            if bidirectional:
                last = torch.cat([last[:, :hidden], out[:, 0, hidden:]], dim=1)
            feats.append(last)
    return torch.cat(feats, dim=1)


class TextClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=PAD_ID)
        self.embed_dropout = nn.Dropout1d(c.embed_dropout)
        dirs = 2 if c.bidirectional else 1
        cls = CELLS[c.cell]
        sizes = [c.embed_dim] + [c.hidden_size * dirs] * (c.num_layers - 1)  # input size per layer
        # one single-layer unidirectional RNN per layer and direction
        self.fwd = nn.ModuleList(cls(n, c.hidden_size, batch_first=True) for n in sizes)
        self.bwd = (
            nn.ModuleList(cls(n, c.hidden_size, batch_first=True) for n in sizes)
            if c.bidirectional
            else nn.ModuleList()
        )
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size * dirs * len(c.poolings), c.num_classes)
        if c.wide_features:  # the n-gram keys and idf come from the training data: set_wide before training
            self.register_buffer("wide_keys", torch.zeros(c.wide_features, dtype=torch.long))
            self.register_buffer("wide_idf", torch.zeros(c.wide_features))
            self.wide = nn.Linear(c.wide_features, c.num_classes, bias=False)
            nn.init.zeros_(self.wide.weight)  # starts as the plain BiLSTM

    def set_wide(self, keys, idf) -> None:
        """The wide branch's feature keys (sorted, wide.feature_vocab) and idf; fewer than wide_features pad."""
        n = len(keys)
        if n > self.config.wide_features or list(keys) != sorted(keys):
            raise ValueError(f"need <= {self.config.wide_features} sorted keys, got {n}")
        # a spare slot holds wide.UNUSED_KEY, above every real key and never matched, and idf 0
        self.wide_keys.fill_(wide.UNUSED_KEY).narrow(0, 0, n).copy_(torch.as_tensor(keys, dtype=torch.long))
        self.wide_idf.zero_().narrow(0, 0, n).copy_(torch.as_tensor(idf, dtype=torch.float32))

    def wide_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> (B, C): the linear layer over the rows' TF-IDF features."""
        c = self.config
        if torch.onnx.is_in_onnx_export():  # one TfIdfVectorizer node (a traced Function would not serialise)
            keys = self.wide_keys.cpu().numpy()
            pool_ = wide.pool_of(keys[keys < wide.UNUSED_KEY], c.vocab_size)
            counts = wide.NgramCounts.apply(ids, self.wide_keys, c.vocab_size, c.wide_ngrams, pool_)
            counts = torch.nn.functional.pad(counts, (0, c.wide_features - len(pool_[0]) - len(pool_[1]) // 2))
        else:
            counts = wide.count_features(ids, self.wide_keys, c.vocab_size, c.wide_ngrams)  # (B, F)
        return self.wide(wide.tfidf(counts, self.wide_idf))

    def drop_words(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training and self.config.word_dropout > 0:  # the model must not lean on a few rare words
            drop = (torch.rand(ids.shape, device=ids.device) < self.config.word_dropout) & (ids != PAD_ID)
            ids = ids.masked_fill(drop, UNK_ID)
        return ids

    def embed(self, ids: torch.Tensor, drop_words: bool = True) -> torch.Tensor:
        x = self.embedding(self.drop_words(ids) if drop_words else ids)  # (B, T, E)
        # Dropout1d zeroes whole channels: (B, E, T) view so a channel is one embedding dimension
        return self.embed_dropout(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 right-padded with 0, lengths (B,) int64 >= 1 -> logits (B, C)."""
        c = self.config
        ids = self.drop_words(ids)  # both branches see the same dropped words
        x = self.token_states(ids, lengths, drop_words=False)  # (B, T, H * dirs)
        logits = self.head(self.dropout(pool(x, lengths, c.poolings, c.hidden_size, c.bidirectional)))
        return logits + self.wide_logits(ids) if c.wide_features else logits

    def token_states(self, ids: torch.Tensor, lengths: torch.Tensor, drop_words: bool = True) -> torch.Tensor:
        """The top layer's output at every token, (B, T, H * dirs), zero beyond each length (what is pooled)."""
        mask = torch.arange(ids.size(1), device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)
        mask = mask.unsqueeze(2).to(torch.float32)  # (B, T, 1)
        x = self.embed(ids, drop_words)  # (B, T, E)
        for i, fwd in enumerate(self.fwd):
            if i > 0:
                x = self.dropout(x)  # between stacked layers
            # forward direction: padding comes after the true end, so it never reaches earlier outputs
            out = fwd(x)[0] * mask  # (B, T, H)
            if self.config.bidirectional:
                back = self.bwd[i](reverse_within(x, lengths))[0]  # starts at each true end
                out = torch.cat([out, reverse_within(back, lengths) * mask], dim=2)  # (B, T, 2H)
            x = out
        return x


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row of x (B, T, D) over its first lengths[b] steps; padding stays where it is."""
    T = x.size(1)
    t = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
    n = lengths.unsqueeze(1)
    idx = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, idx.unsqueeze(2).expand(-1, -1, x.size(2)))


def stacked_rnn(model: TextClassifier) -> nn.RNNBase:
    """A standard stacked (bi)directional nn.LSTM/GRU/RNN holding the model's weights."""
    c = model.config
    rnn = CELLS[c.cell](
        c.embed_dim, c.hidden_size, num_layers=c.num_layers, batch_first=True, bidirectional=c.bidirectional
    )
    for layer in range(c.num_layers):
        for suffix, mods in (("", model.fwd), ("_reverse", model.bwd))[: 2 if c.bidirectional else 1]:
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, f"{name}_l{layer}{suffix}").data.copy_(getattr(mods[layer], f"{name}_l0").data)
    return rnn.to(model.head.weight.device)


@torch.no_grad()
def packed_forward(model: TextClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reference: the eval-mode model run on packed sequences (logits (B, C))."""
    c = model.config
    packed = pack_padded_sequence(model.embedding(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = stacked_rnn(model)(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.size(1))  # (B, T, H*dirs)
    logits = model.head(pool(out, lengths, c.poolings, c.hidden_size, c.bidirectional))
    return logits + model.wide_logits(ids) if c.wide_features else logits


class Ensemble(nn.Module):
    """K classifiers over one vocabulary, as one graph: logits (B, C) = log(mean_k softmax(z_k)) / T.

    softmax of the output is the members' averaged probability (temperature-scaled when T != 1), so serving
    and the runtime, which apply softmax to ``logits``, need no change.
    """

    def __init__(self, configs: list[ClassifierConfig], temperature: float = 1.0):
        super().__init__()
        if not configs or len({(c.vocab_size, c.num_classes) for c in configs}) != 1:
            raise ValueError("an ensemble needs >= 1 members sharing vocab_size and num_classes")
        self.members = nn.ModuleList(TextClassifier(c) for c in configs)
        self.config = configs[0]
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m(ids, lengths), dim=-1) for m in self.members])  # (K, B, C)
        return (torch.logsumexp(logp, dim=0) - math.log(len(self.members))) / self.temperature


def from_manifest(manifest: dict) -> TextClassifier | Ensemble:
    """An untrained module of the exported classifier's shape (load the TorchScript state_dict into it)."""
    cfg = ClassifierConfig.from_dict(manifest["config"])
    ens = manifest.get("ensemble")
    if not ens:
        return TextClassifier(cfg)
    return Ensemble([cfg] * ens["members"], ens.get("temperature", 1.0))


@torch.no_grad()
def reference_forward(model: TextClassifier | Ensemble, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``packed_forward`` for a single model or every member of an ensemble, combined as Ensemble.forward."""
    if isinstance(model, TextClassifier):
        return packed_forward(model, ids, lengths)
    logp = torch.stack([torch.log_softmax(packed_forward(m, ids, lengths), dim=-1) for m in model.members])
    return (torch.logsumexp(logp, dim=0) - math.log(len(model.members))) / model.temperature
