"""``python -m loadtests.soak``: its pure parts with exact numbers, and one short real run (marker slow)."""

from __future__ import annotations

import json
import random

import pytest

from loadtests.soak import MB, MIX, fit_slope, gauge, main, memory_verdict, plan_shares, traffic_plan


def test_slope_of_linear_data_is_exact():
    xs = list(range(0, 100_001, 500))
    assert abs(fit_slope(xs, [300 * 1024 + 5.0 * x for x in xs]) - 5.0) < 1e-9
    assert fit_slope(xs, [7.0] * len(xs)) == 0.0
    assert fit_slope([3, 3, 3], [1, 2, 3]) == 0.0  # no spread in x: no slope rather than a division by zero


def test_slope_of_flat_noisy_data_is_about_zero():
    rng = random.Random(0)
    xs = list(range(0, 100_001, 500))
    ys = [300 * 1024 + rng.gauss(0, 512) for _ in xs]  # +-0.5 MB of noise around a flat 300 MB
    assert abs(fit_slope(xs, ys)) < 0.01


def samples(kb_per_request: float, n: int = 10_000, every: int = 100, base_mb: float = 300.0):
    return [(k, k / 100, int(base_mb * MB + kb_per_request * 1024 * k)) for k in range(0, n + 1, every)]


def test_memory_verdict_of_a_leak_and_of_flat_memory():
    leak = memory_verdict(samples(5.0), 10_000, 0.1, max_growth_mb=20, max_kb_per_request=0.5)
    # post-warm-up samples at 1000..10000 (91): windows of round(0.05 * 91) = 5 samples, means at 1200 and 9800
    assert leak["samples_used"] == 91 and leak["window_samples"] == 5 and leak["warmup_requests"] == 1000
    assert leak["growth_mb"] == pytest.approx(5.0 * (9800 - 1200) / 1024, abs=1e-5)  # 42.0 MB
    assert leak["slope_kb_per_request"] == pytest.approx(5.0, abs=1e-6)
    assert leak["baseline_mb"] == pytest.approx(300 + 5.0 * 1200 / 1024, abs=1e-5)
    assert leak["peak_mb"] == pytest.approx(300 + 5.0 * 10_000 / 1024, abs=1e-5)
    assert leak["missed"] == [
        "memory grew 42.0 MB after warm-up (limit 20 MB)",
        "memory slope 5.000 KB/request (limit 0.5)",
    ]
    flat = memory_verdict(samples(0.0), 10_000, 0.1, 20, 0.5)
    assert flat["growth_mb"] == 0 and flat["slope_kb_per_request"] == 0 and flat["missed"] == []
    # a slope under its limit can still grow past the MB limit over a long run, and the other way round;
    # 181 samples from 10,000 on: windows of 9, centred at 12,000 and 98,000 -> 0.3 * 86,000 / 1024 = 25.2 MB
    assert memory_verdict(samples(0.3, n=100_000, every=500), 100_000, 0.1, 20, 0.5)["missed"] == [
        "memory grew 25.2 MB after warm-up (limit 20 MB)"
    ]
    assert memory_verdict(samples(1.0, n=2_000), 2_000, 0.1, 20, 0.5)["missed"] == [
        "memory slope 1.000 KB/request (limit 0.5)"
    ]
    assert memory_verdict(samples(0.0, n=1_000, every=500), 1_000, 0.1, 20, 0.5) is None  # 2 samples: unusable


def test_traffic_plan_counts_requests_exactly_and_has_the_mix():
    plan = traffic_plan(100_000, seed=0)
    assert sum(MIX[kind][1] for kind, _ in plan) == 100_000
    shares = plan_shares(plan)
    for kind, (share, _) in MIX.items():
        assert abs(shares[kind] - share) < 0.15 * share + 0.002, (kind, shares[kind], share)
    assert abs(sum(s for s, _ in MIX.values()) - 1) < 1e-12
    assert {k for k, _ in plan} == set(MIX)


def test_traffic_plan_is_deterministic_per_seed():
    assert traffic_plan(5_000, seed=3) == traffic_plan(5_000, seed=3)
    assert traffic_plan(5_000, seed=3) != traffic_plan(5_000, seed=4)
    for n in (1, 2, 3, 7, 1001):  # a session flow (3 requests) never overshoots the count
        assert sum(MIX[kind][1] for kind, _ in traffic_plan(n, seed=1)) == n


def test_gauge_sums_label_sets_and_reports_absence():
    text = (
        "# HELP rnntext_active_streams Generation streams running now\n"
        "rnntext_active_streams 0.0\nrnntext_active_streams_extra 9\n"
        'rnntext_active_sessions{pid="1"} 2.0\nrnntext_active_sessions{pid="2"} 3.0\n'
    )
    assert gauge(text, "rnntext_active_streams") == 0.0
    assert gauge(text, "rnntext_active_sessions") == 5.0
    assert gauge(text, "rnntext_missing") is None


def test_gauge_reads_what_prometheus_client_writes():
    """The exposition text of a real registry: TYPE lines, a label value holding '}' and spaces, a counter's
    _total and _created samples, histogram buckets; the gauge's label sets summed, other metrics left alone."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    reg = CollectorRegistry()
    g = Gauge("rnntext_active_streams", "Generation streams running now", ["worker", "route"], registry=reg)
    g.labels("1", "/generate").set(4)
    g.labels("2", "a } b {c}").set(2.5)
    g.labels("3", "/x").set(-1)
    Counter("rnntext_requests", "Requests", ["route"], registry=reg).labels("/classify").inc(7)
    h = Histogram("rnntext_latency_seconds", "Latency", buckets=(0.1, 1.0), registry=reg)
    for v in (0.05, 0.5, 3.0):
        h.observe(v)
    text = generate_latest(reg).decode()
    assert 'route="a } b {c}"' in text  # the case a one-line regex over {...} reads wrong
    assert gauge(text, "rnntext_active_streams") == 5.5
    assert gauge(text, "rnntext_requests_total") == 7.0
    assert gauge(text, "rnntext_latency_seconds_count") == 3.0
    assert gauge(text, "rnntext_latency_seconds_sum") == 3.55
    assert gauge(text, "rnntext_latency_seconds_bucket") == 1 + 2 + 3  # le=0.1, le=1.0, le=+Inf
    assert gauge(text, "rnntext_latency_seconds") is None and gauge(text, "rnntext_requests") is None


@pytest.mark.slow
def test_short_soak_run_has_no_failures_and_flat_memory(tmp_path, capsys):
    """30,000 requests (~70 s on 2 cores), judged after the first half. The server's RSS rises by ~18 MB over
    its first ~15,000 requests and then stays flat (a 100,000-request run with the leak fixed: +0.8 MB and
    0.005 KB/request after 10,000), so 10,000 requests judged from the 1,000th measured 1.3 KB/request on a
    server without the leak, while a leaking one measures ~5.5 KB/request from the start."""
    out = tmp_path / "soak"
    # the slope limit is ten times below the ~5 KB/request that BentoML's per-request leak costs
    rc = main(
        [
            "--requests",
            "30000",
            "--warmup-frac",
            "0.5",
            "--sample-every",
            "200",
            "--max-kb-per-request",
            "0.5",
            "--max-growth-mb",
            "20",
            "--out",
            str(out),
            "--env",
            "RNNTEXT_THREADS=1",
            "--env",
            "ORT_INTRA_OP_THREADS=1",
        ]
    )
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "rss.png").stat().st_size > 0 and (out / "server.log").is_file()
    lines = (out / "rss.csv").read_text().splitlines()
    assert lines[0] == "requests,seconds,rss_mb" and len(lines) > 140
    assert summary["requests"] == 30_000 and summary["failures"] == {}, summary["failures"]
    assert summary["active_streams_after"] == 0
    assert set(summary["counts"]) >= {
        "GET /livez",
        "POST /classify",
        "POST /end_session",
        "POST /generate (abandoned)",
        "POST /classify (bad input)",
    }
    assert summary["memory"]["slope_kb_per_request"] < 0.5, printed[-1500:]
    assert summary["memory"]["growth_mb"] < 20, printed[-1500:]
    assert rc == 0, printed[-1500:]
