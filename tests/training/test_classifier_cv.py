"""Cross-validation (cv-classifier), calibration helpers and the error analysis of the committed classifier."""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter

import numpy as np
import pytest

from tests.conftest import training_cli as cli
from training.classifier import data as bbc
from training.classifier.calibration import ece, ensemble_logits, fit_temperature, nll, softmax
from training.classifier.cv import fit_stack, fold_splits, setting_defaults, t_interval, unit_done, unit_path
from training.common.cli import UserError
from training.common.files import read_json
from training.common.study import parse_fixed


def _groups_fixture():
    # 5 classes x 20 articles; some duplicate groups of 2-4 articles inside a class
    labels = [k for k in range(5) for _ in range(20)]
    groups = list(range(100))
    for start, size in ((0, 4), (10, 2), (25, 3), (40, 2), (61, 4), (90, 3)):
        for i in range(start, start + size):
            groups[i] = start
    return labels, groups


def test_kfold_keeps_groups_whole_and_stratifies():
    labels, groups = _groups_fixture()
    fold = bbc.kfold_grouped(labels, groups, k=5, seed=0)
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    for g in set(groups):  # every duplicate group in one fold
        assert len({fold[i] for i in range(100) if groups[i] == g}) == 1
    for label in range(5):  # 20 articles per class over 5 folds: 4 each, +- the largest group (4)
        counts = Counter(fold[i] for i in range(100) if labels[i] == label)
        assert sum(counts.values()) == 20 and max(counts.values()) - min(counts.values()) <= 4
    assert bbc.kfold_grouped(labels, groups, 5, seed=0) == fold  # deterministic
    assert bbc.kfold_grouped(labels, groups, 5, seed=1) != fold
    with pytest.raises(UserError, match="at least 2 folds"):
        bbc.kfold_grouped(labels, groups, k=1)
    with pytest.raises(UserError, match="fewer than 30 articles"):
        bbc.kfold_grouped(labels, groups, k=30)


def test_fold_splits_partition_every_fold():
    labels, groups = _groups_fixture()
    splits = fold_splits(labels, groups, k=4, seed=0, val_frac=0.1)
    tested = sorted(i for s in splits for i in s["test"])
    assert tested == list(range(100))  # every article tested exactly once
    for s in splits:
        parts = [set(s["train"]), set(s["val"]), set(s["test"])]
        assert sum(map(len, parts)) == 100 and len(set().union(*parts)) == 100
        assert 5 <= len(s["val"]) <= 15  # about 10% of the 75 non-test articles per class, whole groups
        for g in set(groups):
            assert sum(any(groups[i] == g for i in p) for p in parts) == 1


def test_a_val_seed_redraws_only_the_validation_part():
    labels, groups = _groups_fixture()
    base = fold_splits(labels, groups, k=4, seed=0, val_frac=0.1)
    assert fold_splits(labels, groups, k=4, seed=0, val_frac=0.1, val_seed=-1) == base
    members = [fold_splits(labels, groups, k=4, seed=0, val_frac=0.1, val_seed=v) for v in range(3)]
    for f in range(4):
        rest = sorted(base[f]["train"] + base[f]["val"])
        vals = [set(m[f]["val"]) for m in members]
        assert len({frozenset(v) for v in vals + [set(base[f]["val"])]}) == 4  # every member holds out its own part
        for m in members:
            assert m[f]["test"] == base[f]["test"] and sorted(m[f]["train"] + m[f]["val"]) == rest
            assert 5 <= len(m[f]["val"]) <= 15
            for g in set(groups):  # duplicate groups stay whole
                assert sum(any(groups[i] == g for i in m[f][p]) for p in ("train", "val", "test")) == 1
        # three members together train on more of the four folds than any one of them
        assert len(set().union(*(set(m[f]["train"]) for m in members))) > max(len(m[f]["train"]) for m in members)


def test_kfold_on_the_real_corpus(bbc_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        articles = bbc.read_folder(bbc_dir)
    labels = [a.label for a in articles]
    groups = bbc.duplicate_groups([a.text for a in articles])
    fold = bbc.kfold_grouped(labels, groups, 5, 0)
    sizes = Counter(fold)
    assert sum(sizes.values()) == len(articles) and max(sizes.values()) - min(sizes.values()) <= 5
    for g in set(groups):
        assert len({fold[i] for i, gi in enumerate(groups) if gi == g}) == 1


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 5))
    y = np.array([rng.choice(5, p=p) for p in softmax(z / 2.0)])  # labels drawn at T = 2
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.05)
    assert nll(z / t, y) < nll(z, y)
    assert ece(softmax(z / 2.0), y) < 0.02 < 0.1 < ece(softmax(z), y)  # overconfident at T = 1


def test_ece_of_known_cases():
    y = np.array([0, 0, 1, 1])
    sure_right = np.eye(2)[y]
    assert ece(sure_right, y) == 0.0
    half = np.full((4, 2), 0.5)
    assert ece(half, y) == pytest.approx(0.0)  # 50% confident, 50% right (argmax picks class 0)
    sure_wrong = np.eye(2)[1 - y]
    assert ece(sure_wrong, y) == pytest.approx(1.0)


def test_ensemble_logits_average_probabilities():
    rng = np.random.default_rng(1)
    members = [rng.normal(size=(7, 5)) for _ in range(3)]
    np.testing.assert_allclose(softmax(ensemble_logits(members)), np.mean([softmax(m) for m in members], 0), atol=1e-9)


def test_stack_weights_follow_the_better_input():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    onehot = np.eye(5)[y]
    good = 4 * onehot + rng.normal(0, 1, (400, 5))  # right most of the time
    noise = rng.normal(0, 1, (400, 5))  # unrelated to y
    a, b = fit_stack(noise, good, y)  # the neural logits are noise here, the "svm" scores informative
    assert a < 0.2 < 1 < b
    a2, b2 = fit_stack(good * 3, noise, y)
    assert b2 < 0.2 and a2 > 0.2
    assert nll(a * np.log(softmax(noise)) + b * good, y) < nll(np.log(softmax(noise)) + good, y)


def test_a_saved_unit_survives_a_setting_added_later_at_its_default(tmp_path):
    d = setting_defaults()
    cfg = {part: dict(d[part]) for part in ("data", "model", "train")}
    saved = {part: {k: v for k, v in cfg[part].items() if not k.startswith("wide")} for part in cfg}
    path = unit_path(tmp_path, "c", 0, 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"config": saved}))  # trained before the wide_* settings existed
    assert unit_done(tmp_path, "c", 0, 0, cfg)
    changed = {**cfg, "model": {**cfg["model"], "wide_features": 100}}
    with pytest.raises(UserError, match="another config"):
        unit_done(tmp_path, "c", 0, 0, changed)
    assert not unit_done(tmp_path, "c", 1, 0, cfg)


def test_without_lead_drops_only_the_first_paragraph():
    from training.classifier.analyze import without_lead

    text = "Title here\n\nThe lead names the topic.\n\nSecond paragraph.\n \nThird."
    assert without_lead(text) == "Title here\n\nSecond paragraph.\n\nThird."
    assert without_lead("Title\n\nOnly a lead.") == "Title\n\nOnly a lead."  # nothing would be left to read


def test_t_interval_matches_the_textbook():
    mean, lo, hi = t_interval([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    assert mean == 3 and lo == pytest.approx(3 - half, abs=1e-6) and hi == pytest.approx(3 + half, abs=1e-6)


def test_parse_fixed_values():
    assert parse_fixed(["cell=rnn", "bidirectional=false", "max_len=300", "lr=0.001", "x=True"]) == {
        "cell": "rnn",
        "bidirectional": False,
        "max_len": 300,
        "lr": 0.001,
        "x": True,
    }
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_fixed(["cell"])


def test_search_rejects_an_unknown_fixed_parameter(bbc_dir, tmp_path):
    proc = cli(
        "search-classifier",
        "--data-dir",
        str(bbc_dir),
        "--limit",
        "6",
        "--fix",
        "colour=blue",
        "--storage",
        str(tmp_path / "s.db"),
    )
    assert proc.returncode == 2 and "error: --fix: ['colour'] not in the search space" in proc.stderr


@pytest.mark.slow
def test_cv_command_reports_every_model_on_identical_folds_and_resumes(bbc_dir, tmp_path):
    cands = tmp_path / "cands.json"
    cands.write_text(
        json.dumps(
            {
                "bilstm": {"seeds": 2},
                "rnn": {"model": {"cell": "rnn", "bidirectional": False}},
                "vv": {"seeds": 3, "vary_val": True, "ensembles": [2, 3], "data": {"vocab_from": "train+val"}},
                "wide": {"model": {"wide_features": 300}, "train": {"wide_lr_scale": 10}, "stack": True},
                "glove": {"data": {"embed_init": "glove", "glove_words": 500}, "model": {"embed_dim": 50}},
            }
        )
    )
    run = tmp_path / "cv"
    args = [
        "cv-classifier",
        "--data-dir",
        str(bbc_dir),
        "--limit",
        "12",
        "--folds",
        "3",
        "--epochs",
        "2",
        "--max-len",
        "60",
        "--embed-dim",
        "16",
        "--hidden-size",
        "8",
        "--candidates",
        str(cands),
        "--run-dir",
        str(run),
        "--no-progress",
    ]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = json.loads(proc.stdout.strip().splitlines()[-1])
    assert head["folds"] == 3
    assert sorted(head["accuracy"]) == [
        "bilstm",
        "bilstm-ens2",
        "glove",
        "rnn",
        "svm",
        "vv",
        "vv-ens2",
        "vv-ens3",
        "wide",
        "wide+svm",
    ]
    assert len(list((run / "units").glob("*.json"))) == 3 * (2 + 1 + 3 + 1 + 1)
    assert [read_json(run / "units" / f"vv-f0-s{s}.json")["config"]["data"]["val_seed"] for s in range(3)] == [0, 1, 2]
    assert read_json(run / "units" / "bilstm-f0-s1.json")["config"]["data"]["val_seed"] == -1
    cv = read_json(run / "cv.json")
    assert cv["n"] == 60 and sum(cv["fold_sizes"]) == 60 and len(cv["fold_sizes"]) == 3
    for name, m in cv["models"].items():
        assert len(m["folds"]) == 3
        assert m["accuracy_mean"] == pytest.approx(np.mean([f["accuracy"] for f in m["folds"]]))
        # pooled accuracy counts every article once: the fold accuracies weighted by fold size
        pooled = sum(f["accuracy"] * s for f, s in zip(m["folds"], cv["fold_sizes"])) / 60
        assert m["pooled_accuracy"] == pytest.approx(pooled)
        if name != "svm":
            assert 0 <= m["ece_mean"] <= 1
            assert name.endswith("+svm") or m["temperature_mean"] > 0  # a stack's weights do the scaling
    for name in ("bilstm", "wide", "glove"):  # out-of-fold calibration over all articles, and its diagram
        m = cv["models"][name]
        assert 0 <= m["oof_ece_scaled"] <= 1 and 0 <= m["oof_ece"] <= 1
        assert (run / f"reliability-{name}.png").stat().st_size > 10_000
    pair = cv["paired_accuracy"]["wide - svm"]
    assert len(pair["only_a_right_ids"]) == pair["only_a_right"]
    assert len(pair["only_b_right_ids"]) == pair["only_b_right"]
    for f in cv["models"]["wide+svm"]["folds"]:  # the stack's two weights, fitted on the inner validation set
        assert len(f["stack_weights"]) == 2 and min(f["stack_weights"]) >= 0
    pair = cv["paired_accuracy"]["bilstm - svm"]
    models = cv["models"]
    diffs = [a["accuracy"] - b["accuracy"] for a, b in zip(models["bilstm"]["folds"], models["svm"]["folds"])]
    assert pair["accuracy_diffs"] == pytest.approx(diffs) and pair["ci95"][0] <= pair["mean"] <= pair["ci95"][1]
    assert (run / "cv.png").stat().st_size > 10_000
    config = read_json(run / "config.json")
    tested = [i for ids in config["test_ids"] for i in ids]
    assert len(tested) == len(set(tested)) == 60  # every article in exactly one test fold
    again = cli(*args)  # resumes: every unit is on disk, nothing is trained again
    assert again.returncode == 0 and "0 training runs to do" in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["accuracy"] == head["accuracy"]
    # a saved unit is never reused for another config or other folds
    cands.write_text(json.dumps({"bilstm": {"seeds": 2, "model": {"hidden_size": 12}}}))
    changed = cli(*args)
    assert changed.returncode == 2 and "was trained with another config for 'bilstm'" in changed.stderr
    other = cli(*[a if a != "12" else "11" for a in args])  # --limit 11: another corpus, other folds
    assert other.returncode == 2 and "holds folds of another corpus or fold seed" in other.stderr


def test_cv_rejects_an_unknown_candidate(bbc_dir):
    proc = cli("cv-classifier", "--data-dir", str(bbc_dir), "--only", "transformer")
    assert proc.returncode == 2 and "error: --only: unknown candidate(s) ['transformer']" in proc.stderr


@pytest.mark.slow
def test_error_analysis_of_the_committed_model(bbc_dir, exported, tmp_path):
    proc = cli("analyze-classifier", "--models", str(exported), "--data-dir", str(bbc_dir), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = json.loads(proc.stdout.strip().splitlines()[-1])
    doc = read_json(tmp_path / head["out"].split("/")[-1] / "analysis.json")
    manifest = read_json(exported / "classifier" / "manifest.json")
    assert doc["n"] == manifest["metrics"]["test_n"]
    assert doc["accuracy"] == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-9)  # fp32, same split
    assert len(doc["errors"]) == round((1 - doc["accuracy"]) * doc["n"])
    for e in doc["errors"]:
        assert e["top2"][0][0] != e["true"] and e["top2"][0][1] >= e["top2"][1][1] and e["title"]
    assert set(doc["per_class"]) == set(bbc.LABELS) and all(0 <= v["recall"] <= 1 for v in doc["per_class"].values())
    r = doc["robustness"]
    assert list(r) == ["original", "headline", "first30", "first50", "lower", "upper", "no_lead", "append2000"]
    assert r["original"]["model"] == doc["accuracy"]
    for case in ("lower", "upper"):  # both tokenizers lowercase: case cannot matter to either model
        assert r[case]["model"] == r["original"]["model"] and r[case]["svm"] == r["original"]["svm"]
    assert r["headline"]["mean_tokens"] < r["first30"]["mean_tokens"] <= 30 < r["first50"]["mean_tokens"] <= 50
    assert r["headline"]["mean_tokens"] < r["no_lead"]["mean_tokens"] < r["original"]["mean_tokens"] - 20
    assert r["append2000"]["mean_tokens"] == pytest.approx(r["original"]["mean_tokens"] + 2000, abs=1)
    assert 0 <= doc["calibration"]["ece"] <= 1 and sum(b["n"] for b in doc["calibration"]["bins"]) == doc["n"]
    assert 0 < doc["speed"]["ms_per_article_batch4"] < 1000 and doc["speed"]["articles"] == doc["n"]
    out = tmp_path / head["out"].split("/")[-1]
    assert (out / "robustness.png").stat().st_size > 10_000 and (out / "reliability.png").stat().st_size > 10_000
