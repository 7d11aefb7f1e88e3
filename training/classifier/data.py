"""BBC News corpus: reading (folder layout or CSV), duplicate groups, stratified grouped split.

Folder layout: ``<root>/<topic>/<nnn>.txt`` with the title on the first line. CSV (Kaggle variant): columns
``text`` and ``label`` with labels 0-4 = politics, sport, tech, entertainment, business (names also accepted).
Every article has an ``id``: ``topic/nnn.txt`` for the folder layout, ``row<k>`` for the CSV.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from training.common.cli import UserError
from training.common.files import read_text

# index = class id, as in the Kaggle CSV; the folder layout maps topic names onto the same ids
LABELS = ("politics", "sport", "tech", "entertainment", "business")


@dataclass(frozen=True)
class Article:
    id: str
    text: str  # title + "\n" + body
    label: int


def read_folder(root: str | os.PathLike) -> list[Article]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory not found: {root}")
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not topics:
        raise UserError(f"{root}: no topic folders (expected <topic>/<nnn>.txt)")
    unknown = [t for t in topics if t not in LABELS]
    if unknown:
        raise UserError(f"{root}: unknown label folder(s) {unknown}; expected some of {list(LABELS)}")
    articles = [
        Article(f"{t}/{f.name}", read_text(f).strip(), LABELS.index(t))
        for t in topics
        for f in sorted((root / t).glob("*.txt"))
    ]
    articles = [a for a in articles if a.text]
    if not articles:
        raise UserError(f"{root}: no non-empty .txt articles found")
    return articles


def read_csv(path: str | os.PathLike) -> list[Article]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = {"text", "label"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {sorted(missing)} (has {reader.fieldnames})")
        articles = [
            Article(f"row{k}", row["text"].strip(), parse_label(row["label"], f"{path}:{k + 2}"))
            for k, row in enumerate(reader)
        ]
    articles = [a for a in articles if a.text]
    if not articles:
        raise UserError(f"{path}: no rows with text")
    return articles


def parse_label(value: str, where: str) -> int:
    value = value.strip()
    if value.isdigit() and int(value) < len(LABELS):
        return int(value)
    if value.lower() in LABELS:
        return LABELS.index(value.lower())
    raise UserError(f"{where}: unknown label {value!r}; expected 0-{len(LABELS) - 1} or one of {list(LABELS)}")


def read_corpus(data_dir: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None):
    """Articles from a CSV when given, else from the folder layout."""
    return read_csv(csv_path) if csv_path else read_folder(data_dir)


def first_per_class(articles: list[Article], n: int) -> list[Article]:
    """The first ``n`` articles of each class, in corpus order (small deterministic subsets for tests)."""
    seen: dict[int, int] = {}
    out = []
    for a in articles:
        seen[a.label] = seen.get(a.label, 0) + 1
        if seen[a.label] <= n:
            out.append(a)
    return out


def fingerprint(articles: list[Article]) -> str:
    """sha256 over (id, label, text) of every article: identifies the exact corpus a model saw."""
    h = hashlib.sha256()
    for a in sorted(articles, key=lambda a: a.id):
        h.update(f"{a.id}\t{a.label}\t{a.text}\x00".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- duplicates


def normalize(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def duplicate_groups(texts: list[str], threshold: float = 0.9) -> list[int]:
    """Group id per text: exact duplicates (same normalised text) and near duplicates (TF-IDF cosine >
    threshold) joined transitively (union-find), so a group can be kept on one side of a split."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    norm = [normalize(t) for t in texts]
    first: dict[str, int] = {}
    for i, n in enumerate(norm):  # exact: identical after normalisation
        union(i, first.setdefault(hashlib.sha1(n.encode()).hexdigest(), i))
    if len(texts) > 1:  # near: rows are L2-normalised, so X @ X.T is the cosine similarity
        x = TfidfVectorizer(sublinear_tf=True).fit_transform(norm)
        sim = (x @ x.T).tocoo()
        for i, j, s in zip(sim.row, sim.col, sim.data):
            if i < j and s > threshold:
                union(int(i), int(j))
    return [find(i) for i in range(len(texts))]


def duplicate_stats(groups: list[int]) -> dict[str, int]:
    sizes: dict[int, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    multi = [s for s in sizes.values() if s > 1]
    return {
        "articles": len(groups),
        "duplicate_groups": len(multi),
        "articles_in_groups": sum(multi),
        "redundant_articles": sum(multi) - len(multi),
    }


# ---------------------------------------------------------------- split


def groups_by_label(labels: list[int], groups: list[int]) -> dict[int, list[list[int]]]:
    """label -> the member indices of each duplicate group, a group filed under its first member's label."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_label: dict[int, list[list[int]]] = {}
    for g in sorted(members):
        by_label.setdefault(labels[members[g][0]], []).append(members[g])
    return by_label


def split_grouped(
    labels: list[int], groups: list[int], fractions=(0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[int]]:
    """Stratified train/val/test indices; all members of a duplicate group land in the same split.

    Groups are stratified by their first member's label; per label, shuffled groups fill test, then val,
    up to the target article counts, and the rest goes to train.
    """
    if abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions must sum to 1, got {fractions}")
    by_label = groups_by_label(labels, groups)
    rng = random.Random(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        label_groups = by_label[label]
        rng.shuffle(label_groups)
        n = sum(len(m) for m in label_groups)
        want = {"test": round(n * fractions[2]), "val": round(n * fractions[1])}
        for m in label_groups:
            name = next((s for s in ("test", "val") if want[s] >= len(m) / 2), "train")
            if name != "train":
                want[name] -= len(m)
            out[name].extend(m)
    return {k: sorted(v) for k, v in out.items()}


def redraw_val(split: dict, labels: list[int], groups: list[int], frac: float, seed: int) -> dict:
    """The same test set; train + val split again into train and a share ``frac`` of val (grouped, stratified)."""
    rest = sorted(split["train"] + split["val"])
    inner = split_grouped([labels[i] for i in rest], [groups[i] for i in rest], (1 - frac, frac, 0.0), seed)
    return {"train": [rest[j] for j in inner["train"]], "val": [rest[j] for j in inner["val"]], "test": split["test"]}


def kfold_grouped(labels: list[int], groups: list[int], k: int = 5, seed: int = 0) -> list[int]:
    """Fold id (0..k-1) per article: stratified by label, every duplicate group inside one fold.

    Per label (of a group's first member), groups are shuffled, then placed largest first, each into the
    fold that holds the fewest articles of that label so far (ties: fewest articles overall), so class
    counts per fold differ by at most the size of one group.
    """
    if k < 2:
        raise UserError(f"cross-validation needs at least 2 folds, got {k}")
    by_label = groups_by_label(labels, groups)
    if min(sum(len(m) for m in gs) for gs in by_label.values()) < k:
        raise UserError(f"a class has fewer than {k} articles: cannot make {k} stratified folds")
    rng = random.Random(seed)
    fold = [0] * len(labels)
    total = [0] * k
    for label in sorted(by_label):
        label_groups = by_label[label]
        rng.shuffle(label_groups)
        label_groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        count = [0] * k
        for m in label_groups:
            f = min(range(k), key=lambda j: (count[j], total[j]))
            count[f] += len(m)
            total[f] += len(m)
            for i in m:
                fold[i] = f
    return fold
