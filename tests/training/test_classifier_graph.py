"""The hand-built classifier ONNX graph (training/classifier/onnx_graph.py) against PyTorch on random small models,
what ONNX Runtime's RNN ops give beyond each row's length, and the runtime's length buckets."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
import torch

from runtime.classifier import length_buckets
from runtime.providers import make_session
from training.classifier import onnx_graph
from training.classifier.model import ClassifierConfig, Ensemble, TextClassifier, reference_forward
from training.common.quantize import quantize_file

V, C = 50, 5
# batch size -> row lengths: one-token rows, mixed lengths, lengths across MaxPool windows (16 steps), equal rows
SHAPES = {
    1: [1],
    2: [1, 37],
    3: [17, 1, 5],
    5: [16, 33, 2, 9, 40],
    8: [3, 3, 3, 3, 3, 3, 3, 3],
    16: [1 + (7 * i) % 45 for i in range(16)],
    32: [1 + (11 * i) % 50 for i in range(32)],
}
CONFIGS = {
    "bilstm max+mean": {},
    "bilstm 2 layers, all poolings": {"num_layers": 2, "pooling": "last+mean+max"},
    "lstm forward, last": {"bidirectional": False, "pooling": "last"},
    "lstm forward 2 layers, max+mean": {"bidirectional": False, "num_layers": 2},
    "bigru 2 layers, last+max": {"cell": "gru", "num_layers": 2, "pooling": "last+max"},
    "rnn forward, mean+last": {"cell": "rnn", "bidirectional": False, "pooling": "mean+last"},
    "birnn, max": {"cell": "rnn", "pooling": "max"},
}


def config(**kw) -> ClassifierConfig:
    return ClassifierConfig(vocab_size=V, num_classes=C, embed_dim=8, hidden_size=6, **kw)


def batch(lengths: list[int], seed: int = 0, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, max + extra) right-padded with 0, lengths (B,)."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    ids = torch.randint(2, V, (len(lengths), max(lengths) + extra), generator=g)
    ids[torch.arange(ids.size(1)).unsqueeze(0) >= lengths_t.unsqueeze(1)] = 0
    return ids, lengths_t


def session(model, tmp_path, name="model.onnx"):
    path = tmp_path / name
    onnx_graph.save(model, path)
    return make_session(path, "cpu")


def run(sess, ids, lengths) -> np.ndarray:
    return sess.run(["logits"], {"ids": ids.numpy(), "lengths": lengths.numpy()})[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_graph_equals_pytorch_at_many_shapes(name, tmp_path):
    torch.manual_seed(0)
    model = TextClassifier(config(**CONFIGS[name])).eval()
    sess = session(model, tmp_path)
    for seed, (b, lengths) in enumerate(SHAPES.items()):
        assert len(lengths) == b
        for extra in (0, 3):  # wider than the longest row too: the graph must not read past a row's length
            ids, lens = batch(lengths, seed, extra)
            got = run(sess, ids, lens)
            with torch.no_grad():
                assert np.abs(got - reference_forward(model, ids, lens).numpy()).max() < 1e-5, (b, extra)
                assert np.abs(got - model(ids, lens).numpy()).max() < 1e-5, (b, extra)


def test_ensemble_of_two_with_a_temperature(tmp_path):
    torch.manual_seed(1)
    ens = Ensemble([config(num_layers=2), config(num_layers=2)], temperature=0.5).eval()
    sess = session(ens, tmp_path)
    for seed, lengths in enumerate(SHAPES.values()):
        ids, lens = batch(lengths, seed)
        with torch.no_grad():
            assert np.abs(run(sess, ids, lens) - reference_forward(ens, ids, lens).numpy()).max() < 1e-5
    kinds = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert kinds.count("LSTM") == 4 and "ReduceLogSumExp" in kinds  # 2 members x 2 layers


def test_one_rnn_op_per_layer_with_sequence_lens_and_no_reversal():
    torch.manual_seed(0)
    proto = onnx_graph.build(TextClassifier(config(num_layers=2)).eval())
    rnns = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(rnns) == 2 and all(len(n.input) == 5 and n.input[4] for n in rnns)  # sequence_lens is set
    assert {onnx.helper.get_attribute_value(a) for n in rnns for a in n.attribute if a.name == "direction"} == {
        b"bidirectional"
    }
    assert not {"GatherElements", "ReverseSequence", "Loop", "Scan"} & {n.op_type for n in proto.graph.node}
    assert [(i.name, i.type.tensor_type.elem_type) for i in proto.graph.input] == [("ids", 7), ("lengths", 7)]


def test_the_wide_branch_is_left_to_the_tracer():
    model = TextClassifier(config(wide_features=8))
    assert not onnx_graph.supported(model) and not onnx_graph.supported(Ensemble([config(), config(wide_features=8)]))
    with pytest.raises(ValueError, match="wide"):
        onnx_graph.build(model)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_rnn_output_is_zero_beyond_each_length_and_max_pooling_masks_it(precision, tmp_path):
    """Mean pooling sums Y over all T steps: ONNX Runtime must zero-fill Y beyond each row's length (LSTM and the
    int8 DynamicQuantizeLSTM alike). Max pooling must ignore those zeros where a row's true maximum is negative."""
    torch.manual_seed(2)
    model = TextClassifier(config(pooling="max")).eval()
    proto = onnx_graph.build(model)
    y = next(n for n in proto.graph.node if n.op_type == "LSTM").output[0]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None))
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    if precision == "int8":
        quantize_file(path, tmp_path / "model.int8.onnx")
        path = tmp_path / "model.int8.onnx"
        assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(path)).graph.node}
    sess = make_session(path, "cpu")
    ids, lengths = batch([1, 20, 7, 33], seed=3, extra=2)
    logits, ys = sess.run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})  # ys (T, D, B, H)
    beyond = np.arange(ys.shape[0])[:, None] >= lengths.numpy()[None, :]  # (T, B)
    assert np.all(ys.transpose(0, 2, 1, 3)[beyond] == 0) and np.all(ys.transpose(0, 2, 1, 3)[~beyond] != 0)
    with torch.no_grad():
        states = model.token_states(ids, lengths)  # (B, T, 2H), zero beyond each length
        true_max = torch.stack([states[b, : lengths[b]].amax(0) for b in range(len(lengths))])
        ref = model(ids, lengths).numpy()
    assert (true_max < 0).any()  # the zeros of the padding would win there if they were not masked
    assert np.abs(logits - ref).max() < (1e-5 if precision == "fp32" else 0.2)


def test_length_buckets_bound_padding_and_batch_size():
    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 750) for _ in range(rng.randint(0, 40)))
        batch_size, bound = rng.choice([1, 4, 8, 32]), rng.choice([0.0, 0.1, 0.2, 0.5])
        chunks = length_buckets(lengths, batch_size, bound)
        assert [i for r in chunks for i in r] == list(range(len(lengths)))  # every text once, in order
        for r in chunks:
            rows = [lengths[i] for i in r]
            assert 1 <= len(rows) <= batch_size
            assert len(rows) * max(rows) - sum(rows) <= bound * len(rows) * max(rows) + 1e-9
    assert length_buckets([100, 100, 100, 130], 32) == [range(0, 4)]  # 90 / 520 = 0.17 padded
    assert length_buckets([100, 100, 100, 140], 32) == [range(0, 3), range(3, 4)]  # 120 / 560 = 0.21
    assert length_buckets([5] * 9, 4) == [range(0, 4), range(4, 8), range(8, 9)]
