"""Character-level recurrent language model: Embedding -> stacked LSTM (or GRU / vanilla RNN) -> Linear.

One module holds both the LSTM generator and the lab's vanilla char-RNN (``cell="rnn_tanh"`` or
``"rnn_relu"``) and the GRU. The state is always an explicit pair ``(h, c)`` of shape (L, B, H) so every cell
exports to the same step/prefill contract; cells without a memory cell pass ``c`` through unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


@dataclass(frozen=True)
class CharConfig:
    vocab_size: int
    cell: str = "lstm"
    embed_dim: int = 64
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.2  # on the embeddings, between layers and before the decoder

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class CharRNN(nn.Module):
    def __init__(self, cfg: CharConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        drop_between = cfg.dropout if cfg.num_layers > 1 else 0.0
        common = dict(
            input_size=cfg.embed_dim,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=drop_between,
            batch_first=True,
        )
        if cfg.cell == "lstm":
            self.rnn = nn.LSTM(**common)
        elif cfg.cell == "gru":
            self.rnn = nn.GRU(**common)
        else:
            self.rnn = nn.RNN(nonlinearity=cfg.cell.split("_")[1], **common)
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.is_lstm = cfg.cell == "lstm"

    def init_state(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.cfg.num_layers, batch, self.cfg.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def _features(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = self.drop(self.embed(ids))  # (B, T, E)
        if self.is_lstm:
            out, (h, c) = self.rnn(x, (h, c))  # out (B, T, H)
        else:
            out, h = self.rnn(x, h)
        return self.drop(out), h, c

    def forward(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """ids (B, T) int64, h and c (L, B, H) -> logits (B, T, V), h (L, B, H), c (L, B, H)."""
        out, h, c = self._features(ids, h, c)
        return self.decoder(out), h, c  # (B, T, V)

    def forward_last(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """Like forward, but only the last position's logits (B, V): decoding a prompt needs no more."""
        out, h, c = self._features(ids, h, c)
        return self.decoder(out[:, -1]), h, c


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_checkpoint(path, map_location="cpu") -> tuple[CharRNN, dict]:
    """Rebuild the model from a checkpoint (config + state_dict + vocab; never a pickled module)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = CharRNN(CharConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
