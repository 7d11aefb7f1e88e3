"""``python -m loadtests.api_cost``: its command line (the measurement itself is run by hand, docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_options_and_importing_starts_nothing():
    r = subprocess.run(
        [sys.executable, "-m", "loadtests.api_cost", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    for option in ("--chars", "--score-chars", "--repeats", "--data-dir"):
        assert option in r.stdout
    import loadtests.api_cost as module  # no server, no model: only definitions

    assert module.PROMPT.startswith("Holmes was") and len(module.PROMPT) == 198
