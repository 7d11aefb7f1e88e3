"""The row-wise int8 step graph (training/common/rowint8.py): batch-independent bit for bit, close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from runtime.providers import make_session
from training.common.rowint8 import lstm_weights, quantize_columns, step_graph
from training.generator.export import export_graphs
from training.generator.model import CharConfig, CharRNN

COMMITTED = Path(__file__).resolve().parents[2] / "exported_models" / "generator"


def feeds(rng, n_layers: int, hidden: int, vocab: int, batch: int) -> dict:
    h = (rng.standard_normal((n_layers, batch, hidden)) * 0.5).astype(np.float32)
    return {"ids": rng.integers(0, vocab, batch), "h": h, "c": (h * 2).astype(np.float32)}


def row(feed: dict, b: int) -> dict:
    return {"ids": feed["ids"][b : b + 1], "h": feed["h"][:, b : b + 1], "c": feed["c"][:, b : b + 1]}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random 2-layer generator exported as the export command does, and its row-wise int8 step graph."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gen")
    model = CharRNN(CharConfig(vocab_size=17, embed_dim=8, hidden_size=32, num_layers=2)).eval()
    export_graphs(model, folder)
    onnx.save(step_graph(lstm_weights(folder / "step.onnx")), str(folder / "step.int8.onnx"))
    return folder


def test_quantize_columns_is_symmetric_per_output_column():
    w = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-3.0, 1.5, 0.0]], np.float32)  # (N=3, K=3)
    q, scale = quantize_columns(w)
    assert q.shape == (3, 3) and q.dtype == np.int8  # (K, N)
    assert np.allclose(scale, [1 / 127, 1.0, 3 / 127])  # an all-zero column keeps scale 1
    assert q[:, 0].tolist() == [127, -64, 32] and q[:, 1].tolist() == [0, 0, 0] and q[0, 2] == -127


def test_graph_has_no_per_tensor_dynamic_quantization(small):
    ops = {n.op_type for n in onnx.load(str(small / "step.int8.onnx")).graph.node}
    assert "MatMulInteger" in ops and "ReduceMax" in ops
    assert not ops & {"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "LSTM"}


@pytest.mark.parametrize("folder", ["small", "committed"])
def test_each_row_gets_its_own_numbers_whatever_the_batch_and_threads(folder, small):
    folder = small if folder == "small" else COMMITTED
    w = lstm_weights(folder / "step.onnx")
    L, H, V = len(w["layers"]), w["layers"][0][1].shape[1], w["embed"].shape[0]
    feed = feeds(np.random.default_rng(1), L, H, V, 16)
    together = make_session(folder / "step.int8.onnx", "cpu", 2).run(None, feed)
    alone_sess = make_session(folder / "step.int8.onnx", "cpu", 1)
    for b in range(16):
        alone = alone_sess.run(None, row(feed, b))
        assert np.array_equal(alone[0][0], together[0][b])  # logits (V,)
        assert np.array_equal(alone[1][:, 0], together[1][:, b]) and np.array_equal(alone[2][:, 0], together[2][:, b])


@pytest.mark.parametrize("folder, tol", [("small", 0.05), ("committed", 0.25)])
def test_close_to_the_fp32_step(folder, tol, small):
    folder = small if folder == "small" else COMMITTED
    w = lstm_weights(folder / "step.onnx")
    L, H, V = len(w["layers"]), w["layers"][0][1].shape[1], w["embed"].shape[0]
    feed = feeds(np.random.default_rng(2), L, H, V, 8)
    ref = make_session(folder / "step.onnx", "cpu", 1).run(None, feed)
    got = make_session(folder / "step.int8.onnx", "cpu", 1).run(None, feed)
    diffs = [float(np.abs(a - b).max()) for a, b in zip(got, ref)]
    assert all(0 < d < tol for d in diffs), diffs  # quantized (not equal), but close: committed ~0.11 logits
    assert (got[0].argmax(1) == ref[0].argmax(1)).mean() >= 0.75
