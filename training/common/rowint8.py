"""Row-wise int8: a generator step graph whose numbers for one stream do not depend on its batch-mates.

``quantize_dynamic`` scales the activations of a whole call with one number (per tensor), so a stream's logits
move with whatever else shares the step. Here every row gets its own scale, computed from that row alone:

    x (B, K) fp32 -> s = max|x| / 127 per row (B, 1) -> u = round(x / s) + 128 (uint8, zero point 128)
    MatMulInteger(u, Wq) (B, N) int32: exact integer sums, whatever B, the kernel or the thread count
    y = int32 * s * w_scale (N,) + bias: elementwise

Weights are int8 per output column (symmetric, zero point 0). Nothing mixes rows, so a row's result is a function
of that row: batch-independent by construction, which tests/training/test_rowint8.py checks bit for bit.

The step graph is rebuilt from the fp32 step graph's initializers (torch-free, like ``quantize``):
    ids (B,), h, c (L, B, H) -> logits (B, V), h_out, c_out
Layer 0's input projection is a table lookup: embedding @ W_ih0^T + biases, precomputed (V, 4H) in fp32.
Layer l > 0 multiplies [h_below, h_l] (B, 2H) by [W_ih; W_hh] in one integer GEMM. Gate order is ONNX's: i, o, f, c.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
ZERO_POINT = 128  # uint8 activations: symmetric range [-127, 127] shifted by 128, so every row shares one zero point


PRODUCER = "rnntext.rowint8"


def lstm_weights(step_path: Path) -> dict | None:
    """The fp32 step graph's weights -> {embed (V, E), layers [(W (4H, I), R (4H, H), b (4H,))], dec_w, dec_b};
    None when it has no LSTM op (GRU and vanilla RNN generators keep per-tensor dynamic int8)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(step_path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = []
    for n in model.graph.node:
        if n.op_type == "LSTM":
            w, r, b = (init[n.input[i]] for i in (1, 2, 3))  # (1, 4H, I), (1, 4H, H), (1, 8H)
            h4 = w.shape[1]
            layers.append((w[0], r[0], b[0, :h4] + b[0, h4:]))
    if not layers:
        return None
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gather = next(n for n in model.graph.node if n.op_type == "Gather")
    return {
        "embed": init[gather.input[0]],
        "layers": layers,
        "dec_w": init[gemm.input[1]],  # (V, H)
        "dec_b": init[gemm.input[2]],  # (V,)
    }


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (N, K) fp32 -> (Wq (K, N) int8, scale (N,) fp32): symmetric per output column."""
    scale = np.abs(w).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scale


class _Graph:
    """A small helper around onnx.helper: names, initializers and nodes of one graph."""

    def __init__(self, prefix: str = ""):
        self.nodes, self.inits, self.prefix, self._n, self._consts = [], [], prefix, 0, {}
        self.rows_zero_point = ""  # (B,) uint8 zero points of the row-wise QuantizeLinear: set by emit_step

    def const(self, name: str, value) -> str:
        """An initializer; a name used before must hold the same value (shared constants such as axes)."""
        from onnx import numpy_helper

        name = self.prefix + name
        value = np.asarray(value)
        if name in self._consts:
            if not np.array_equal(self._consts[name], value):
                raise ValueError(f"constant {name!r} defined twice with different values")
            return name
        self._consts[name] = value
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        from onnx import helper

        self._n += 1
        outs = [f"{self.prefix}{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def rename(self, old: str, new: str) -> None:
        """Give the value ``old`` the name ``new`` everywhere (a Loop body's outputs, without Identity nodes)."""
        for n in self.nodes:
            for i, v in enumerate(n.output):
                if v == old:
                    n.output[i] = new
            for i, v in enumerate(n.input):
                if v == old:
                    n.input[i] = new

    def linear(self, x: str, w: np.ndarray, bias: np.ndarray | None, name: str, int8: bool = True) -> str:
        """x (B, K) fp32 @ w (N, K)^T (+ bias) -> (B, N) fp32; int8: row-wise int8 activations, exact int GEMM."""
        if not int8:
            y = self.op("MatMul", [x, self.const(name + "_w", np.ascontiguousarray(w.T.astype(np.float32)))])
        else:
            wq, ws = quantize_columns(w)
            amax = self.op("ReduceMax", [self.op("Abs", [x])], axes=[1], keepdims=0)  # (B,): this row only
            eps, c127 = self.const(name + "_eps", np.float32(1e-12)), self.const(name + "_127", np.float32(127.0))
            s = self.op("Div", [self.op("Max", [amax, eps]), c127])
            # round(x / s) + 128 as uint8, one scale per row (axis 0)
            u = self.op("QuantizeLinear", [x, s, self.rows_zero_point], axis=0)
            zp = self.const(name + "_zpa", np.uint8(ZERO_POINT))
            acc = self.op("MatMulInteger", [u, self.const(name + "_wq", wq), zp])  # (B, N) int32
            # (acc * s) * w_scale: Cast and Mul are vectorized; DequantizeLinear per axis took 4x as long at batch 8
            s_col = self.op("Unsqueeze", [s, self.const("ax1", np.array([1], np.int64))])  # (B, 1)
            y = self.op("Mul", [self.op("Mul", [self.op("Cast", [acc], to=1), s_col]), self.const(name + "_ws", ws)])
        return self.op("Add", [y, self.const(name + "_b", bias.astype(np.float32))]) if bias is not None else y

    def cell(self, gates: str, c_prev: str, hidden: int, name: str) -> tuple[str, str]:
        """gates (B, 4H) in ONNX order i, o, f, c; c_prev (B, H) -> h, c (B, H)."""
        sig, g = self.op(
            "Split", [gates, self.const(name + "_split", np.array([3 * hidden, hidden], np.int64))], 2, axis=1
        )
        i, o, f = self.op(
            "Split",
            [self.op("Sigmoid", [sig]), self.const(name + "_split3", np.array([hidden] * 3, np.int64))],
            3,
            axis=1,
        )
        c = self.op("Add", [self.op("Mul", [f, c_prev]), self.op("Mul", [i, self.op("Tanh", [g])])])
        h = self.op("Mul", [o, self.op("Tanh", [c])])
        return h, c


def emit_step(
    g: _Graph, weights: dict, ids: str, hs: list[str], cs: list[str], int8: bool = True
) -> tuple[str, list[str], list[str]]:
    """One LSTM step into ``g``: ids (B,), each layer's h, c (B, H) -> logits (B, V), the layers' new h, c (B, H).
    Per-layer (B, H) tensors, not (L, B, H): a Loop carries them without a split and a stack per character."""
    layers = weights["layers"]
    H = layers[0][1].shape[1]
    w0, r0, b0 = layers[0]
    table = (weights["embed"].astype(np.float64) @ w0.T.astype(np.float64) + b0).astype(np.float32)  # (V, 4H)
    x_proj = g.op("Gather", [g.const("l0_table", table), ids], axis=0)  # (B, 4H): layer 0's input projection
    if int8 and not g.rows_zero_point:  # QuantizeLinear per axis takes one zero point per row: (B,) uint8 128
        g.rows_zero_point = g.op("Expand", [g.const("zp128", np.uint8(ZERO_POINT)), g.op("Shape", [ids])])
    h_new, c_new, below = [], [], None
    for layer, (w, r, b) in enumerate(layers):
        if layer == 0:
            gates = g.op("Add", [x_proj, g.linear(hs[0], r0, None, "l0_r", int8)])
        else:  # [h_below, h_l] (B, 2H) @ [W_ih; W_hh]: one GEMM
            x = g.op("Concat", [below, hs[layer]], axis=1)
            gates = g.linear(x, np.concatenate([w, r], axis=1), b, f"l{layer}", int8)
        below, c = g.cell(gates, cs[layer], H, f"l{layer}")
        h_new.append(below)
        c_new.append(c)
    logits = g.op("Gemm", [below, g.const("dec_w", weights["dec_w"]), g.const("dec_b", weights["dec_b"])], transB=1)
    return logits, h_new, c_new


def split_layers(g: _Graph, x: str, layers: int) -> list[str]:
    """(L, B, H) -> L names of (B, H)."""
    axis0 = g.const("axis0", np.array([0], np.int64))
    parts = g.op("Split", [x, g.const("split_l", np.ones(layers, np.int64))], layers, axis=0) if layers > 1 else [x]
    return [g.op("Squeeze", [p, axis0]) for p in parts]


def stack_layers(g: _Graph, xs: list[str], axis: int, out: str) -> None:
    """L names of (..., B, H) -> ``out`` with a new layer axis at ``axis``."""
    from onnx import helper

    ax = g.const(f"stack_ax{axis}", np.array([axis], np.int64))
    g.nodes.append(helper.make_node("Concat", [g.op("Unsqueeze", [x, ax]) for x in xs], [out], axis=axis))


def make_model(g: _Graph, name: str, inputs: list, outputs: list):
    from onnx import helper

    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = 8  # what torch.onnx writes at opset 17; onnxruntime reads up to 13
    return model


def step_graph(weights: dict, int8: bool = True):
    """The step graph (onnx.ModelProto) with the fp32 step graph's inputs and outputs: ids (B,), h, c (L, B, H)
    -> logits (B, V), h_out, c_out; int8: row-wise (this module's docstring)."""
    from onnx import TensorProto, helper

    L, H, V = len(weights["layers"]), weights["layers"][0][1].shape[1], weights["embed"].shape[0]
    g = _Graph()
    logits, hs, cs = emit_step(g, weights, "ids", split_layers(g, "h", L), split_layers(g, "c", L), int8)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    stack_layers(g, hs, 0, "h_out")
    stack_layers(g, cs, 0, "c_out")
    f32 = TensorProto.FLOAT
    return make_model(
        g,
        "step_rowint8" if int8 else "step_fp32",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("h", f32, [L, "batch", H]),
            helper.make_tensor_value_info("c", f32, [L, "batch", H]),
        ],
        [
            helper.make_tensor_value_info("logits", f32, ["batch", V]),
            helper.make_tensor_value_info("h_out", f32, [L, "batch", H]),
            helper.make_tensor_value_info("c_out", f32, [L, "batch", H]),
        ],
    )
