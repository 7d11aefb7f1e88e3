"""search-generator: a two-trial study on a small text, through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from training.common.files import read_text


@pytest.mark.slow
def test_two_trial_study(canon_path, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text(read_text(canon_path)[200_000:260_000], encoding="utf-8")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "search-generator",
            "--text",
            str(small),
            "--trial-minutes",
            "0.02",
            "--eval-chars",
            "5000",
            "--n-trials",
            "2",
            "--pruner",
            "none",
            "--storage",
            str(tmp_path / "s.db"),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "train it in full: python -m training train-generator --hidden-size" in r.stdout
    (study,) = tmp_path.glob("search-generator-*/study.json")
    doc = json.loads(study.read_text())
    assert [t["state"] for t in doc["trials"]] == ["COMPLETE", "COMPLETE"]
    assert all(0 < t["value"] < 8 for t in doc["trials"])  # bits per char, below log2(vocab)
    assert doc["best_value"] == min(t["value"] for t in doc["trials"])
