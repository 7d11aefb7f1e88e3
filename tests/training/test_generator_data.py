"""Character data: vocabulary, unknown characters, contiguous split, parallel streams and BPTT chunks."""

from __future__ import annotations

import numpy as np
import pytest

from training.generator.data import UNK, CharVocab, chunks, split_text, streams


def test_vocab_roundtrip_and_unknowns():
    vocab = CharVocab.build("abcabc x", min_count=2)  # ' ' and 'x' are seen once: <unk>
    assert vocab.chars == (UNK, "a", "b", "c") and vocab.unk_id == 0
    ids = vocab.encode("cab")
    assert ids.dtype == np.int64 and ids.tolist() == [3, 1, 2]
    assert vocab.decode(ids) == "cab"
    assert vocab.encode("a€z").tolist() == [1, 0, 0]  # never seen -> unk, not an error
    assert CharVocab.from_json(vocab.to_json()) == vocab


def test_split_is_contiguous_tail():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    train, val = split_text(text, 0.05)
    assert train + val == text and len(val) == 50
    with pytest.raises(ValueError):
        split_text(text, 0.0)


def test_streams_are_consecutive_slices_and_chunks_shift_by_one():
    ids = np.arange(103)
    data = streams(ids, 4)  # 103 // 4 = 25 per stream, 3 dropped
    assert data.shape == (4, 25)
    assert data[1, 0] == 25 and np.all(np.diff(data, axis=1) == 1)  # each row continues the text
    assert streams(ids, 4, offset=2)[0, 0] == 2
    pairs = list(chunks(data, 10))
    assert [x.shape for x, _ in pairs] == [(4, 10), (4, 10), (4, 4)]  # 24 targets per stream
    for x, y in pairs:
        assert np.array_equal(y, x + 1)
    with pytest.raises(ValueError):
        streams(ids[:5], 4)
