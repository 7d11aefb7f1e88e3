"""A character model in NumPy with hand-written backpropagation through time: no autograd anywhere.

one-hot characters -> vanilla RNN or LSTM cell -> linear readout -> softmax cross-entropy (mean over B*T).

The weights use PyTorch's layout so they copy straight into ``nn.RNN`` / ``nn.LSTM`` + ``nn.Linear``:
``w_ih`` (G*H, V), ``w_hh`` (G*H, H), two biases ``b_ih`` and ``b_hh`` (G*H,) whose sum is the cell's bias,
with G = 1 (RNN) or 4 (LSTM, gate rows in PyTorch's order i, f, g, o), and ``w_y`` (V, H), ``b_y`` (V,).
Both biases are kept (each gets the same gradient) so that an optimiser updates them exactly as PyTorch does.
A one-hot input times ``w_ih`` is a column lookup, so the input projection is ``w_ih.T[ids]``.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("rnn", "lstm")
Params = dict[str, np.ndarray]


def init_params(kind: str, vocab: int, hidden: int, rng: np.random.Generator, dtype=np.float64) -> Params:
    """PyTorch's default init: every tensor uniform in (-1/sqrt(H), 1/sqrt(H)) (the readout uses the same)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    g = 4 if kind == "lstm" else 1
    k = 1 / math.sqrt(hidden)
    shapes = {
        "w_ih": (g * hidden, vocab),
        "w_hh": (g * hidden, hidden),
        "b_ih": (g * hidden,),
        "b_hh": (g * hidden,),
        "w_y": (vocab, hidden),
        "b_y": (vocab,),
    }
    return {name: rng.uniform(-k, k, size=shape).astype(dtype) for name, shape in shapes.items()}


def zero_state(params: Params, batch: int) -> tuple[np.ndarray, np.ndarray]:
    hidden = params["w_hh"].shape[1]
    z = np.zeros((batch, hidden), dtype=params["w_hh"].dtype)
    return z, z.copy()  # (h, c), each (B, H); the RNN carries c unchanged


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # no overflow for large |z|


def forward(params: Params, kind: str, x: np.ndarray, y: np.ndarray, state: tuple[np.ndarray, np.ndarray]):
    """x, y (B, T) int ids; state (h0, c0) each (B, H) -> (loss, new state, cache for ``backward``)."""
    h, c = state
    B, T = x.shape
    H = params["w_hh"].shape[1]
    xp = params["w_ih"].T[x] + params["b_ih"] + params["b_hh"]  # (B, T, G*H): one-hot @ w_ih.T, plus biases
    hs = np.empty((B, T, H), dtype=h.dtype)
    steps = []  # per step what backward needs: (h_prev, c_prev, activations)
    for t in range(T):
        z = xp[:, t] + h @ params["w_hh"].T  # (B, G*H)
        if kind == "rnn":
            steps.append((h, c, None))
            h = np.tanh(z)
        else:
            i, f, o = _sigmoid(z[:, :H]), _sigmoid(z[:, H : 2 * H]), _sigmoid(z[:, 3 * H :])
            g = np.tanh(z[:, 2 * H : 3 * H])
            c_prev = c
            c = f * c_prev + i * g
            tc = np.tanh(c)
            steps.append((h, c_prev, (i, f, g, o, tc)))
            h = o * tc
        hs[:, t] = h
    logits = hs @ params["w_y"].T + params["b_y"]  # (B, T, V)
    logits = logits - logits.max(-1, keepdims=True)  # stable log-softmax
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -np.take_along_axis(logp, y[..., None], -1).mean()
    return float(loss), (h, c), (kind, x, y, hs, logp, steps)


def backward(params: Params, cache) -> tuple[Params, tuple[np.ndarray, np.ndarray]]:
    """Gradients of the mean loss w.r.t. every parameter and w.r.t. the incoming state (dh0, dc0)."""
    kind, x, y, hs, logp, steps = cache
    B, T, V = logp.shape
    H = hs.shape[-1]
    dlogits = np.exp(logp)  # softmax - one_hot(y), over the B*T positions of the mean
    np.put_along_axis(dlogits, y[..., None], np.take_along_axis(dlogits, y[..., None], -1) - 1, -1)
    dlogits /= B * T
    grads = {"w_y": dlogits.reshape(-1, V).T @ hs.reshape(-1, H), "b_y": dlogits.sum((0, 1))}
    dhs = dlogits @ params["w_y"]  # (B, T, H)
    dz_all = np.empty((B, T, params["w_hh"].shape[0]), dtype=hs.dtype)  # (B, T, G*H)
    dw_hh = np.zeros_like(params["w_hh"])
    dh_next = np.zeros((B, H), dtype=hs.dtype)  # gradient flowing back into h_t from step t+1
    dc_next = np.zeros_like(dh_next)
    for t in reversed(range(T)):
        h_prev, c_prev, act = steps[t]
        dh = dhs[:, t] + dh_next
        if kind == "rnn":
            dz = dh * (1 - hs[:, t] ** 2)  # tanh' from its output
        else:
            i, f, g, o, tc = act
            dc = dc_next + dh * o * (1 - tc**2)
            dz = np.concatenate(
                [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g**2), dh * tc * o * (1 - o)], axis=1
            )  # (B, 4H) in gate order i, f, g, o
            dc_next = dc * f
        dz_all[:, t] = dz
        dw_hh += dz.T @ h_prev
        dh_next = dz @ params["w_hh"]  # (B, H)
    db = dz_all.sum((0, 1))
    dw_ih_t = np.zeros((V, dz_all.shape[-1]), dtype=hs.dtype)  # (V, G*H): scatter back the column lookup
    np.add.at(dw_ih_t, x.reshape(-1), dz_all.reshape(-1, dz_all.shape[-1]))
    grads.update(w_ih=dw_ih_t.T, w_hh=dw_hh, b_ih=db, b_hh=db.copy())
    return grads, (dh_next, dc_next)


def loss_and_grads(params: Params, kind: str, x: np.ndarray, y: np.ndarray, state):
    """One truncated-BPTT window: (loss, grads, (dh0, dc0), state at the end of the window)."""
    loss, new_state, cache = forward(params, kind, x, y, state)
    grads, dstate = backward(params, cache)
    return loss, grads, dstate, new_state


def clip_grad_norm(grads: Params, max_norm: float) -> float:
    """In place, as torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1."""
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in grads.values():
            g *= scale
    return norm


class SGD:
    """Plain gradient descent, as torch.optim.SGD without momentum."""

    def __init__(self, params: Params, lr: float = 1.0):
        self.lr = lr

    def step(self, params: Params, grads: Params) -> None:
        for k, p in params.items():
            p -= self.lr * grads[k]


class Adam:
    """torch.optim.Adam's update, written out (no weight decay, no amsgrad)."""

    def __init__(self, params: Params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: Params, grads: Params) -> None:
        b1, b2 = self.betas
        self.t += 1
        bias1, bias2 = 1 - b1**self.t, 1 - b2**self.t
        for k, p in params.items():
            g = grads[k]
            self.m[k] += (1 - b1) * (g - self.m[k])  # torch's lerp, same rounding
            self.v[k] = self.v[k] * b2 + (1 - b2) * g * g
            denom = np.sqrt(self.v[k]) / math.sqrt(bias2) + self.eps
            p -= (self.lr / bias1) * (self.m[k] / denom)
