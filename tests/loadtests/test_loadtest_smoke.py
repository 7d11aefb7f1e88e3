"""A short, bounded run of ``python -m loadtests.run``: the service under mixed locust traffic (10 s, 5 users)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_short_locust_run_has_no_failures(exported, tmp_path):
    assert (exported / "classifier" / "manifest.json").is_file()
    out = tmp_path / "lt"
    # p95 thresholds and the memory check are for the 60 s / 50-user run; here only failures count
    proc = subprocess.run([sys.executable, "-m", "loadtests.run", "-t", "10", "-u", "5", "-r", "5",
                           "--out", str(out), "--env", f"RNNTEXT_MODELS={exported}",
                           "--max-growth-mb", "1000", *[f"--slo={n}=1e9" for n in
                                                        ("/classify", "/classify [8]", "/generate first chunk",
                                                         "/generate", "/generate (continue)", "/end_session")]],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (out / "locust_stats.csv").is_file(), proc.stdout + proc.stderr
    assert (out / "report.html").is_file()
    rows = {r["Name"]: r for r in csv.DictReader(open(out / "locust_stats.csv"))}
    assert int(rows["Aggregated"]["Failure Count"]) == 0, proc.stdout
    assert int(rows["/classify"]["Request Count"]) > 0 and int(rows["/generate first chunk"]["Request Count"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missed"] == [], summary["missed"]
    assert summary["memory"]["baseline_mb"] > 0
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_slo_check_flags_failures_slow_endpoints_and_memory_growth():
    """The exit code is the point of ``make loadtest``: each kind of miss must be reported (unit level)."""
    from loadtests.run import check, memory_growth

    rows = [{"Type": "POST", "Name": "/classify", "Request Count": "100", "Failure Count": "0", "95%": "120"},
            {"Type": "POST", "Name": "/generate", "Request Count": "10", "Failure Count": "2", "95%": "900"},
            {"Type": "", "Name": "Aggregated", "Request Count": "110", "Failure Count": "2", "95%": "200"}]
    flat = [(float(t), 400 * 2**20) for t in range(60)]
    assert memory_growth(flat, warmup=20)["growth_mb"] == 0
    assert check(rows[:1], memory_growth(flat, 20), {"/classify": 150}, 50) == []
    missed = check(rows, memory_growth(flat, 20), {"/classify": 100, "/generate": 1000}, 50)
    assert missed == ["/classify: p95 120 ms > 100 ms", "POST /generate: 2 failures"]
    # +1 MB per second after warm-up: 40 s later the last 5 s average ~37 MB above the baseline window
    leak = [(float(t), (400 + max(0, t - 20)) * 2**20) for t in range(61)]
    g = memory_growth(leak, warmup=20)
    assert 35 < g["growth_mb"] < 40
    assert check(rows[:1], g, {}, 30) == [f"memory grew {g['growth_mb']:.1f} MB after warm-up (limit 30 MB)"]
    assert check(rows[:1], g, {}, 50) == []
