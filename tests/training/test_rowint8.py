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


# ---------------------------------------------------------------------------------------- the decode graph
@pytest.fixture(scope="module")
def decode(small):
    from training.common.decode_graph import decode_graph

    onnx.save(decode_graph(lstm_weights(small / "step.onnx")), str(small / "decode.int8.onnx"))
    return make_session(small / "decode.int8.onnx", "cpu", 1)


def decode_feed(rng, steps: int, sampling: list[tuple], forced=None) -> dict:
    B = len(sampling)
    h = (rng.standard_normal((2, B, 32)) * 0.5).astype(np.float32)
    return {
        "logits": (rng.standard_normal((B, 17)) * 2).astype(np.float32),
        "h": h,
        "c": h * 2,
        "u": rng.random((steps, B)),
        "forced": np.full((steps, B), -1, np.int64) if forced is None else forced,
        "temperature": np.array([t for t, _, _ in sampling], np.float32),
        "top_k": np.array([k for _, k, _ in sampling], np.int64),
        "top_p": np.array([p for _, _, p in sampling], np.float32),
    }


SAMPLING = [(0.0, 0, 1.0), (0.8, 0, 1.0), (1.3, 3, 1.0), (0.7, 0, 0.5), (1.0, 5, 0.9), (2.0, 1, 1.0), (1.0, 40, 0)]


def test_decode_graph_samples_as_sample_next_and_steps_as_the_step_graph(small, decode):
    """Every row: the id sample_next picks from the same logits and uniform (temperature 0: argmax; top_k used when
    0 < k < V; top_p when 0 < p < 1), then the step graph's numbers for that id, bit for bit."""
    from runtime.generator import sample_next

    step = make_session(small / "step.int8.onnx", "cpu", 1)
    feed = decode_feed(np.random.default_rng(3), 12, SAMPLING)
    ids, logits_seq, h_seq, c_seq = decode.run(None, feed)
    assert ids.shape == (12, 7) and logits_seq.shape == (12, 7, 17) and h_seq.shape == c_seq.shape == (12, 2, 7, 32)
    logits, h, c = feed["logits"], feed["h"], feed["c"]
    for k in range(12):
        want = []
        for b, (t, top_k, top_p) in enumerate(SAMPLING):

            class Uniform:  # the graph's draw for this position
                def random(self, u=feed["u"][k, b]):
                    return u

            want.append(sample_next(logits[b], t, top_k or None, top_p, rng=Uniform()))
        assert ids[k].tolist() == want, k
        logits, h, c = step.run(None, {"ids": np.array(want), "h": h, "c": c})
        assert np.array_equal(logits, logits_seq[k]) and np.array_equal(h, h_seq[k]) and np.array_equal(c, c_seq[k])


def test_decode_graph_is_the_same_for_any_k_and_reads_forced_ids(decode):
    feed = decode_feed(np.random.default_rng(4), 9, SAMPLING[:4])
    feed["forced"][:3, 1] = [4, 5, 6]  # stream 1 reads three ids, then samples
    whole = decode.run(None, feed)
    assert whole[0][:3, 1].tolist() == [4, 5, 6]
    state = {k: feed[k] for k in ("logits", "h", "c")}
    for start, stop in ((0, 1), (1, 5), (5, 9)):  # K = 1, 4, 4
        part = decode.run(None, {**feed, **state, "u": feed["u"][start:stop], "forced": feed["forced"][start:stop]})
        for got, want in zip(part, whole):
            assert np.array_equal(got, want[start:stop])
        state = {"logits": part[1][-1], "h": part[2][-1], "c": part[3][-1]}


def test_one_row_alone_or_in_a_batch_gives_the_same_ids_and_numbers(decode):
    feed = decode_feed(np.random.default_rng(5), 6, SAMPLING)
    together = decode.run(None, feed)
    for b in range(len(SAMPLING)):
        one = {k: (v[:, b : b + 1] if k in ("h", "c", "u", "forced") else v[b : b + 1]) for k, v in feed.items()}
        alone = decode.run(None, one)
        assert np.array_equal(alone[0][:, 0], together[0][:, b])
        assert np.array_equal(alone[2][:, :, 0], together[2][:, :, b])
