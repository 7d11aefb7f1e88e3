"""The classifier's ONNX inference graph, built node by node from its weights (no tracing).

    ids (B, T) int64, lengths (B,) int64 -> logits (B, C) float32        (the traced graph's names and dtypes)

Per member: Gather the embedding at the transposed ids -> (T, B, E) -> per layer ONE ONNX LSTM/GRU/RNN op,
``direction="bidirectional"`` (or forward), with ``sequence_lens`` = lengths as int32 -> Y (T, D, B, H).
``sequence_lens`` makes each row stop at its own length and the reverse direction start at each row's own end: no
gather-based reversal as in the traced graph, and a row's result does not depend on its batch-mates' padding.
(ONNX Runtime still steps every row of a call to the call's longest row: the runtime buckets texts by length.)
Pooling over the true length reads Y directly (no (B, T, D*H) copy):

    mean  ReduceSum over T / length         Y is zero beyond each length (ONNX Runtime's CPU LSTM and
                                            DynamicQuantizeLSTM zero-fill it: tests/training/test_classifier_graph.py)
    max   max over T of Y + penalty         penalty (T, 1, B, 1): 0 inside the length, -inf beyond it
    last  Y_h (D, B, H)                     forward: the state at length-1; backward: its last step, t = 0

Then the head (Gemm) and, for an ``Ensemble``, log(mean_k softmax(z_k)) / T as in ``Ensemble.forward``.
Members with the wide (TF-IDF) branch are not built here: ``supported`` is False and export.py keeps
torch.onnx.export for them (its TfIdfVectorizer node comes from the traced autograd Function).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from training.classifier.model import Ensemble, TextClassifier

OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
POOL_WINDOW = 16  # steps per MaxPool window of the max pooling (max_over_time)
# torch's gate blocks, in ONNX's order: LSTM torch (i, f, g, o) -> ONNX (i, o, f, c); GRU (r, z, n) -> (z, r, h)
GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}


def members(model: TextClassifier | Ensemble) -> list[TextClassifier]:
    return list(model.members) if isinstance(model, Ensemble) else [model]


def supported(model: TextClassifier | Ensemble) -> bool:
    """True unless a member has the wide branch (then export with torch.onnx.export)."""
    return all(m.config.wide_features == 0 for m in members(model))


class _Builder:
    """Nodes and initializers with unique names."""

    def __init__(self, opset: int):
        self.opset, self.nodes, self.inits, self._n = opset, [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def reduce(self, op_type: str, x: str, axis: int, keepdims: int = 0) -> str:
        if op_type == "ReduceSum" or self.opset >= 18:  # axes became an input (ReduceSum at 13, the rest at 18)
            return self.op(op_type, [x, self.const([axis], "axes", np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=[axis], keepdims=keepdims)


def rnn_weights(mods, cell: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's single-layer torch RNNs (forward[, backward]) -> ONNX W (D, G*H, I), R (D, G*H, H),
    B (D, 2*G*H) = [input bias, recurrent bias], gate blocks in ONNX order."""
    order = GATE_ORDER[cell]

    def gates(t) -> np.ndarray:  # (G*H, ...) torch order -> ONNX order
        a = t.detach().cpu().float().numpy()
        return np.concatenate([np.split(a, len(order))[g] for g in order])

    w = np.stack([gates(m.weight_ih_l0) for m in mods])
    r = np.stack([gates(m.weight_hh_l0) for m in mods])
    b = np.stack([np.concatenate([gates(m.bias_ih_l0), gates(m.bias_hh_l0)]) for m in mods])
    return w, r, b


def max_over_time(g: _Builder, y: str, dirs: int, hidden: int) -> str:
    """y (T, D, B, H) -> max over T (D, B, H). ReduceMax over a leading axis is a scalar loop in ONNX Runtime
    (0.38 ms for T=400, B=8 on one thread); MaxPool over windows of POOL_WINDOW steps, then ReduceMax over the
    T / POOL_WINDOW window maxima, gives the same maximum in 0.09 ms (ceil_mode: the last window is clipped to T)."""
    flat = g.op("Reshape", [y, g.const([0, -1], "shape", np.int64)])  # (T, D*B*H)
    grid = g.op("Unsqueeze", [flat, g.const([0, 1], "axes", np.int64)])  # (1, 1, T, D*B*H): MaxPool's N, C, H, W
    windows = g.op("MaxPool", [grid], kernel_shape=[POOL_WINDOW, 1], strides=[POOL_WINDOW, 1], ceil_mode=1)
    top = g.reduce("ReduceMax", windows, 2)  # (1, 1, D*B*H)
    return g.op("Reshape", [top, g.const([dirs, -1, hidden], "shape", np.int64)])  # (D, B, H)


def member_logits(g: _Builder, model: TextClassifier, ids_tb: str, lens32: str, len_f: str, penalty: str) -> str:
    """One TextClassifier, ids_tb (T, B) -> its logits z (B, C)."""
    c = model.config
    dirs = 2 if c.bidirectional else 1
    emb = g.const(model.embedding.weight.detach().cpu().numpy(), "embedding")
    x = g.op("Gather", [emb, ids_tb])  # (T, B, E)
    attrs = {"hidden_size": c.hidden_size, "direction": "bidirectional" if dirs == 2 else "forward"}
    if c.cell == "gru":
        attrs["linear_before_reset"] = 1  # torch applies the reset gate after the recurrent matmul
    for layer in range(c.num_layers):
        mods = [model.fwd[layer]] + ([model.bwd[layer]] if dirs == 2 else [])
        w, r, b = (g.const(a, n) for a, n in zip(rnn_weights(mods, c.cell), ("W", "R", "B")))
        # Y (T, D, B, H): zero beyond each row's length; Y_h (D, B, H): each direction's final state
        y, y_h = g.op(OPS[c.cell], [x, w, r, b, lens32], n_out=2, **attrs)
        if layer < c.num_layers - 1:  # the next layer reads (T, B, D*H), [forward, backward] per step
            x = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.const([0, 0, -1], "shape", np.int64)])
    feats = []
    for p in c.poolings:
        if p == "mean":
            pooled = g.reduce("ReduceSum", y, 0)  # (D, B, H)
        elif p == "max":
            pooled = max_over_time(g, g.op("Add", [y, penalty]), dirs, c.hidden_size)  # (D, B, H); padding -inf
        else:
            pooled = y_h  # last
        flat = g.op("Reshape", [g.op("Transpose", [pooled], perm=[1, 0, 2]), g.const([0, -1], "shape", np.int64)])
        feats.append(g.op("Div", [flat, len_f]) if p == "mean" else flat)  # (B, D*H)
    feat = feats[0] if len(feats) == 1 else g.op("Concat", feats, axis=1)  # (B, D*H*P) in pooling order
    head_w = g.const(model.head.weight.detach().cpu().numpy(), "head_w")  # (C, D*H*P)
    return g.op("Gemm", [feat, head_w, g.const(model.head.bias.detach().cpu().numpy(), "head_b")], transB=1)


def build(model: TextClassifier | Ensemble, opset: int = 17) -> onnx.ModelProto:
    """The eval-mode model's inference graph (dropout and word dropout are training only)."""
    if not supported(model):
        raise ValueError("the wide (TF-IDF) branch is not built by hand: export it with torch.onnx.export")
    g = _Builder(opset)
    ids, lengths = "ids", "lengths"
    lens32 = g.op("Cast", [lengths], to=TensorProto.INT32)  # the RNN ops' sequence_lens is int32
    len_f = g.op("Unsqueeze", [g.op("Cast", [lengths], to=TensorProto.FLOAT), g.const([1], "axes", np.int64)])
    # penalty (T, 1, B, 1): 0 where t < length, -inf beyond; T = ids' width (Y has T steps whatever the lengths)
    steps = g.op("Gather", [g.op("Shape", [ids]), g.const(1, "one", np.int64)], axis=0)
    t = g.op("Range", [g.const(0, "zero", np.int64), steps, g.const(1, "one", np.int64)])  # (T,)
    inside = g.op("Less", [g.op("Unsqueeze", [t, g.const([1], "axes", np.int64)]), lengths])  # (T, B)
    penalty = g.op("Where", [inside, g.const(0.0, "zero"), g.const(-np.inf, "ninf")])
    penalty = g.op("Unsqueeze", [penalty, g.const([1, 3], "axes", np.int64)])
    ids_tb = g.op("Transpose", [ids], perm=[1, 0])  # (T, B): the embedding comes out time-major, no float copy
    zs = [member_logits(g, m, ids_tb, lens32, len_f, penalty) for m in members(model)]  # (B, C) each
    if isinstance(model, Ensemble):  # Ensemble.forward: (logsumexp_k log_softmax(z_k) - log K) / T
        logp = [g.op("LogSoftmax", [z], axis=-1) for z in zs]
        if len(logp) > 1:
            stacked = g.op("Concat", [g.op("Unsqueeze", [p, g.const([0], "axes", np.int64)]) for p in logp], axis=0)
            logp = [g.op("Sub", [g.reduce("ReduceLogSumExp", stacked, 0), g.const(math.log(len(zs)), "logk")])]
        out = g.op("Div", [logp[0], g.const(float(model.temperature), "temperature")])
    else:
        out = zs[0]
    g.nodes.append(helper.make_node("Identity", [out], ["logits"], name="logits"))
    c = model.config
    graph = helper.make_graph(
        g.nodes,
        "rnntext_classifier",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "time"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c.num_classes])],
        g.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rnntext")
    proto.ir_version = 8  # ONNX Runtime reads IR 8 at opset 17
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save(model: TextClassifier | Ensemble, path: str | Path, opset: int = 17) -> None:
    onnx.save(build(model, opset), str(path))
