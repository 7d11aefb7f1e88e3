"""The decode graph: K characters per ONNX Runtime call, sampling inside the graph.

One generation step costs ~60-90 us of arithmetic at batch 1, but a call per character and Python sampling added
as much again. This graph runs an ONNX ``Loop`` of K iterations, each one "sample a character, feed it":

    inputs   logits (B, V) f32       each stream's next-character logits (every emitted char has been fed)
             h, c (L, B, H) f32
             u (K, B) f64            uniform draws in [0, 1), drawn by the caller from each stream's own RNG
             forced (K, B) int64     >= 0: feed this id instead of sampling (scoring); -1: sample
             temperature (B,) f32    <= 0: greedy (argmax of the logits)
             top_k (B,) int64        used when 0 < top_k < V
             top_p (B,) f32          used when 0 < top_p < 1
    outputs  ids (K, B) int64, logits (K, B, V), h, c (K, L, B, H): after each of the K characters

The random draws come in from outside, so a seed gives the same text for any K: the caller draws the same uniforms
in the same order (numpy's ``Generator.random(K)`` is K calls of ``random()``), and iteration k's numbers do not
depend on K. The sampler is ``runtime.generator.sample_next``'s rule, in float64: temperature, top-k, then the
smallest top-p prefix, then the first index whose cumulative mass exceeds u * total (searchsorted, side right).
Each row's numbers are its own (the int8 step is row-wise, rowint8.py), so batch-mates never change a stream.
"""

from __future__ import annotations

import numpy as np

from training.common.rowint8 import ZERO_POINT, _Graph, emit_step, make_model, split_layers, stack_layers

DOUBLE, INT64 = 11, 7  # onnx.TensorProto data types


def emit_sampler_setup(g: _Graph, temperature: str, top_k: str, top_p: str, vocab: int) -> dict:
    """Per-stream sampling constants, computed once per call (outside the Loop) -> names of (B, 1) / (B, V)."""
    ax1 = g.const("s_ax1", np.array([1], np.int64))
    t = g.op("Unsqueeze", [temperature, ax1])  # (B, 1)
    greedy = g.op("LessOrEqual", [t, g.const("s_zero", np.float32(0))])
    # greedy as temperature 1e-30: every logit below the largest gets probability exp(-1e24 or less) = 0, so with
    # its draw u = 0 (greedy draws nothing) a greedy row picks rank 0: the first largest logit, as argmax does
    t = g.op("Where", [greedy, g.const("s_tiny", np.float32(1e-30)), t])
    inv_t = g.op("Reciprocal", [g.op("Cast", [t], to=DOUBLE)])
    k = g.op("Unsqueeze", [top_k, ax1])
    k_on = g.op(
        "And", [g.op("Greater", [k, g.const("s_k0", np.int64(0))]), g.op("Less", [k, g.const("s_kv", np.int64(vocab))])]
    )
    k = g.op("Where", [k_on, k, g.const("s_kv", np.int64(vocab))])
    rank = g.const("s_rank", np.arange(vocab, dtype=np.int64)[None])  # (1, V)
    keep_k = g.op("Cast", [g.op("Less", [rank, k])], to=DOUBLE)  # (B, V): 1 for the top_k ranks
    tp = g.op("Unsqueeze", [top_p, ax1])
    p_on = g.op(
        "And",
        [g.op("Greater", [tp, g.const("s_p0", np.float32(0))]), g.op("Less", [tp, g.const("s_p1", np.float32(1))])],
    )
    tp = g.op("Cast", [g.op("Where", [p_on, tp, g.const("s_p2", np.float32(2))])], to=DOUBLE)
    return {"inv_t": inv_t, "keep_k": keep_k, "top_p": tp}


def emit_sample(g: _Graph, logits: str, u: str, s: dict, vocab: int) -> str:
    """Nodes that sample one id per row -> ids (B,) int64. logits (B, V) f32, u (B, 1) f64, s: emit_sampler_setup."""
    ax1 = g.const("s_ax1", np.array([1], np.int64))
    z = g.op("Mul", [g.op("Cast", [logits], to=DOUBLE), s["inv_t"]])  # (B, V) f64
    vals, order = g.op("TopK", [z, g.const("s_v", np.array([vocab], np.int64))], 2, axis=1, largest=1, sorted=1)
    first = g.op("Slice", [vals, g.const("s_0", np.array([0], np.int64)), ax1, ax1])  # (B, 1): the max
    p = g.op("Mul", [g.op("Exp", [g.op("Sub", [vals, first])]), s["keep_k"]])  # (B, V), most likely first
    cax = g.const("s_cax", np.int64(1))
    last, end = g.const("s_last", np.array([vocab - 1], np.int64)), g.const("s_end", np.array([vocab], np.int64))
    cdf = g.op("CumSum", [p, cax])
    total = g.op("Slice", [cdf, last, end, ax1])  # (B, 1)
    # keep ranks 0..n where n = how many cumulative masses are below top_p: the smallest prefix reaching it; the
    # kept prefix's cumulative masses are cdf's own, so its total is cdf[n]
    below = g.op("Cast", [g.op("Less", [cdf, g.op("Mul", [s["top_p"], total])])], to=INT64)
    n = g.op("Min", [g.op("ReduceSum", [below, ax1], keepdims=1), g.const("s_vmax", np.int64(vocab - 1))])
    r = g.op("Mul", [u, g.op("GatherElements", [cdf, n], axis=1)])  # u * kept total, (B, 1)
    # searchsorted(cdf / total, u, side="right"): how many cumulative masses are <= u * total, never past rank n
    idx = g.op("ReduceSum", [g.op("Cast", [g.op("LessOrEqual", [cdf, r])], to=INT64), ax1], keepdims=1)
    sampled = g.op("GatherElements", [order, g.op("Min", [idx, n])], axis=1)  # (B, 1)
    return g.op("Squeeze", [sampled, ax1])  # (B,)


def decode_graph(weights: dict, int8: bool = True):
    """The K-step decode graph (onnx.ModelProto) of an LSTM generator's weights (rowint8.lstm_weights)."""
    from onnx import TensorProto, helper

    L, H, V = len(weights["layers"]), weights["layers"][0][1].shape[1], weights["embed"].shape[0]
    f32 = TensorProto.FLOAT
    g = _Graph()
    setup = emit_sampler_setup(g, "temperature", "top_k", "top_p", V)
    g.nodes.append(helper.make_node("Unsqueeze", ["u", g.const("ax2", np.array([2], np.int64))], ["u_col"]))
    body = _Graph(prefix="b_")
    # per call, not per character: each row's QuantizeLinear zero points (B,), read by the body from the outer scope
    g.nodes.append(
        helper.make_node(
            "Expand", [g.const("zp128", np.uint8(ZERO_POINT)), g.op("Shape", ["temperature"])], ["zp_rows"]
        )
    )
    body.rows_zero_point = "zp_rows"
    u_k = body.op("Gather", ["u_col", "k"], axis=0)  # (B, 1)
    forced_k = body.op("Gather", ["forced", "k"], axis=0)
    sampled = emit_sample(body, "logits_in", u_k, setup, V)
    ids = body.op("Where", [body.op("GreaterOrEqual", [forced_k, body.const("zero", np.int64(0))]), forced_k, sampled])
    h_in, c_in = [f"h{i}_in" for i in range(L)], [f"c{i}_in" for i in range(L)]
    logits, hs, cs = emit_step(body, weights, ids, h_in, c_in, int8)
    carried = ["logits", *(f"h{i}" for i in range(L)), *(f"c{i}" for i in range(L))]  # (B, V), then (B, H) each
    body.rename(ids, "ids_k")
    for src, name in zip([logits, *hs, *cs], carried):  # the carried values named as outputs; their scan copies
        body.rename(src, name + "_out")
        body.nodes.append(helper.make_node("Identity", [name + "_out"], [name + "_k"]))
    body.nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    state = [helper.make_tensor_value_info(n, f32, ["batch", H]) for n in h_in + c_in]
    body_graph = helper.make_graph(
        body.nodes,
        "decode_step",
        [
            helper.make_tensor_value_info("k", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("logits_in", f32, ["batch", V]),
            *state,
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("logits_out", f32, ["batch", V]),
            *(helper.make_tensor_value_info(n + "_out", f32, ["batch", H]) for n in carried[1:]),
            helper.make_tensor_value_info("ids_k", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("logits_k", f32, ["batch", V]),
            *(helper.make_tensor_value_info(n + "_k", f32, ["batch", H]) for n in carried[1:]),
        ],
    )
    g.inits += body.inits  # the weights live in the outer graph; the body reads them from the outer scope
    body.inits = []
    steps = g.op("Gather", [g.op("Shape", ["u"]), g.const("zero_idx", np.int64(0))], axis=0)  # K
    h0, c0 = split_layers(g, "h", L), split_layers(g, "c", L)
    finals = [f"last_{n}" for n in carried]
    scans = ["ids", "logits_seq", *(f"{n}_seq" for n in carried[1:])]  # (K, B, ...) each
    g.nodes.append(
        helper.make_node(
            "Loop", [steps, g.const("true", np.array(True)), "logits", *h0, *c0], finals + scans, body=body_graph
        )
    )
    stack_layers(g, scans[2 : 2 + L], 1, "h_seq")  # (K, L, B, H)
    stack_layers(g, scans[2 + L :], 1, "c_seq")
    return make_model(
        g,
        "decode_rowint8" if int8 else "decode_fp32",
        [
            helper.make_tensor_value_info("logits", f32, ["batch", V]),
            helper.make_tensor_value_info("h", f32, [L, "batch", H]),
            helper.make_tensor_value_info("c", f32, [L, "batch", H]),
            helper.make_tensor_value_info("u", TensorProto.DOUBLE, ["steps", "batch"]),
            helper.make_tensor_value_info("forced", TensorProto.INT64, ["steps", "batch"]),
            helper.make_tensor_value_info("temperature", f32, ["batch"]),
            helper.make_tensor_value_info("top_k", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("top_p", f32, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["steps", "batch"]),
            helper.make_tensor_value_info("logits_seq", f32, ["steps", "batch", V]),
            helper.make_tensor_value_info("h_seq", f32, ["steps", L, "batch", H]),
            helper.make_tensor_value_info("c_seq", f32, ["steps", L, "batch", H]),
        ],
    )
