"""hidden-states: the hand-stepped traces match the models, the text features, and what the quick run finds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import run_lab
from training.common.files import read_json
from training.labs.committed import char_states, load_classifier, trace_lstm
from training.labs.hidden_states import FEATURES, loo_centroid_accuracy, pca, text_features


def test_trace_lstm_gives_what_nn_lstm_gives_and_the_cell_states_behind_it():
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(5, 7, num_layers=2, batch_first=True)
    x = torch.randn(3, 11, 5)
    with torch.no_grad():
        h, c = trace_lstm(rnn, x)  # (L, B, T, H)
        out, (h_n, c_n) = rnn(x)
    assert h.shape == c.shape == (2, 3, 11, 7)
    torch.testing.assert_close(h[-1], out, atol=1e-6, rtol=0)  # the top layer's outputs
    torch.testing.assert_close(h[:, :, -1], h_n, atol=1e-6, rtol=0)  # every layer's last h and c
    torch.testing.assert_close(c[:, :, -1], c_n, atol=1e-6, rtol=0)


def test_char_states_lays_out_layer_then_h_or_c_then_unit():
    from training.generator.model import CharConfig, CharRNN

    torch.manual_seed(0)
    model = CharRNN(CharConfig(vocab_size=9, embed_dim=4, hidden_size=6, num_layers=2)).eval()
    ids = np.random.default_rng(0).integers(0, 9, (2, 13))
    states, check = char_states(model, ids, torch.device("cpu"))
    assert states.shape == (2, 13, 2 * 2 * 6) and check < 1e-6
    with torch.no_grad():
        h, c = trace_lstm(model.rnn, model.embed(torch.from_numpy(ids)))
    np.testing.assert_allclose(states[..., 6:12], c[0].numpy())  # L1.c
    np.testing.assert_allclose(states[..., 12:18], h[1].numpy())  # L2.h


def test_token_states_pooled_through_the_head_are_the_committed_classifiers_logits():
    from training.classifier.model import pool
    from training.classifier.train import collate

    model, man = load_classifier()
    c = model.config
    ids, lengths = collate([[5, 9, 30, 2, 7, 100, 44], [12, 3], [8, 8, 8, 600]])
    with torch.no_grad():
        out = model.token_states(ids, lengths)
        logits = model.head(pool(out, lengths, c.poolings, c.hidden_size, c.bidirectional))
        torch.testing.assert_close(logits, model(ids, lengths), atol=1e-5, rtol=0)
    assert out.shape == (3, 7, 2 * c.hidden_size) and float(out[1, 2:].abs().max()) == 0.0  # padding stays zero


def test_text_features_follow_quotes_lines_and_words():
    text = 'a "b c"\n\n "d\n\ne'
    f = dict(zip(FEATURES, text_features(text).T))
    # after each of: a, space, ", b, space, c, ", newline, newline, space, ", d, newline, newline, e
    assert f["inside_quotes"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0]  # paragraph break resets
    assert f["chars_since_newline"].tolist() == [1, 2, 3, 4, 5, 6, 7, 0, 0, 1, 2, 3, 0, 0, 1]
    assert f["next_is_newline"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0]
    assert f["word_boundary"].tolist() == [0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0]


def test_pca_and_leave_one_out_centroids():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) * np.array([10, 3, 0.1, 0.1, 0.1])
    coords, var = pca(x)
    assert coords.shape == (300, 2) and 0.98 < var.sum() < 1 and var[0] > var[1]
    y = np.repeat([0, 1, 2], 20)
    blobs = rng.normal(size=(60, 2)) + np.repeat([[0, 0], [10, 0], [0, 10]], 20, axis=0)
    assert loo_centroid_accuracy(blobs, y) == 1.0
    assert loo_centroid_accuracy(rng.normal(size=(60, 2)), y) < 0.7  # no structure: about chance


@pytest.mark.slow
def test_quick_run_finds_the_ring_the_topic_clusters_and_a_quote_unit(tmp_path, data_dir):
    h = run_lab("hidden-states", tmp_path, data_dir=data_dir)

    # sine: the first two PCs hold the state and decode the phase (measured 0.98 of variance, R^2 0.99)
    assert h["sine_pc12_var"] > 0.7 and h["sine_phase_r2"] > 0.8
    # classifier: 50 held-out articles form topic clusters in 2-D (measured silhouette 0.55, centroid 0.90)
    assert h["clf_silhouette_2d"] > 0.3 and h["clf_centroid_acc_2d"] > 0.7
    # char model: a unit tracks "inside quotes" (measured |r| 0.86), which no unit of the untrained copy does
    # (0.20); the line position is tracked better than chance units do (0.71 vs 0.45)
    assert abs(h["char_r_inside_quotes"]) > 0.6
    assert abs(h["char_r_inside_quotes"]) > abs(h["char_r_inside_quotes_untrained"]) + 0.3
    assert abs(h["char_r_chars_since_newline"]) > abs(h["char_r_chars_since_newline_untrained"]) + 0.1
    folder = tmp_path / "hidden-states"
    m = read_json(folder / "metrics.json")
    assert m["classifier"]["n"] == 50 and m["classifier"]["logit_check"] < 1e-4
    assert m["char"]["trained"]["check_max_abs_diff"] < 1e-4
    for plot in m["plots"]:
        assert 10_000 < (folder / plot).stat().st_size < 200_000, plot
