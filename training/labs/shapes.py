"""shapes: what ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` return, checked by running them.

Every check is a function ``check(device) -> dict`` with a ``passed`` flag and the figures it compared; CHECKS
names them all. The lab runs them and writes the shape table; tests/training/labs/test_shapes.py runs the same
list (and asserts specific shapes itself). Sizes are distinct (B=3, T=5, I=4, H=6) so a swapped axis shows,
and everything is float64 so the equalities are exact or within 1e-12.

What is checked:
- output is (B, T, D*H) with batch_first, else (T, B, D*H); h_n and c_n are (L*D, B, H) either way
  (batch_first never applies to the state), D = 2 when bidirectional;
- h_n.view(L, D, B, H)[l, d] is h_n[l*D + d], and layer 0 of a 2-layer model is the 1-layer model;
- the last layer's forward direction ends at the last step, its backward direction at the first:
  output[:, -1, :H] == h_n[-2] and output[:, 0, H:] == h_n[-1] (batch_first);
- a 1-unit nn.RNN is h_t = tanh(w_x x_t + w_h h_{t-1} + b), with b = b_ih + b_hh, computed by hand;
- the LSTM's stacked weights are the gates i, f, g, o in that order (one step by hand);
- packed sequences: h_n is each sequence's state at its true last step, not at the padded end.
"""

from __future__ import annotations

import itertools
from functools import partial

from training.labs.common import LabResult

B, T, I, H = 3, 5, 4, 6  # noqa: E741 (I is the input size, as in every shape comment: (B, T, I))
CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # rows of weight_ih / weight_hh per hidden unit


def make(cell: str, device="cpu", seed: int = 0, **kw):
    """A float64 nn.RNN / nn.LSTM / nn.GRU with input I and hidden H, seeded."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
    return cls(I, H, dtype=torch.float64, **kw).to(device)


def _inputs(batch_first: bool, device, seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)  # (B, T, I)
    return (x if batch_first else x.transpose(0, 1).contiguous()).to(device)


def _run(model, x):
    """-> output, h_n, c_n (None for RNN / GRU)."""
    out, state = model(x)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    return out, h_n, c_n


def _gap(a, b) -> float:
    return float((a - b).abs().max())


def check_shapes(device, cell: str, batch_first: bool, num_layers: int, bidirectional: bool) -> dict:
    D = 2 if bidirectional else 1
    model = make(cell, device, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    x = _inputs(batch_first, device)
    out, h_n, c_n = _run(model, x)
    want_out = (B, T, D * H) if batch_first else (T, B, D * H)
    want_state = (num_layers * D, B, H)  # batch_first does not apply to the state
    params = {name: tuple(p.shape) for name, p in model.named_parameters()}
    want_params = {}
    for layer, d in itertools.product(range(num_layers), range(D)):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        in_size = I if layer == 0 else D * H  # upper layers read both directions of the layer below
        g = GATES[cell] * H
        want_params |= {
            f"weight_ih{sfx}": (g, in_size),
            f"weight_hh{sfx}": (g, H),
            f"bias_ih{sfx}": (g,),
            f"bias_hh{sfx}": (g,),
        }
    passed = (
        tuple(out.shape) == want_out
        and tuple(h_n.shape) == want_state
        and params == want_params
        and (c_n is None) == (cell != "lstm")
        and (c_n is None or tuple(c_n.shape) == want_state)
    )
    return {
        "passed": passed,
        "cell": cell,
        "batch_first": batch_first,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "input": list(x.shape),
        "output": list(out.shape),
        "h_n": list(h_n.shape),
        "c_n": None if c_n is None else list(c_n.shape),
        "weight_ih_l0": list(params["weight_ih_l0"]),
        "weight_hh_l0": list(params["weight_hh_l0"]),
    }


def check_direction_slices(device, cell: str, batch_first: bool) -> dict:
    """2 layers, bidirectional: which slice of output is which row of h_n."""
    model = make(cell, device, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = _inputs(batch_first, device)
    out, h_n, c_n = _run(model, x)
    seq = out if batch_first else out.transpose(0, 1)  # (B, T, 2H)
    gaps = {
        "fwd: output[:, -1, :H] vs h_n[-2]": _gap(seq[:, -1, :H], h_n[-2]),
        "bwd: output[:, 0, H:] vs h_n[-1]": _gap(seq[:, 0, H:], h_n[-1]),
    }
    # the wrong pairings really differ: the backward direction's last step is not its final state
    wrong = {"bwd: output[:, -1, H:] vs h_n[-1]": _gap(seq[:, -1, H:], h_n[-1])}
    # layer 0 of the stack, rows 0 and 1 (l*2 + d), is a 1-layer bidirectional model with the same weights
    one = make(cell, device, num_layers=1, bidirectional=True, batch_first=batch_first)
    one.load_state_dict({k: v for k, v in model.state_dict().items() if "_l0" in k})
    _, h1, c1 = _run(one, x)
    gaps["h_n[0:2] vs 1-layer h_n"] = _gap(h_n[0:2], h1)
    gaps["h_n.view(L, D, B, H)[1, 0] vs h_n[2]"] = _gap(h_n.view(2, 2, B, H)[1, 0], h_n[1 * 2 + 0])
    if c_n is not None:
        gaps["c_n[0:2] vs 1-layer c_n"] = _gap(c_n[0:2], c1)
    passed = max(gaps.values()) <= 1e-12 and min(wrong.values()) > 1e-3
    return {"passed": passed, "cell": cell, "batch_first": batch_first, "gaps": gaps, "wrong_pairing_gaps": wrong}


def check_hand_rnn(device) -> dict:
    """A 1-unit nn.RNN with weights set by hand against h_t = tanh(w_x x_t + w_h h_{t-1} + b)."""
    import math

    import torch
    from torch import nn

    w_x, w_h, b_ih, b_hh, h0 = 0.5, -0.8, 0.1, 0.2, 0.25
    rnn = nn.RNN(1, 1, batch_first=True, dtype=torch.float64).to(device)
    with torch.no_grad():
        for p, v in ((rnn.weight_ih_l0, w_x), (rnn.weight_hh_l0, w_h), (rnn.bias_ih_l0, b_ih), (rnn.bias_hh_l0, b_hh)):
            p.fill_(v)
    xs = [1.0, -0.5, 2.0, 0.0, -1.5]
    hand, h = [], h0
    for x_t in xs:
        h = math.tanh(w_x * x_t + w_h * h + (b_ih + b_hh))
        hand.append(h)
    x = torch.tensor(xs, dtype=torch.float64, device=device).view(1, len(xs), 1)  # (B=1, T, I=1)
    out, h_n = rnn(x, torch.full((1, 1, 1), h0, dtype=torch.float64, device=device))
    torch_h = out.view(-1).tolist()
    gap = max(abs(a - b) for a, b in zip(hand, torch_h))
    passed = gap <= 1e-12 and abs(h_n.item() - hand[-1]) <= 1e-12
    return {"passed": passed, "x": xs, "hand": hand, "nn.RNN": torch_h, "max_gap": gap}


def check_lstm_gate_order(device) -> dict:
    """One LSTM step by hand from the weight chunks in the order i, f, g, o."""
    import torch

    model = make("lstm", device, batch_first=True)
    x = _inputs(True, device)[:, :1]  # (B, 1, I)
    g = torch.Generator().manual_seed(2)
    h0, c0 = (torch.randn(1, B, H, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    _, (h1, c1) = model(x, (h0, c0))
    z = x[:, 0] @ model.weight_ih_l0.T + model.bias_ih_l0 + h0[0] @ model.weight_hh_l0.T + model.bias_hh_l0
    i, f, gg, o = z.chunk(4, dim=1)  # (B, H) each
    c = torch.sigmoid(f) * c0[0] + torch.sigmoid(i) * torch.tanh(gg)
    h = torch.sigmoid(o) * torch.tanh(c)
    gaps = {"h": _gap(h, h1[0]), "c": _gap(c, c1[0])}
    return {"passed": max(gaps.values()) <= 1e-12, "gaps": gaps}


def check_packed(device, cell: str, bidirectional: bool) -> dict:
    """Padded batch with lengths 5, 2, 3 packed: h_n is at each sequence's true last step."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lengths = [5, 2, 3]  # unsorted: enforce_sorted=False sorts and unsorts for us
    model = make(cell, device, bidirectional=bidirectional, batch_first=True)
    x = _inputs(True, device)  # (B, T, I); steps past each length are padding
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    out_p, h_n, _ = _run(model, packed)
    out, out_len = pad_packed_sequence(out_p, batch_first=True)  # (B, max(lengths), D*H)
    last = torch.stack([out[b, n - 1, :H] for b, n in enumerate(lengths)])  # forward at the true last step
    alone = torch.cat([_run(model, x[b : b + 1, :n])[1] for b, n in enumerate(lengths)], dim=1)  # (D, B, H)
    gaps = {
        "h_n[fwd] vs output at length-1": _gap(h_n[0], last),
        "h_n vs each sequence run alone": _gap(h_n, alone),
        "output past the length is 0": max(
            float(out[b, n:].abs().max()) if n < out.shape[1] else 0.0 for b, n in enumerate(lengths)
        ),
    }
    if bidirectional:
        gaps["h_n[bwd] vs output[:, 0, H:]"] = _gap(h_n[1], out[:, 0, H:])
    _, h_pad, _ = _run(model, x)  # without packing the state runs on through the padding
    padded_differs = _gap(h_pad[0, 1:], h_n[0, 1:])  # sequences 1 and 2 are shorter than T
    passed = max(gaps.values()) <= 1e-12 and padded_differs > 1e-3 and out_len.tolist() == lengths
    return {
        "passed": passed,
        "cell": cell,
        "bidirectional": bidirectional,
        "lengths": lengths,
        "gaps": gaps,
        "unpacked_h_n_gap": padded_differs,
    }


def _no_grad(check):
    """Checks only run forward passes: no autograd graph (and no warnings converting outputs to floats)."""

    def run_check(device) -> dict:
        import torch

        with torch.no_grad():
            return check(device)

    return run_check


def _checks() -> dict:
    checks = {}
    for cell, bf, layers, bi in itertools.product(CELLS, (True, False), (1, 2), (False, True)):
        checks[f"shapes[{cell},batch_first={bf},layers={layers},bi={bi}]"] = partial(
            check_shapes, cell=cell, batch_first=bf, num_layers=layers, bidirectional=bi
        )
    for cell, bf in itertools.product(CELLS, (True, False)):
        checks[f"direction_slices[{cell},batch_first={bf}]"] = partial(
            check_direction_slices, cell=cell, batch_first=bf
        )
    checks["hand_rnn"] = check_hand_rnn
    checks["lstm_gate_order"] = check_lstm_gate_order
    for cell, bi in itertools.product(CELLS, (False, True)):
        checks[f"packed[{cell},bi={bi}]"] = partial(check_packed, cell=cell, bidirectional=bi)
    return {name: _no_grad(check) for name, check in checks.items()}


CHECKS = _checks()  # name -> check(device) -> dict with "passed"


def add_arguments(p) -> None:
    pass  # no lab flags: every check is a few milliseconds, --quick runs the same list


def run(args, ctx) -> LabResult:
    results = {}
    for name, check in ctx.bar(CHECKS.items(), total=len(CHECKS), desc="shapes"):
        results[name] = check(ctx.device)
    failed = [name for name, r in results.items() if not r["passed"]]
    table = [
        {
            k: r[k]
            for k in (
                "cell",
                "batch_first",
                "num_layers",
                "bidirectional",
                "input",
                "output",
                "h_n",
                "c_n",
                "weight_ih_l0",
                "weight_hh_l0",
            )
        }
        for name, r in results.items()
        if name.startswith("shapes[")
    ]
    headline = {"checks": len(results), "passed": len(results) - len(failed), "failed": failed}
    return LabResult(
        headline=headline, metrics={"sizes": {"B": B, "T": T, "I": I, "H": H}, "shape_table": table, "results": results}
    )
