"""Corpus reading, duplicate groups and the grouped stratified split."""

from __future__ import annotations

import collections

import pytest

from training.classifier import data as bbc
from training.common.cli import UserError

LONG = " ".join(f"word{i}" for i in range(200))


def write_corpus(root, files: dict[str, bytes | str]):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def test_read_folder_ids_labels_and_latin1_warning(tmp_path):
    write_corpus(
        tmp_path,
        {
            "sport/001.txt": "Title one\n\nBody.",
            "tech/002.txt": "Gadget\n\nBody.",
            "tech/003.txt": "Caf\xe9 title\n\nBody".encode("latin-1"),
        },
    )
    with pytest.warns(UserWarning, match="003.txt: not valid UTF-8"):
        arts = bbc.read_folder(tmp_path)
    assert [(a.id, a.label) for a in arts] == [("sport/001.txt", 1), ("tech/002.txt", 2), ("tech/003.txt", 2)]
    assert arts[0].text.split("\n")[0] == "Title one"
    assert arts[2].text.startswith("Café title")


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no topic folders"),
        ({"sport/empty.txt": "  "}, "no non-empty"),
        ({"weather/001.txt": "x"}, "unknown label folder"),
    ],
)
def test_read_folder_errors(tmp_path, files, message):
    write_corpus(tmp_path, files)
    with pytest.raises(UserError, match=message):
        bbc.read_folder(tmp_path)
    with pytest.raises(UserError, match="not found"):
        bbc.read_folder(tmp_path / "missing")


def test_read_csv_numeric_and_named_labels(tmp_path):
    p = tmp_path / "bbc.csv"
    p.write_text('text,label\n"Vote, today",0\nGoal,1\nChip,tech\nFilm,3\nShares,4\n')
    arts = bbc.read_csv(p)
    assert [a.label for a in arts] == [0, 1, 2, 3, 4]
    assert arts[0].text == "Vote, today" and arts[0].id == "row0"


@pytest.mark.parametrize(
    "content, message",
    [
        ("body,topic\nx,0\n", r"missing column\(s\) \['label', 'text'\]"),
        ("text,label\nx,7\n", "bbc.csv:2: unknown label '7'"),
        ("text,label\nx,weather\n", "unknown label 'weather'"),
    ],
)
def test_read_csv_errors(tmp_path, content, message):
    p = tmp_path / "bbc.csv"
    p.write_text(content)
    with pytest.raises(UserError, match=message):
        bbc.read_csv(p)


def test_duplicate_groups_exact_and_near():
    texts = [
        LONG,
        "  " + LONG.upper() + " !",
        LONG.replace("word100", "other"),  # exact, near duplicates
        "a completely different article about football",
        "another one about the budget",
    ]
    g = bbc.duplicate_groups(texts)
    assert g[0] == g[1] == g[2]
    assert len({g[0], g[3], g[4]}) == 3
    assert bbc.duplicate_stats(g) == {
        "articles": 5,
        "duplicate_groups": 1,
        "articles_in_groups": 3,
        "redundant_articles": 2,
    }


def test_split_keeps_groups_together_and_is_stratified():
    labels = [i % 5 for i in range(200)]
    groups = list(range(200))
    for i in range(0, 40, 5):  # eight groups of two articles of the same label
        groups[i + 5] = groups[i]
    s = bbc.split_grouped(labels, groups, seed=3)
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(200))
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (160, 20, 20)
    side = {i: name for name, idx in s.items() for i in idx}
    assert all(side[i] == side[i + 5] for i in range(0, 40, 5))
    assert collections.Counter(labels[i] for i in s["test"]) == {k: 4 for k in range(5)}
    assert s == bbc.split_grouped(labels, groups, seed=3)
    assert s != bbc.split_grouped(labels, groups, seed=4)


def test_real_corpus_duplicates_and_split(bbc_dir):
    with pytest.warns(UserWarning, match="sport/199.txt"):
        arts = bbc.read_folder(bbc_dir)
    assert len(arts) == 1989
    groups = bbc.duplicate_groups([a.text for a in arts])
    stats = bbc.duplicate_stats(groups)
    assert stats["duplicate_groups"] > 50  # the BBC corpus has ~100+ duplicate groups
    split = bbc.split_grouped([a.label for a in arts], groups)
    assert [len(split[k]) for k in ("train", "val", "test")] == [1591, 199, 199]
    side = {i: name for name, idx in split.items() for i in idx}
    members = collections.defaultdict(set)
    for i, g in enumerate(groups):
        members[g].add(side[i])
    assert all(len(sides) == 1 for sides in members.values())
