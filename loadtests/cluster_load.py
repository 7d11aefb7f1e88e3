"""``python -m loadtests.cluster_load`` (= ``make loadtest-cluster``): the default load test's mixed locust users
through nginx onto N replicas (deploy/cluster.py), locust in distributed mode.

  1. starts a ``Cluster`` (redis-server, --replicas x ``bentoml serve``, nginx on a free 127.0.0.1 port) with the
     per-client limits lifted (loadtests/server.py ONE_CLIENT_LIMITS: nginx forwards every user as 127.0.0.1);
  2. runs one locust master (no browser needed: --autostart, see run_distributed; --users mixed classify/generate
     users of loadtests/locustfile.py for --duration seconds) and --workers locust workers, against nginx's URL;
  3. counts which replica served each request from nginx's access log (``upstream=<addr>``), and the requests
     nginx logged in all (locust's count, unless reports from the workers were lost);
  4. writes locust's CSV and HTML reports and summary.json under results/loadtest-cluster-<UTC stamp>/ (or
     --results-dir), with the cluster's logs under its cluster/ folder;
  5. prints a summary and exits 1 on any failed request or on a replica that served nothing. The p95 column
     shows the single-server objectives (loadtests/run.py SLO_P95_MS) for comparison; they are not checked here.

The cluster and the locust processes are stopped at the end, whatever happens. Needs redis-server and nginx.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from deploy.cluster import Cluster, Proc
from loadtests import ROOT
from loadtests.run import SLO_P95_MS, check, endpoint_summary, print_stats, read_stats, verdict
from loadtests.server import ONE_CLIENT_LIMITS, announce, free_port

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
AUTOQUIT_S = 5  # the master's wait after the workers stopped: > locust's 3 s worker report interval
UPSTREAM_RE = re.compile(r"upstream=([^\s,]+(?:, [^\s,]+)*)")


def replicas_served(lines, names: dict[str, str]) -> dict:
    """Requests per replica from nginx access-log lines (``upstream=<addr>[, <addr>...]``: the last address is the
    one that answered; more than one means nginx tried another replica first). ``names``: address -> replica."""
    served: Counter = Counter()
    retried = 0
    for line in lines:
        m = UPSTREAM_RE.search(line)
        if not m:
            continue
        addrs = [a.strip() for a in m.group(1).split(",")]
        retried += len(addrs) > 1
        served[names.get(addrs[-1], addrs[-1])] += 1
    total = sum(served.values())
    ordered = {n: served.pop(n, 0) for n in names.values()}
    return {
        "nginx_requests": total,
        "requests_by_replica": {**ordered, **served},
        "retried_on_another_replica": retried,
    }


def locust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *args]


def run_distributed(url: str, out: Path, users: int, spawn_rate: float, duration: int, workers: int) -> int:
    """One locust master and ``workers`` worker processes against ``url``: the master's exit code.

    The master runs with --autostart --autoquit rather than --headless: at the end of a headless run the master
    sends "quit" and exits 0.5 s later, while each worker sends its last statistics only once its users have
    stopped (up to --stop-timeout), so the last seconds' requests (and failures) were missing from the report
    (369 counted of the 404 nginx logged, in a 15 s run). With --autostart the master stops the workers, waits
    for them, and quits AUTOQUIT_S later, after their next statistics report (every 3 s). Its web UI listens on
    a free 127.0.0.1 port meanwhile."""
    port = free_port()
    master = Proc(
        locust_cmd(
            "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--expect-workers", str(workers), "--expect-workers-max-wait", "60",
            "--autostart", "--autoquit", str(AUTOQUIT_S), "--web-host", "127.0.0.1", "--web-port", str(free_port()),
            "--host", url, "-u", str(users), "-r", str(spawn_rate), "-t", f"{duration}s",
            "--stop-timeout", "15", "--csv", str(out / "locust"), "--html", str(out / "report.html"),
            "--only-summary",
        ),
        out / "locust-master.log",
    )  # fmt: skip
    procs = [master] + [
        Proc(
            locust_cmd("--worker", "--master-host", "127.0.0.1", "--master-port", str(port)),
            out / f"locust-worker-{k + 1}.log",
        )
        for k in range(workers)
    ]
    try:
        for p in procs:
            p.start()
        try:
            return master.proc.wait(timeout=duration + 150)
        except subprocess.TimeoutExpired:
            print(f"locust master still running {duration + 150} s after its start: stopped", file=sys.stderr)
            return 2
    finally:
        for p in procs:  # the workers quit with the master; whatever is left is stopped
            p.stop(timeout=15)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.cluster_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--replicas", type=int, default=3, help="bentoml serve replicas behind nginx (default 3)")
    ap.add_argument("-t", "--duration", type=int, default=60, help="seconds of load (default 60)")
    ap.add_argument("-u", "--users", type=int, default=50, help="locust users, as the default profile (50)")
    ap.add_argument("-r", "--spawn-rate", type=float, default=10, help="users started per second (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="locust worker processes (default 2)")
    ap.add_argument(
        "--results-dir", type=Path, default=None, help="report folder (default results/loadtest-cluster-<stamp>)"
    )
    args = ap.parse_args(argv)
    if not (1 <= args.replicas <= 16 and 1 <= args.duration <= 3600 and 1 <= args.users <= 1000):
        ap.error("--replicas must be in 1..16, --duration in 1..3600 and --users in 1..1000")
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    for tool in ("nginx", "redis-server"):
        if not shutil.which(tool):
            print(f"{tool} is not installed (deploy/cluster.py needs it; Debian: apt-get install {tool})")
            return 2
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = args.results_dir or ROOT / "results" / f"loadtest-cluster-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    env = dict(ONE_CLIENT_LIMITS)
    print(announce(env), flush=True)
    cluster = Cluster(args.replicas, free_port(), run_dir=out / "cluster", env=env)
    rc = None
    try:
        print(f"starting redis-server, {args.replicas} replica(s) and nginx (logs: {cluster.run}) ...", flush=True)
        cluster.start()
        print(
            f"locust: {args.users} users for {args.duration} s against {cluster.url}, 1 master + "
            f"{args.workers} workers",
            flush=True,
        )
        rc = run_distributed(cluster.url, out, args.users, args.spawn_rate, args.duration, args.workers)
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    finally:
        print("stopping the cluster (replicas drain, then nginx and redis-server) ...", flush=True)
        cluster.stop()  # nginx's graceful stop also flushes its buffered access log
        shutil.rmtree(cluster.run / "store", ignore_errors=True)  # the registered models (tens of MB)

    stats_path = out / "locust_stats.csv"
    if rc is None or not stats_path.is_file():
        print(f"no locust statistics (exit code {rc}); see {out}/locust-*.log and {cluster.run}/", file=sys.stderr)
        return 2
    stats = read_stats(stats_path)
    access = cluster.nginx_dir / "access.log"
    names = {f"127.0.0.1:{p}": n for p, n in zip(cluster.ports, cluster.names)}
    served = replicas_served(access.read_text().splitlines() if access.is_file() else [], names)
    missed = check(stats, {"growth_mb": 0.0}, {}, 0.0)  # failures only (no latency objective, no memory check)
    missed += [f"{n} served no request" for n in cluster.names if not served["requests_by_replica"][n]]

    print_stats(stats, SLO_P95_MS)
    rows = [r for r in stats if r["Name"] != "Aggregated"]
    http = [r for r in rows if r["Type"] != "SSE"]  # not the "/generate first chunk" timings of the same streams
    by_replica = ", ".join(f"{n} {k}" for n, k in served["requests_by_replica"].items())
    print(
        f"\nnginx logged {served['nginx_requests']} requests; per replica: {by_replica}; "
        f"retried on another replica: {served['retried_on_another_replica']}"
    )
    summary = {
        "profile": "cluster",
        "url": cluster.url,
        "replicas": args.replicas,
        "locust_workers": args.workers,
        "users": args.users,
        "duration_s": args.duration,
        "requests": sum(int(r["Request Count"]) for r in http),
        "failures": sum(int(r["Failure Count"]) for r in rows),
        "rps": sum(float(r["Requests/s"]) for r in http),
        **served,
        "missed": missed,
        "locust_exit_code": rc,
        "endpoints": endpoint_summary(stats),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"total: {summary['requests']} HTTP requests, {summary['failures']} failures, {summary['rps']:.1f} requests/s"
        f"\nreports: {out}/ (report.html, locust_stats.csv, summary.json; cluster logs in cluster/)"
    )
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
