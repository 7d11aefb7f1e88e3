"""``python -m loadtests.run`` (= ``make loadtest``): a bounded, local load test with service-level objectives.

Profiles (``--profile``, ``make loadtest PROFILE=capacity``):

default   mixed users that think between requests (locust, loadtests/locustfile.py):
  1. starts the service (``bentoml serve`` from the project root) on a free 127.0.0.1 port, waits for /readyz;
  2. runs locust headless (default 60 s, 50 users, mixed classify/generate users);
  3. samples the resident memory of the server's whole process tree every second (psutil);
  4. writes locust's CSV and HTML reports plus rss.csv and summary.json under results/loadtest-<UTC stamp>/;
  5. prints a summary and exits 1 when an objective is missed:
     - any failed request,
     - p95 of an endpoint over its threshold (SLO_P95_MS below, or --slo NAME=MS),
     - memory growth after warm-up over --max-growth-mb (default 50 MB): mean RSS of the last 5 s of the run
       minus mean RSS of the 5 s ending at --warmup seconds.

capacity  the service near its measured capacity (asyncio + aiohttp, loadtests/bench/http_load.py):
  1. starts the service as above;
  2. measures /classify capacity: 32 closed-loop clients, one article per request, ~5 s (--capacity-seconds),
     while the --streams generation streams run too (the capacity that is left next to them);
  3. holds --capacity-fraction (0.8) of it as an open-loop arrival rate (evenly spaced requests, each timed from
     when it was due, so a server falling behind shows as latency) plus 16 generation streams of 300 characters
     kept open back to back (--streams), for --duration seconds (after 2 s not counted);
  4. writes summary.json and rss.csv; exits 1 on any failure, a missed CAPACITY_SLO_MS objective (--slo
     overrides them by name), a server process tree over --max-rss-gb (1.5), or memory growth as above.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from loadtests import ROOT
from loadtests.server import ONE_CLIENT_LIMITS, RssSampler, Server, announce

PROFILES = ("default", "capacity")

# p95 thresholds (ms) for the load test's mixed traffic at 50 users on 2 CPU cores, derived from the targets:
# /classify p95 <= 300 ms under load; a request of 8 articles twice that; the first event <= 3x the 50 ms
# first-chunk target; a whole 80-300-character stream at the >= 6,000 chars/s aggregate that 16 streams should
# reach (>= 375 chars/s each, so <= 0.8 s for 300 characters) with 2.5x headroom; /end_session is a store delete.
SLO_P95_MS = {
    "/classify": 300,
    "/classify [8]": 600,
    "/generate first chunk": 150,
    "/generate": 2000,
    "/generate (continue)": 2000,
    "/end_session": 100,
}

# The capacity profile's objective (ms): the only p95 target, /classify p95 <= 100 ms. Time to the first
# chunk is reported but not an objective here: its target (p50 <= 20 ms) is for an otherwise idle server
# (make bench); next to /classify at 80% of its capacity a 200-character prompt's prefill alone waits for CPU.
CAPACITY_STREAM_CHARS = 300
CAPACITY_SLO_MS = {"/classify p95": 100}
MAX_RSS_GB = 1.5  # the server's whole process tree (1.5e9 bytes)


def memory_growth(samples: list[tuple[float, int]], warmup: float, window: float = 5.0) -> dict:
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    base = [r for t, r in samples if warmup - window <= t <= warmup]
    end_t = samples[-1][0] if samples else 0.0
    last = [r for t, r in samples if t >= end_t - window]
    after = [r for t, r in samples if t >= warmup]
    mb = 1 / 2**20
    return {
        "baseline_mb": mean(base) * mb,
        "final_mb": mean(last) * mb,
        "peak_mb": max(after, default=0) * mb,
        "growth_mb": (mean(last) - mean(base)) * mb,
    }


def read_stats(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def check(stats: list[dict], mem: dict, slo: dict[str, float], max_growth_mb: float) -> list[str]:
    missed = []
    for row in stats:
        name, fails = row["Name"], int(row["Failure Count"])
        if fails and name != "Aggregated":  # the per-endpoint rows already name them
            missed.append(f"{row['Type']} {name}: {fails} failures".strip())
        if name in slo and int(row["Request Count"]) and float(row["95%"]) > slo[name]:
            missed.append(f"{name}: p95 {float(row['95%']):.0f} ms > {slo[name]:.0f} ms")
    if not mem["growth_mb"] <= max_growth_mb:
        missed.append(f"memory grew {mem['growth_mb']:.1f} MB after warm-up (limit {max_growth_mb:.0f} MB)")
    return missed


def run_locust(url: str, out: Path, users: int, spawn_rate: float, duration: int, locustfile: Path) -> int:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{duration}s",
        "--stop-timeout",
        "15",
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    with open(out / "locust.log", "wb") as log:
        return subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=duration + 120).returncode


def check_capacity(
    result: dict, mem: dict, slo: dict[str, float], max_growth_mb: float, max_rss_gb: float
) -> list[str]:
    """The capacity profile's verdicts: failures, each CAPACITY_SLO_MS objective, peak RSS, memory growth."""
    c, g = result["classify"], result["generate"]
    missed = []
    for name, part in (("/classify", c), ("/generate", g)):
        if part["failures"]:
            missed.append(f"{name}: {part['failures']} failures {part['failure_kinds']}")
    if not c["measured"]:
        missed.append("/classify: no request completed after the warm-up")
    if result.get("streams") and not g["streams_done"]:
        missed.append("/generate: no stream completed after the warm-up")
    measured = {
        "/classify p95": c["p95_ms"],
        "/generate first chunk p50": g["first_chunk_p50_ms"],
        "/generate first chunk p95": g["first_chunk_p95_ms"],
        "/generate p95": g["p95_ms"],
    }
    for name, limit in slo.items():
        value = measured.get(name)
        if value is not None and value == value and value > limit:
            missed.append(f"{name}: {value:.0f} ms > {limit:.0f} ms")
    if mem.get("peak_mb") is not None and mem["peak_mb"] * 2**20 > max_rss_gb * 1e9:
        missed.append(f"server RSS peaked at {mem['peak_mb'] * 2**20 / 1e9:.2f} GB (limit {max_rss_gb:g} GB)")
    if not mem["growth_mb"] <= max_growth_mb:
        missed.append(f"memory grew {mem['growth_mb']:.1f} MB after warm-up (limit {max_growth_mb:.0f} MB)")
    return missed


def run_capacity(url: str, args, on_load_start=lambda: None) -> dict:
    """Capacity (closed loop, 32 clients), then --capacity-fraction of it open loop + 16 streams."""
    from loadtests.bench import http_load as bh
    from loadtests.texts import articles

    texts = [t for _, t in articles(limit=500, seed=2)]
    if args.rate:
        cap = {"skipped": f"--rate {args.rate:g} given"}
        rate = args.rate
    else:
        print(
            f"capacity: {args.capacity_clients} closed-loop /classify clients for {args.capacity_seconds:g} s, "
            f"next to {args.streams} streams ...",
            flush=True,
        )
        cap = bh.classify_load(
            url,
            texts,
            args.capacity_clients,
            duration=args.capacity_seconds,
            warmup=1.0,
            streams=args.streams,
            stream_chars=CAPACITY_STREAM_CHARS,
        )
        rate = args.capacity_fraction * cap["throughput_rps"]
        print(
            f"capacity {cap['throughput_rps']:.0f} articles/s (p95 {cap['p95_ms']:.0f} ms, {cap['failures']} "
            f"failures, connections per worker {cap['workers']['spread']})",
            flush=True,
        )
    print(
        f"open loop: /classify at {rate:.0f}/s + {args.streams} streams of {CAPACITY_STREAM_CHARS} chars for "
        f"{args.duration} s",
        flush=True,
    )
    load_started_at = on_load_start()
    result = bh.open_loop(
        url, texts, rate, args.duration, n_streams=args.streams, stream_chars=CAPACITY_STREAM_CHARS, warmup=2.0
    )
    result["load_started_at"] = load_started_at
    result["capacity"] = cap
    result["capacity_fraction"] = None if args.rate else args.capacity_fraction
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--profile",
        choices=PROFILES,
        default="default",
        help="default: locust users with think times; capacity: ~80%% of measured /classify capacity "
        "open loop + 16 streams",
    )
    ap.add_argument("-t", "--duration", type=int, default=60, help="seconds of load (default 60)")
    ap.add_argument("-u", "--users", type=int, default=50, help="concurrent locust users (default 50)")
    ap.add_argument("-r", "--spawn-rate", type=float, default=10, help="users started per second (default 10)")
    ap.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of load before the memory baseline (default: a third of the duration)",
    )
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    ap.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="NAME=MS",
        help="override an objective (ms) by name, e.g. /classify=250 or, capacity, /classify p95=150",
    )
    ap.add_argument("--url", help="load an already running server instead of starting one (no memory check)")
    ap.add_argument("--service", help="bentoml service target (default: bentoml's own lookup from the root)")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default results/loadtest-<stamp>)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    cap = ap.add_argument_group("capacity profile")
    cap.add_argument("--capacity-clients", type=int, default=32, help="closed-loop clients measuring capacity (32)")
    cap.add_argument("--capacity-seconds", type=float, default=5.0, help="seconds measuring capacity (5)")
    cap.add_argument("--capacity-fraction", type=float, default=0.8, help="share of capacity offered (0.8)")
    cap.add_argument("--rate", type=float, default=None, help="offer this many /classify requests/s instead")
    cap.add_argument("--streams", type=int, default=16, help="concurrent generation streams (16)")
    cap.add_argument("--max-rss-gb", type=float, default=MAX_RSS_GB, help="peak RSS of the server tree (1.5)")
    args = ap.parse_args(argv)
    if args.duration <= 0 or args.users <= 0 or args.duration > 3600 or args.users > 1000:
        ap.error("--duration must be in 1..3600 and --users in 1..1000")
    slo = dict(CAPACITY_SLO_MS if args.profile == "capacity" else SLO_P95_MS)
    for item in args.slo:
        name, _, ms = item.rpartition("=")
        slo[name] = float(ms)
    # memory baseline: this long after the measured load began (capacity: after its capacity measurement)
    warmup = args.warmup if args.warmup is not None else args.duration / 3
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "results" / f"loadtest-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    server = None
    sampler = None
    t_load = 0.0  # when the measured load began, in the RSS sampler's clock
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            env = {**ONE_CLIENT_LIMITS, **dict(kv.split("=", 1) for kv in args.env)}
            print(announce(env), flush=True)
            server = Server(env=env, service=args.service, log_path=out / "server.log")
            print(f"starting the server on {server.url} (log: {out / 'server.log'}) ...", flush=True)
            print(f"ready after {server.wait_ready():.1f} s", flush=True)
            url = server.url
            sampler = RssSampler(server)
            sampler.start()
        if args.profile == "capacity":
            result = run_capacity(url, args, on_load_start=lambda: time.perf_counter() - sampler.t0 if sampler else 0.0)
            t_load = result.pop("load_started_at", None) or 0.0
        else:
            print(f"locust: {args.users} users for {args.duration} s against {url}", flush=True)
            rc = run_locust(url, out, args.users, args.spawn_rate, args.duration, ROOT / "loadtests" / "locustfile.py")
    finally:
        if sampler:
            sampler.stop()
        if server:
            server.stop()

    samples = sampler.samples if sampler else []
    mem = memory_growth(samples, t_load + warmup) if samples else {"growth_mb": 0.0, "skipped": "external server"}
    if samples:
        with open(out / "rss.csv", "w") as f:
            f.write("seconds,rss_mb\n" + "".join(f"{t:.1f},{r / 2**20:.1f}\n" for t, r in samples))
    if args.profile == "capacity":
        return report_capacity(result, mem, slo, args, out, url, warmup)

    stats_path = out / "locust_stats.csv"
    if not stats_path.is_file():
        print(f"locust wrote no statistics (exit code {rc}); see {out / 'locust.log'}", file=sys.stderr)
        return 2
    stats = read_stats(stats_path)
    missed = check(stats, mem, slo, args.max_growth_mb)

    print_stats(stats, slo)
    print_memory(mem, warmup, args.max_growth_mb)
    summary = {
        "profile": "default",
        "url": url,
        "users": args.users,
        "duration_s": args.duration,
        "slo_p95_ms": slo,
        "memory": mem,
        "missed": missed,
        "locust_exit_code": rc,
        "endpoints": endpoint_summary(stats),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nreports: {out}/ (report.html, locust_stats.csv, rss.csv, summary.json)")
    return verdict(missed)


def print_stats(stats: list[dict], slo: dict[str, float]) -> None:
    """locust's statistics (``read_stats``) as a table, with each endpoint's p95 objective (also cluster_load)."""
    print(
        f"\n{'type':<5} {'endpoint':<28} {'reqs':>6} {'fails':>5} {'rps':>6} {'p50':>6} {'p95':>6} "
        f"{'p99':>6} {'p95 SLO':>8}"
    )
    for row in stats:
        name = row["Name"]
        print(
            f"{row['Type']:<5} {name:<28} {row['Request Count']:>6} {row['Failure Count']:>5} "
            f"{float(row['Requests/s']):6.1f} {row['50%']:>6} {row['95%']:>6} {row['99%']:>6} "
            f"{slo.get(name, ''):>8}"
        )


def endpoint_summary(stats: list[dict]) -> dict:
    """summary.json's ``endpoints``: locust's statistics per name (also cluster_load)."""
    return {
        r["Name"]: {
            "requests": int(r["Request Count"]),
            "failures": int(r["Failure Count"]),
            "rps": float(r["Requests/s"]),
            "p50_ms": float(r["50%"]),
            "p95_ms": float(r["95%"]),
            "p99_ms": float(r["99%"]),
        }
        for r in stats
    }


def print_memory(mem: dict, warmup: float, max_growth_mb: float) -> None:
    if "baseline_mb" in mem:
        print(
            f"\nserver RSS (process tree): {mem['baseline_mb']:.0f} MB after {warmup:.0f} s warm-up, "
            f"{mem['final_mb']:.0f} MB at the end (growth {mem['growth_mb']:+.1f} MB, limit "
            f"{max_growth_mb:.0f} MB), peak {mem['peak_mb']:.0f} MB"
        )


def verdict(missed: list[str]) -> int:
    if missed:
        print("SLO MISSED:\n  " + "\n  ".join(missed))
        return 1
    print("all service-level objectives met")
    return 0


def report_capacity(result: dict, mem: dict, slo: dict, args, out: Path, url: str, warmup: float) -> int:
    missed = check_capacity(result, mem, slo, args.max_growth_mb, args.max_rss_gb)
    c, g = result["classify"], result["generate"]
    print(f"\n{'':<28} {'reqs':>6} {'fails':>5} {'rps':>7} {'p50':>6} {'p95':>6} {'p99':>6}")
    print(
        f"{'/classify (open loop)':<28} {c['measured']:>6} {c['failures']:>5} {c['achieved_rps']:7.1f} "
        f"{c['p50_ms']:6.0f} {c['p95_ms']:6.0f} {c['p99_ms']:6.0f}   offered {result['rate_rps']:.0f}/s "
        f"(client send lag p95 {c['client_send_lag_p95_ms']:.1f} ms)"
    )
    print(
        f"{'/generate first chunk':<28} {g['streams_done']:>6} {g['failures']:>5} {'':>7} "
        f"{g['first_chunk_p50_ms']:6.0f} {g['first_chunk_p95_ms']:6.0f}"
    )
    print(
        f"{'/generate (300 chars)':<28} {g['streams_done']:>6} {g['failures']:>5} {'':>7} "
        f"{g['p50_ms']:6.0f} {g['p95_ms']:6.0f} {g['p99_ms']:6.0f}   aggregate "
        f"{g['aggregate_chars_per_s']:.0f} chars/s, per stream p50 {g['per_stream_chars_per_s_p50']:.0f}"
    )
    print(f"requests per worker: /classify {c['requests_by_worker']}, streams {g['streams_by_worker']}")
    print("objectives: " + ", ".join(f"{k} <= {v:.0f} ms" for k, v in slo.items()))
    print_memory(mem, warmup, args.max_growth_mb)
    summary = {
        "profile": "capacity",
        "url": url,
        "duration_s": args.duration,
        "slo_ms": slo,
        "max_rss_gb": args.max_rss_gb,
        "memory": mem,
        "missed": missed,
        **result,
        "endpoints": {
            "/classify": {
                "requests": c["measured"],
                "failures": c["failures"],
                "rps": c["achieved_rps"],
                "p50_ms": c["p50_ms"],
                "p95_ms": c["p95_ms"],
                "p99_ms": c["p99_ms"],
            },
            "/generate first chunk": {
                "requests": g["streams_done"],
                "failures": g["failures"],
                "p50_ms": g["first_chunk_p50_ms"],
                "p95_ms": g["first_chunk_p95_ms"],
            },
            "/generate": {
                "requests": g["streams_done"],
                "failures": g["failures"],
                "p50_ms": g["p50_ms"],
                "p95_ms": g["p95_ms"],
                "p99_ms": g["p99_ms"],
            },
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nreports: {out}/ (summary.json, rss.csv)")
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
