"""Tiny stand-in models in the exported format (docs/export_format.md), built with onnx.helper (no torch).

For tests that need a model folder to damage or to load quickly; the HTTP tests serve the committed models.
``int8=True`` / ``False`` also writes int8 variants (quantize_dynamic of each graph, as the exports do) with a
``precisions`` entry that is accepted / rejected without being measured; the default ``None`` writes fp32 only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.manifest import write_manifest

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
CHARS = list(" abcdefghijklmnopqrstuvwxyz.,\n")


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def add_int8(folder: Path, kind: str, accepted: bool = True) -> Path:
    """Quantize the folder's graphs as the exports do and record the variant as ``accepted`` (nothing measured)."""
    from training.common.quantize import quantize_graphs, write_int8_entry

    man, files = quantize_graphs(folder, kind, say=lambda _msg: None)
    write_int8_entry(
        folder,
        man,
        {
            "files": files,
            "accepted": accepted,
            "verdict": "meets the bar" if accepted else "tiny test model: rejected",
            "quality": {"evaluated_on": "nothing: tiny test model"},
        },
    )
    return folder


def classifier(folder: Path, seed: int = 0, int8: bool | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<pad>", "<unk>", "market", "film", "election", "match", "phone", "the"]
    emb = np.random.default_rng(seed).standard_normal((len(vocab), len(LABELS))).astype(np.float32)
    emb[0] = 0
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),  # (B, T, C)
        helper.make_node("ReduceSum", ["e", "axis1"], ["s"], keepdims=0),  # (B, C)
        helper.make_node("Cast", ["lengths"], ["lf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["lf", "axis1"], ["l2"]),
        helper.make_node("Div", ["s", "l2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", len(LABELS)])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    _save(graph, folder / "model.onnx")
    (folder / "model.ts").write_bytes(b"not torchscript: tiny test model")
    write_manifest(
        folder,
        {
            "kind": "classifier",
            "labels": LABELS,
            "vocab": vocab,
            "max_len": 50,
            "tokenizer": {"lowercase": True, "pattern": r"[a-z0-9']+"},
            "metrics": {"test_accuracy": 0.2},
            "created": "test",
        },
    )
    return folder if int8 is None else add_int8(folder, "classifier", int8)


def _cell(prefix: str, ids: str, h: str, c: str, h_out: str, c_out: str, logits: str) -> list:
    """h' = tanh(0.5 h + E[ids]); c' = c + 0.1 h'; logits = h'[-1] @ W  (L = 1)."""
    p = prefix
    return [
        helper.make_node("Gather", ["E", ids], [p + "e"]),  # (B, H)
        helper.make_node("Unsqueeze", [p + "e", "axis0"], [p + "e3"]),  # (1, B, H)
        helper.make_node("Mul", [h, "half"], [p + "hh"]),
        helper.make_node("Add", [p + "hh", p + "e3"], [p + "pre"]),
        helper.make_node("Tanh", [p + "pre"], [h_out]),
        helper.make_node("Mul", [h_out, "tenth"], [p + "ht"]),
        helper.make_node("Add", [c, p + "ht"], [c_out]),
        helper.make_node("Squeeze", [h_out, "axis0"], [p + "h2"]),
        helper.make_node("MatMul", [p + "h2", "W"], [logits]),
    ]


def generator(folder: Path, hidden: int = 8, seed: int = 0, int8: bool | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    V, H = len(CHARS), hidden
    weights = [
        numpy_helper.from_array(rng.standard_normal((V, H)).astype(np.float32), "E"),
        numpy_helper.from_array((rng.standard_normal((H, V)) * 2).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(0.1, np.float32), "tenth"),
    ]
    state = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", H]) for n in ("h", "c")]
    state_out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", H]) for n in ("h_out", "c_out")]
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", V])
    step = helper.make_graph(
        _cell("", "ids", "h", "c", "h_out", "c_out", "logits"),
        "tiny_step",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B"]), *state],
        [logits, *state_out],
        weights,
    )
    _save(step, folder / "step.onnx")

    # prefill: a Scan of the same cell over the time axis of ids (B, T); logits of the last position
    body = helper.make_graph(
        _cell("b_", "x", "hs", "cs", "hs_out", "cs_out", "lg"),
        "body",
        [
            helper.make_tensor_value_info("hs", TensorProto.FLOAT, [1, "B", H]),
            helper.make_tensor_value_info("cs", TensorProto.FLOAT, [1, "B", H]),
            helper.make_tensor_value_info("x", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("hs_out", TensorProto.FLOAT, [1, "B", H]),
            helper.make_tensor_value_info("cs_out", TensorProto.FLOAT, [1, "B", H]),
            helper.make_tensor_value_info("lg", TensorProto.FLOAT, ["B", V]),
        ],
    )
    nodes = [
        helper.make_node(
            "Scan", ["h", "c", "ids"], ["h_out", "c_out", "all"], num_scan_inputs=1, body=body, scan_input_axes=[1]
        ),
        helper.make_node("Slice", ["all", "minus1", "big", "axis0"], ["last"]),
        helper.make_node("Squeeze", ["last", "axis0"], ["logits"]),
    ]
    prefill = helper.make_graph(
        nodes,
        "tiny_prefill",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"]), *state],
        [logits, *state_out],
        weights
        + [
            numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
            numpy_helper.from_array(np.array([1 << 62], np.int64), "big"),
        ],
    )
    _save(prefill, folder / "prefill.onnx")
    for name in ("step.ts", "prefill.ts"):
        (folder / name).write_bytes(b"not torchscript: tiny test model")
    write_manifest(
        folder,
        {
            "kind": "generator",
            "vocab": CHARS,
            "unk_id": 0,
            "num_layers": 1,
            "hidden_size": H,
            "metrics": {"val_bpc": 9.9},
            "created": "test",
        },
    )
    return folder if int8 is None else add_int8(folder, "generator", int8)


def build(root: Path, int8: bool | None = None) -> Path:
    classifier(root / "classifier", int8=int8)
    generator(root / "generator", int8=int8)
    return root
