"""What the sequence-task labs (echo, palindrome, sine) share: a small recurrent model with a selectable cell,
a train loop that records the gradient norm of every step, per-step hidden-state gradients, sweep helpers.

    x (B, T, I) -> nn.RNN / nn.GRU / nn.LSTM, uni- or bidirectional -> outputs (B, T, dirs*H)
      readout="all":   linear on every step        -> (B, T, O)   (forecasting)
      readout="final": linear on the final states  -> (B, O)      (one label per sequence)

Only the labs import this module, inside their run(); it imports torch at the top (lab modules do not).
PyTorch's default initialisation unless ``gate_bias`` is given: then the LSTM's forget gate and the GRU's update
gate start that far open (bias +b, split over b_ih and b_hh), i.e. the cell starts out keeping its state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class SeqModel(nn.Module):
    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden: int,
        out_size: int,
        *,
        bidirectional: bool = False,
        readout: str = "final",
        gate_bias: float = 0.0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")
        if gate_bias and cell == "rnn":
            raise ValueError("gate_bias is for the gated cells (gru, lstm)")
        self.cell, self.hidden, self.readout, self.bidirectional = cell, hidden, readout, bidirectional
        self.rnn = CELLS[cell](input_size, hidden, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), out_size)
        if gate_bias:
            # gate chunk 1 of 4 (LSTM: i, f, g, o) or of 3 (GRU: r, z, n; h' = (1 - z) n + z h): forget / update
            with torch.no_grad():
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias"):
                        p[hidden : 2 * hidden] += gate_bias / 2  # b_ih + b_hh = +gate_bias

    def forward(self, x: torch.Tensor, state=None):
        """x (B, T, I) -> (y, outputs (B, T, dirs*H), state); state is h_n (dirs, B, H), or (h_n, c_n) for LSTM."""
        outputs, state = self.rnn(x, state)
        if self.readout == "all":
            return self.head(outputs), outputs, state  # y (B, T, O)
        h_n = state[0] if isinstance(state, tuple) else state  # (dirs, B, H)
        # forward direction after its last step, backward direction after its last step (= position 0)
        final = h_n.transpose(0, 1).reshape(x.shape[0], -1)  # (B, dirs*H)
        return self.head(final), outputs, state  # y (B, O)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_hidden(cell: str, input_size: int, out_size: int, target: int, *, bidirectional: bool = False) -> int:
    """The hidden size whose model has the parameter count nearest ``target`` (to compare equal budgets)."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    dirs = 2 if bidirectional else 1

    def params(h: int) -> int:  # per direction W_ih (G*H, I), W_hh (G*H, H), b_ih and b_hh (G*H,); then the head
        return dirs * gates * h * (input_size + h + 2) + (dirs * h + 1) * out_size

    return min(range(1, 4097), key=lambda h: abs(params(h) - target))


def train(
    model: nn.Module,
    batch: Callable[[int], tuple],
    loss_fn: Callable,
    *,
    steps: int,
    ctx,
    lr: float = 3e-3,
    clip: float = 1.0,
    desc: str = "",
    check: Callable[[nn.Module], bool] | None = None,
    check_every: int = 100,
) -> dict:
    """Adam on ``batch(step) -> (x, y)`` with ``loss_fn(model, x, y) -> loss``. Records the loss and the global
    gradient norm before clipping at every step; ``check(model) -> True`` stops early (the task is solved)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, norms, t0, done = [], [], time.perf_counter(), steps
    model.train()
    for step in ctx.bar(range(steps), total=steps, desc=desc):
        x, y = batch(step)
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
        if check is not None and (step + 1) % check_every == 0 and check(model):
            done = step + 1
            break
    return {"steps": done, "seconds": round(time.perf_counter() - t0, 2), "loss": losses, "grad_norm": norms}


def bce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One logit per sequence (readout="final", out_size=1) against 0/1 float labels y (B,)."""
    return F.binary_cross_entropy_with_logits(model(x)[0].squeeze(-1), y)


@torch.no_grad()
def binary_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> float:
    was = model.training
    model.eval()
    hits = sum(
        ((model(x[i : i + chunk])[0].squeeze(-1) > 0).float() == y[i : i + chunk]).sum().item()
        for i in range(0, len(x), chunk)
    )
    model.train(was)
    return hits / len(x)


def hidden_grad_norms(model: SeqModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    """How far back the loss reaches: ||dL/dh_t|| and ||dL/dx_t|| (mean over the batch) for t = 1..T.

    The fused cell is stepped one time step at a time (same weights), so each h_t is a node of the graph and its
    .grad is the total derivative through every later step. Unidirectional models with readout="final" only.
    """
    x = x.detach().clone().requires_grad_(True)  # (B, T, I)
    state, hs = None, []
    for t in range(x.shape[1]):
        _, state = model.rnn(x[:, t : t + 1], state)  # h_t (1, B, H) [, c_t]
        h = state[0] if isinstance(state, tuple) else state
        h.retain_grad()
        hs.append(h)
    logit = model.head(hs[-1][0]).squeeze(-1)  # (B,)
    F.binary_cross_entropy_with_logits(logit, y).backward()
    model.zero_grad(set_to_none=True)
    return {"dL_dh": [h.grad[0].norm(dim=-1).mean().item() for h in hs], "dL_dx": x.grad.norm(dim=-1).mean(0).tolist()}


def solved_up_to(lengths: Sequence[int], accs: Sequence[float], threshold: float = 0.95) -> int:
    """The longest length solved (accuracy >= threshold) with every shorter one solved too; 0 if none."""
    best = 0
    for n, a in sorted(zip(lengths, accs)):
        if a < threshold:
            break
        best = n
    return best


def sweep_plot(
    ax,
    lengths: Sequence[int],
    curves: dict[str, Sequence[float]],
    ylabel: str,
    chance: float | None = None,
    threshold: float | None = None,
) -> None:
    """One line per model on a log length axis, with the chance level and the 'solved' threshold dashed."""
    for name, ys in curves.items():
        ax.plot(lengths, ys, marker="o", markersize=4, label=name)
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"solved ({threshold})")
    ax.set_xscale("log")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set(xlabel="sequence length T", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def downsample(values: Sequence[float], n: int = 100) -> list[float]:
    """Every k-th value so metrics.json keeps a curve's shape, not every step."""
    k = max(1, len(values) // n)
    return [round(float(v), 5) for v in values[::k]]
