"""The numpy-rnn lab's three gradient checks, and the NumPy model's PyTorch twin they compare against.

All in float64 with identical weights. Relative error of two entries a, b: |a - b| / max(|a| + |b|, 1e-12);
a check reports the largest over every entry it compares (the floor only guards 0 / 0: an entry that is
exactly zero both ways scores 0).

1. finite differences: every parameter and the incoming (h0, c0) of a tiny model, 5-point central
   differences with step 1e-3 (truncation O(step^4), rounding ~1e-16 / step: both near 1e-13 here);
2. autograd: ``nn.RNN`` / ``nn.LSTM`` + ``nn.Linear`` with the NumPy weights copied in, on real characters,
   from a random incoming state: the loss, the final state, every parameter gradient and d(h0, c0);
3. truncated BPTT: window 1 runs from zero and its final state is carried, detached, into window 2; the
   gradients of window 2's loss w.r.t. the weights and the carried state against autograd, and the state
   gradient also against finite differences.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.generator.data import chunks, streams
from training.labs import numpy_cells as nc

NAMES = {
    "w_ih": "rnn.weight_ih_l0",
    "w_hh": "rnn.weight_hh_l0",
    "b_ih": "rnn.bias_ih_l0",
    "b_hh": "rnn.bias_hh_l0",
    "w_y": "readout.weight",
    "b_y": "readout.bias",
}


class TorchCharModel(nn.Module):
    """one-hot -> nn.RNN (tanh) or nn.LSTM -> nn.Linear -> mean cross-entropy, float64: the NumPy model's twin."""

    def __init__(self, kind: str, vocab: int, hidden: int):
        super().__init__()
        self.kind, self.vocab = kind, vocab
        cell = nn.LSTM if kind == "lstm" else nn.RNN
        self.rnn = cell(vocab, hidden, batch_first=True, dtype=torch.float64)
        self.readout = nn.Linear(hidden, vocab, dtype=torch.float64)

    @classmethod
    def from_numpy(cls, params: nc.Params, kind: str, device) -> TorchCharModel:
        vocab, hidden = params["w_y"].shape
        model = cls(kind, vocab, hidden)
        with torch.no_grad():
            for key, name in NAMES.items():
                model.get_parameter(name).copy_(torch.from_numpy(params[key]))
        return model.to(device)

    def named_numpy(self) -> list[tuple[str, nn.Parameter]]:
        return [(key, self.get_parameter(name)) for key, name in NAMES.items()]

    def loss(self, x: torch.Tensor, y: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x, y (B, T) ids; state (h, c) each (1, B, H), the RNN passes c through -> (mean loss, new state)."""
        inp = F.one_hot(x, self.vocab).to(torch.float64)  # (B, T, V)
        if self.kind == "lstm":
            out, state = self.rnn(inp, state)  # out (B, T, H)
        else:
            out, h = self.rnn(inp, state[0])
            state = (h, state[1])
        logits = self.readout(out)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1)), state


def torch_state(model: TorchCharModel, state, device, requires_grad: bool = False):
    """NumPy (h, c) each (B, H) -> torch (1, B, H) each, the layout nn.RNN / nn.LSTM take."""
    return tuple(torch.tensor(s[None], dtype=torch.float64, device=device, requires_grad=requires_grad) for s in state)


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float((np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12)).max())


def numeric_grad(loss_fn, array: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """d loss / d array by 5-point central differences, perturbing ``array`` in place (restored after)."""
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        f = {}
        for k in (2, 1, -1, -2):
            array[idx] = old + k * step
            f[k] = loss_fn()
        array[idx] = old
        # differences first: when the loss does not move, the estimate is exactly 0
        grad[idx] = (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * step)
    return grad


def _state_names(kind: str) -> tuple[str, ...]:
    return ("h", "c") if kind == "lstm" else ("h",)  # the vanilla RNN has no memory cell


def _report(errors: dict[str, float], **extra) -> dict:
    return {"max_rel_error": max(errors.values()), "rel_errors": errors, **extra}


def check_finite_differences(kind: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    V, H, B, T = 7, 5, 3, 6  # tiny: 4 losses per entry
    params = nc.init_params(kind, V, H, rng)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = (rng.normal(0, 0.5, (B, H)), rng.normal(0, 0.5, (B, H)))  # nonzero, so d(state) is exercised
    _, grads, dstate, _ = nc.loss_and_grads(params, kind, x, y, state)

    def loss_fn() -> float:
        return nc.forward(params, kind, x, y, state)[0]

    errors = {k: rel_error(grads[k], numeric_grad(loss_fn, params[k])) for k in params}
    for i, name in enumerate(_state_names(kind)):
        errors[f"{name}0"] = rel_error(dstate[i], numeric_grad(loss_fn, state[i]))
    return _report(errors, entries=sum(p.size for p in params.values()) + len(_state_names(kind)) * B * H)


def check_autograd(kind: str, ids: np.ndarray, vocab: int, seed: int, device) -> dict:
    rng = np.random.default_rng(seed + 1)
    H, B, T = 24, 4, 32
    params = nc.init_params(kind, vocab, H, rng)
    rows = ids[: B * (T + 1)].reshape(B, T + 1)  # real characters, y is x shifted by one
    x, y = rows[:, :-1], rows[:, 1:]
    state = (rng.normal(0, 0.5, (B, H)), rng.normal(0, 0.5, (B, H)))
    loss, grads, dstate, new_state = nc.loss_and_grads(params, kind, x, y, state)

    model = TorchCharModel.from_numpy(params, kind, device)
    tstate = torch_state(model, state, device, requires_grad=True)
    tloss, tnew = model.loss(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), tstate)
    tloss.backward()
    errors = {"loss": rel_error(loss, tloss.item())}
    errors.update({k: rel_error(grads[k], p.grad.cpu().numpy()) for k, p in model.named_numpy()})
    for i, name in enumerate(_state_names(kind)):
        errors[f"{name}_T"] = rel_error(new_state[i], tnew[i].detach().cpu().numpy()[0])
        errors[f"d{name}0"] = rel_error(dstate[i], tstate[i].grad.cpu().numpy()[0])
    return _report(errors)


def check_tbptt(kind: str, ids: np.ndarray, vocab: int, seed: int, device) -> dict:
    rng = np.random.default_rng(seed + 2)
    H, B, T = 16, 4, 16
    params = nc.init_params(kind, vocab, H, rng)
    (x1, y1), (x2, y2) = list(chunks(streams(ids[: B * (2 * T + 1)], B), T))[:2]  # two consecutive windows
    _, carried, _ = nc.forward(params, kind, x1, y1, nc.zero_state(params, B))
    _, grads, dstate, _ = nc.loss_and_grads(params, kind, x2, y2, carried)

    model = TorchCharModel.from_numpy(params, kind, device)
    t = {k: torch.from_numpy(v).to(device) for k, v in dict(x1=x1, y1=y1, x2=x2, y2=y2).items()}
    zero = torch_state(model, nc.zero_state(params, B), device)
    _, s1 = model.loss(t["x1"], t["y1"], zero)
    s1_leaf = tuple(s.detach().requires_grad_() for s in s1)  # the carried, detached state
    loss2, _ = model.loss(t["x2"], t["y2"], s1_leaf)
    loss2.backward()
    errors = {k: rel_error(grads[k], p.grad.cpu().numpy()) for k, p in model.named_numpy()}

    def loss_fn() -> float:
        return nc.forward(params, kind, x2, y2, carried)[0]

    for i, name in enumerate(_state_names(kind)):
        errors[f"{name}_carried"] = rel_error(carried[i], s1[i].detach().cpu().numpy()[0])
        errors[f"d{name}_carried_autograd"] = rel_error(dstate[i], s1_leaf[i].grad.cpu().numpy()[0])
        errors[f"d{name}_carried_fd"] = rel_error(dstate[i], numeric_grad(loss_fn, carried[i]))

    # what the truncation drops: the same loss with the state not detached, gradient flowing into window 1
    model.zero_grad()
    _, s1 = model.loss(t["x1"], t["y1"], zero)
    model.loss(t["x2"], t["y2"], s1)[0].backward()
    full = model.rnn.weight_hh_l0.grad.cpu().numpy()
    dropped = float(np.linalg.norm(grads["w_hh"] - full) / np.linalg.norm(full))
    return _report(errors, w_hh_grad_dropped_by_truncation=dropped)


def run_checks(ids: np.ndarray, vocab: int, seed: int, device) -> dict[str, dict[str, dict]]:
    """{kind: {"finite_differences": .., "autograd": .., "tbptt": ..}} for the RNN and the LSTM."""
    return {
        kind: {
            "finite_differences": check_finite_differences(kind, seed),
            "autograd": check_autograd(kind, ids, vocab, seed, device),
            "tbptt": check_tbptt(kind, ids, vocab, seed, device),
        }
        for kind in nc.KINDS
    }
