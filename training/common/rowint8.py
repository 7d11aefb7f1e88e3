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


def supports(step_path: Path) -> bool:
    """Whether the fp32 step graph is an LSTM's (GRU and vanilla RNN generators keep per-tensor dynamic int8)."""
    import onnx

    return any(n.op_type == "LSTM" for n in onnx.load(str(step_path), load_external_data=False).graph.node)


def is_rowwise(path: Path) -> bool:
    import onnx

    return onnx.load(str(path), load_external_data=False).producer_name == PRODUCER


def lstm_weights(step_path: Path) -> dict:
    """The fp32 step graph's weights -> {embed (V, E), layers [(W (4H, I), R (4H, H), b (4H,))], dec_w, dec_b}."""
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
        self.nodes, self.inits, self.prefix, self._n = [], [], prefix, 0

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        name = self.prefix + name
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        from onnx import helper

        self._n += 1
        outs = [f"{self.prefix}{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def linear_int8(self, x: str, w: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x (B, K) fp32 @ w (N, K)^T (+ bias) with row-wise int8 activations -> (B, N) fp32."""
        wq, ws = quantize_columns(w)
        amax = self.op("ReduceMax", [self.op("Abs", [x])], axes=[1], keepdims=1)  # (B, 1): this row only
        s = self.op(
            "Div",
            [
                self.op("Max", [amax, self.const(name + "_eps", np.float32(1e-12))]),
                self.const(name + "_127", np.float32(127.0)),
            ],
        )
        u = self.op(
            "Cast",
            [
                self.op(
                    "Add",
                    [self.op("Round", [self.op("Div", [x, s])]), self.const(name + "_zp_f", np.float32(ZERO_POINT))],
                )
            ],
            to=2,
        )  # uint8
        acc = self.op(
            "MatMulInteger", [u, self.const(name + "_wq", wq), self.const(name + "_zp", np.uint8(ZERO_POINT))]
        )
        y = self.op("Mul", [self.op("Mul", [self.op("Cast", [acc], to=1), s]), self.const(name + "_ws", ws)])
        return self.op("Add", [y, self.const(name + "_b", bias.astype(np.float32))]) if bias is not None else y

    def cell(self, gates: str, c_prev: str, hidden: int, name: str) -> tuple[str, str]:
        """gates (B, 4H) in ONNX order i, o, f, c; c_prev (B, H) -> h, c (B, H)."""
        i, o, f, g = self.op("Split", [gates, self.const(name + "_split", np.array([hidden] * 4, np.int64))], 4, axis=1)
        c = self.op(
            "Add",
            [
                self.op("Mul", [self.op("Sigmoid", [f]), c_prev]),
                self.op("Mul", [self.op("Sigmoid", [i]), self.op("Tanh", [g])]),
            ],
        )
        h = self.op("Mul", [self.op("Sigmoid", [o]), self.op("Tanh", [c])])
        return h, c


def step_graph(weights: dict):
    """The row-wise int8 step graph (onnx.ModelProto) with the fp32 step graph's inputs and outputs."""
    from onnx import TensorProto, helper

    layers = weights["layers"]
    L, H = len(layers), layers[0][1].shape[1]
    V = weights["embed"].shape[0]
    g = _Graph()
    w0, _, b0 = layers[0]
    table = (weights["embed"].astype(np.float64) @ w0.T.astype(np.float64) + b0).astype(np.float32)  # (V, 4H)
    x_proj = g.op("Gather", [g.const("l0_table", table), "ids"], axis=0)  # (B, 4H)
    ones = g.const("split_l", np.ones(L, np.int64))
    hs = g.op("Split", ["h", ones], L, axis=0) if L > 1 else ["h"]
    cs = g.op("Split", ["c", ones], L, axis=0) if L > 1 else ["c"]
    axis0 = g.const("axis0", np.array([0], np.int64))
    h_new, c_new, below = [], [], None
    for layer, (w, r, b) in enumerate(layers):
        h_prev, c_prev = g.op("Squeeze", [hs[layer], axis0]), g.op("Squeeze", [cs[layer], axis0])  # (B, H)
        if layer == 0:
            gates = g.op("Add", [x_proj, g.linear_int8(h_prev, r, None, "l0_r")])
        else:
            gates = g.linear_int8(
                g.op("Concat", [below, h_prev], axis=1), np.concatenate([w, r], axis=1), b, f"l{layer}"
            )
        h, c = g.cell(gates, c_prev, H, f"l{layer}")
        h_new.append(g.op("Unsqueeze", [h, axis0]))
        c_new.append(g.op("Unsqueeze", [c, axis0]))
        below = h
    g.nodes.append(helper.make_node("Concat", h_new, ["h_out"], axis=0))
    g.nodes.append(helper.make_node("Concat", c_new, ["c_out"], axis=0))
    g.nodes.append(
        helper.make_node(
            "Gemm",
            [below, g.const("dec_w", weights["dec_w"]), g.const("dec_b", weights["dec_b"])],
            ["logits"],
            transB=1,
        )
    )
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        "step_rowint8",
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
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = 8  # what torch.onnx writes at opset 17; onnxruntime reads up to 13
    return model
