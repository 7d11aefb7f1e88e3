"""Short, bounded runs of ``python -m loadtests.run``: the service under mixed locust traffic (10 s, 5 users), and the
capacity profile (a short capacity measurement, then 10 s at 80% of it open loop + 16 streams); the verdicts."""

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
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "-t",
            "10",
            "-u",
            "5",
            "-r",
            "5",
            "--out",
            str(out),
            "--env",
            f"RNNTEXT_MODELS={exported}",
            "--max-growth-mb",
            "1000",
            *[
                f"--slo={n}=1e9"
                for n in (
                    "/classify",
                    "/classify [8]",
                    "/generate first chunk",
                    "/generate",
                    "/generate (continue)",
                    "/end_session",
                )
            ],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (out / "locust_stats.csv").is_file(), proc.stdout + proc.stderr
    assert (out / "report.html").is_file()
    rows = {r["Name"]: r for r in csv.DictReader(open(out / "locust_stats.csv"))}
    assert int(rows["Aggregated"]["Failure Count"]) == 0, proc.stdout
    assert int(rows["/classify"]["Request Count"]) > 0 and int(rows["/generate first chunk"]["Request Count"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missed"] == [], summary["missed"]
    assert summary["memory"]["baseline_mb"] > 0
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_short_capacity_profile_has_no_failures(exported, tmp_path):
    from loadtests.run import CAPACITY_SLO_MS

    out = tmp_path / "cap"
    # the objectives are for 60 s on an otherwise idle machine; here only failures (and the mechanics) count
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--profile",
            "capacity",
            "-t",
            "10",
            "--capacity-seconds",
            "3",
            "--out",
            str(out),
            "--env",
            f"RNNTEXT_MODELS={exported}",
            "--max-growth-mb",
            "1000",
            "--max-rss-gb",
            "100",
            *[f"--slo={n}=1e9" for n in CAPACITY_SLO_MS],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert (out / "summary.json").is_file(), proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["profile"] == "capacity"
    assert summary["capacity"]["throughput_rps"] > 0 and summary["rate_rps"] > 0
    assert abs(summary["rate_rps"] - 0.8 * summary["capacity"]["throughput_rps"]) < 1e-6
    c, g = summary["classify"], summary["generate"]
    assert c["failures"] == 0 and g["failures"] == 0, (c, g)
    assert c["measured"] > 0 and g["streams_done"] > 0, (c, g)
    assert summary["memory"]["peak_mb"] > 0
    assert summary["missed"] == [], summary["missed"]
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_capacity_check_flags_failures_objectives_and_memory():
    from loadtests.run import CAPACITY_SLO_MS, check_capacity

    ok = {
        "streams": 16,
        "classify": {"failures": 0, "failure_kinds": {}, "measured": 100, "p95_ms": 40.0},
        "generate": {
            "failures": 0,
            "failure_kinds": {},
            "streams_done": 20,
            "first_chunk_p50_ms": 10.0,
            "first_chunk_p95_ms": 30.0,
            "p95_ms": 200.0,
        },
    }
    mem = {"growth_mb": 1.0, "peak_mb": 600.0}
    assert check_capacity(ok, mem, CAPACITY_SLO_MS, 50, 1.5) == []
    slow = {**ok, "classify": {**ok["classify"], "p95_ms": 150.0, "failures": 2, "failure_kinds": {"HTTP 503": 2}}}
    assert check_capacity(slow, mem, CAPACITY_SLO_MS, 50, 1.5) == [
        "/classify: 2 failures {'HTTP 503': 2}",
        "/classify p95: 150 ms > 100 ms",
    ]
    big = {"growth_mb": 60.0, "peak_mb": 1500.0}  # 1,573 MB > 1.5 GB
    assert check_capacity(ok, big, CAPACITY_SLO_MS, 50, 1.5) == [
        "server RSS peaked at 1.57 GB (limit 1.5 GB)",
        "memory grew 60.0 MB after warm-up (limit 50 MB)",
    ]
    idle = {**ok, "generate": {**ok["generate"], "streams_done": 0}}
    assert check_capacity(idle, mem, CAPACITY_SLO_MS, 50, 1.5) == ["/generate: no stream completed after the warm-up"]


def test_slo_check_flags_failures_slow_endpoints_and_memory_growth():
    """The exit code is the point of ``make loadtest``: each kind of miss must be reported (unit level)."""
    from loadtests.run import check, memory_growth

    rows = [
        {"Type": "POST", "Name": "/classify", "Request Count": "100", "Failure Count": "0", "95%": "120"},
        {"Type": "POST", "Name": "/generate", "Request Count": "10", "Failure Count": "2", "95%": "900"},
        {"Type": "", "Name": "Aggregated", "Request Count": "110", "Failure Count": "2", "95%": "200"},
    ]
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
