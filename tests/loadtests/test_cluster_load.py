"""``python -m loadtests.cluster_load`` (locust, one master and two workers, through nginx onto two replicas) in a
short run, and the pure parts of it and of ``loadtests.bench.nginx_hop``: access-log counting, the tables."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

MISSING = [tool for tool in ("nginx", "redis-server") if not shutil.which(tool)]


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.skipif(bool(MISSING), reason=f"deploy/cluster.py needs {' and '.join(MISSING)}, not installed")
def test_short_distributed_locust_run_through_nginx_has_no_failures(tmp_path):
    out = tmp_path / "lt"
    cmd = ["--replicas", "2", "--duration", "10", "--users", "10", "--results-dir", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.cluster_load", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=420
    )
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    for name in ("locust_stats.csv", "locust_failures.csv", "report.html", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0, summary
    assert summary["endpoints"]["/classify"]["requests"] > 0
    served = summary["requests_by_replica"]
    assert sum(served.values()) > 0 and sum(k > 0 for k in served.values()) > 1, served
    assert not (out / "cluster" / "store").exists()  # the registered models are not left behind


def test_replicas_served_counts_the_upstream_that_answered():
    from loadtests.cluster_load import replicas_served

    names = {"127.0.0.1:9001": "replica-1", "127.0.0.1:9002": "replica-2", "127.0.0.1:9003": "replica-3"}
    lines = [
        '127.0.0.1 "POST /classify HTTP/1.1" 200 208 0.014 upstream=127.0.0.1:9001 upstream_status=200',
        '127.0.0.1 "POST /generate HTTP/1.1" 200 900 0.300 upstream=127.0.0.1:9002 upstream_status=200',
        # nginx tried replica-1 (refused), then replica-2 answered
        '127.0.0.1 "POST /classify HTTP/1.1" 200 208 0.020 upstream=127.0.0.1:9001, 127.0.0.1:9002 '
        "upstream_status=502, 200",
        '127.0.0.1 "POST /classify HTTP/1.1" 413 0 0.000 upstream=- upstream_status=-',  # nginx's own answer
        "not an access-log line",
    ]
    assert replicas_served(lines, names) == {
        "nginx_requests": 4,
        "requests_by_replica": {"replica-1": 1, "replica-2": 2, "replica-3": 0, "-": 1},
        "retried_on_another_replica": 1,
    }


def _m(rps: float, clients: int = 32, failures: int = 0) -> dict:
    return {"rps": rps, "mean_ms": 1000 * clients / rps, "p50_ms": 50.0, "p95_ms": 90.0, "failures": failures}


def test_nginx_hop_ratio_cost_and_tables():
    from loadtests.bench.nginx_hop import hop_summary, hop_table, sweep_table

    direct, nginx = [_m(400), _m(440)], [_m(380), _m(400)]  # medians 420 and 390 articles/s
    s = hop_summary(direct, nginx)
    assert s["direct_rps"] == 420 and s["nginx_rps"] == 390
    assert s["ratio"] == pytest.approx(390 / 420)
    # mean latency (32 clients / throughput): medians of 80 & 72.7 ms vs 84.2 & 80 ms
    assert s["hop_ms"] == pytest.approx((80 + 84.2105) / 2 - (80 + 72.7273) / 2, abs=1e-3)
    table = hop_table(direct, nginx, "python -m loadtests.bench.nginx_hop --seconds 10")
    lines = table.splitlines()
    assert lines[0] == "`python -m loadtests.bench.nginx_hop --seconds 10`"
    assert lines[2].startswith("| path | round | articles/s |") and lines[3].startswith("| --- |")
    assert lines[4] == "| direct (replica-1) | 1 | 400 | 80.0 | 50.0 | 90.0 | 0 |"
    assert lines[5].startswith("| through nginx | 1 | 380 |") and lines[7].startswith("| through nginx | 2 | 400 |")
    assert "**0.93**" in table and "**+5.74 ms**" in table

    sweep = sweep_table([(1, _m(200)), (2, _m(380)), (3, _m(500, failures=1))], "cmd")
    rows = sweep.splitlines()[4:]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| 1", "200", "1.00x"],
        ["| 2", "380", "1.90x"],
        ["| 3", "500", "2.50x"],
    ]
    assert rows[2].endswith("| 1 |")
