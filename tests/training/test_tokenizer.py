"""Word tokenizer rules and the vocabulary."""

from __future__ import annotations

import json
import re

from training.classifier.tokenizer import PATTERN, Vocab, length_quantile, tokenize


def test_tokenize_rules():
    text = "Shares in BT rose 3.5% to £1.2bn, the firm's e-mail said: \"Don't sell\" (2,000 staff) $5 €"
    assert tokenize(text) == [
        "shares",
        "in",
        "bt",
        "rose",
        "3.5%",
        "to",
        "£1.2",
        "bn",
        "the",
        "firm's",
        "e-mail",
        "said",
        "don't",
        "sell",
        "2,000",
        "staff",
        "$5",
        "€",
    ]
    assert tokenize("Café déjà-vu") == ["café", "déjà-vu"]
    assert tokenize(text) == re.findall(PATTERN, text.lower())  # what serving does with the manifest


def test_vocab_specials_min_freq_max_size_and_order():
    texts = ["b b b a a c", "a b d"]
    v = Vocab.build(texts, min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "b", "a"]  # by frequency; c and d occur once
    assert Vocab.build(texts, min_freq=1).itos == ["<pad>", "<unk>", "b", "a", "c", "d"]  # ties alphabetical
    assert Vocab.build(texts, min_freq=1, max_size=3).itos == ["<pad>", "<unk>", "b"]
    assert v.encode("A b zebra") == [3, 2, 1]
    assert v.encode("!!!") == [1]  # never empty


def test_encode_keeps_the_first_tokens_so_the_title_survives():
    v = Vocab.build(["title words body " * 3], min_freq=1)
    ids = v.encode("Title words\n" + "body " * 100, max_len=5)
    assert ids == [v.stoi["title"], v.stoi["words"]] + [v.stoi["body"]] * 3


def test_save_load_roundtrip(tmp_path):
    v = Vocab.build(["x y z x"], min_freq=1)
    v.save(tmp_path / "vocab.json")
    doc = json.loads((tmp_path / "vocab.json").read_text())
    assert doc["pattern"] == PATTERN and doc["lowercase"] is True
    assert Vocab.load(tmp_path / "vocab.json").itos == v.itos


def test_length_quantile():
    texts = [" ".join(["w"] * n) for n in range(1, 101)]
    assert length_quantile(texts, 0.95) == 96
