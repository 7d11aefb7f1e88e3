"""``python -m loadtests.bench.nginx_hop``: what nginx in front of the replicas (deploy/cluster.py) costs /classify.

Hop (default): one ``Cluster`` of --replicas (1); /classify throughput (articles/s, one article per request,
--clients closed-loop clients, each on its own keep-alive connection: loadtests/bench/http_load.py) directly
against replica-1's port and through nginx, alternating in the same run (direct, nginx, direct, nginx: --rounds
2), each --seconds (10) after a 2 s warm-up. Prints the nginx/direct throughput ratio and the hop's cost per
request (mean latency through nginx minus direct; closed loop: mean = clients / throughput). With more than one
replica nginx spreads the load over all of them, so the ratio is no longer the hop alone.

Sweep (``--replicas-sweep 1,2,3``): a new cluster for each count, /classify throughput through nginx each.

Both print a markdown table for docs/benchmarks.md with the command line. Per-client limits are lifted
(loadtests/server.py ONE_CLIENT_LIMITS). Exits 1 on any failed request. Needs redis-server and nginx.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from deploy.cluster import Cluster
from loadtests.server import ONE_CLIENT_LIMITS, announce, free_port

WARMUP_S = 2.0


def measure(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    """One closed-loop /classify measurement: articles/s, mean/p50/p95 latency (ms), failures."""
    from loadtests.bench.http_load import classify_load

    r = classify_load(url, texts, clients, duration=seconds, warmup=WARMUP_S)
    rps = r["throughput_rps"]
    return {
        "rps": rps,
        "mean_ms": 1000 * clients / rps if rps > 0 else float("inf"),
        "p50_ms": r["p50_ms"],
        "p95_ms": r["p95_ms"],
        "requests": r["requests"],
        "failures": r["failures"],
    }


def hop_summary(direct: list[dict], nginx: list[dict]) -> dict:
    """Medians over the rounds of each path; ``ratio``: nginx/direct throughput; ``hop_ms``: the mean latency a
    request gains through nginx."""
    d_rps, n_rps = (statistics.median(m["rps"] for m in ms) for ms in (direct, nginx))
    d_ms, n_ms = (statistics.median(m["mean_ms"] for m in ms) for ms in (direct, nginx))
    return {"direct_rps": d_rps, "nginx_rps": n_rps, "ratio": n_rps / d_rps, "hop_ms": n_ms - d_ms}


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fig(m: dict) -> list[str]:
    return [f"{m['rps']:.0f}", f"{m['mean_ms']:.1f}", f"{m['p50_ms']:.1f}", f"{m['p95_ms']:.1f}", str(m["failures"])]


def hop_table(direct: list[dict], nginx: list[dict], command: str) -> str:
    s = hop_summary(direct, nginx)
    out = [f"`{command}`", "", _row(["path", "round", "articles/s", "mean ms", "p50 ms", "p95 ms", "failures"])]
    out.append(_row(["---", "---:", "---:", "---:", "---:", "---:", "---:"]))
    for k, (d, n) in enumerate(zip(direct, nginx), 1):
        out += [_row(["direct (replica-1)", k, *_fig(d)]), _row(["through nginx", k, *_fig(n)])]
    out += [
        "",
        f"nginx/direct throughput: **{s['ratio']:.2f}** ({s['nginx_rps']:.0f} vs {s['direct_rps']:.0f} articles/s, "
        f"medians); the hop's cost per request: **{s['hop_ms']:+.2f} ms** mean latency",
    ]
    return "\n".join(out)


def sweep_table(rows: list[tuple[int, dict]], command: str) -> str:
    """``rows``: (replicas, measurement through nginx); the scaling is against the first row."""
    base = rows[0][1]["rps"]
    head = ["replicas", "articles/s", f"vs {rows[0][0]}", "mean ms", "p50 ms", "p95 ms", "failures"]
    out = [f"`{command}`", "", _row(head)]
    out.append(_row(["---:", "---:", "---:", "---:", "---:", "---:", "---:"]))
    for n, m in rows:
        f = _fig(m)
        out.append(_row([n, f[0], f"{m['rps'] / base:.2f}x", *f[1:]]))
    return "\n".join(out)


@contextlib.contextmanager
def cluster(replicas: int):
    """A started Cluster in a temporary folder (logs, Redis, the model store: all removed after), stopped after."""
    with tempfile.TemporaryDirectory(prefix="rnntext-nginx-hop-") as run:
        print(f"starting {replicas} replica(s) behind nginx ...", file=sys.stderr, flush=True)
        with Cluster(replicas, free_port(), run_dir=Path(run), env=dict(ONE_CLIENT_LIMITS)) as c:
            yield c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.bench.nginx_hop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--replicas", type=int, default=1, help="replicas behind nginx for the hop (default 1)")
    ap.add_argument("-c", "--clients", type=int, default=32, help="closed-loop clients (default 32)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds each, after 2 s warm-up (10)")
    ap.add_argument("--rounds", type=int, default=2, help="direct/nginx pairs, alternating (default 2)")
    ap.add_argument("--replicas-sweep", metavar="N,N,...", help="instead: throughput through nginx per count")
    args = ap.parse_args(argv)
    sweep = [int(x) for x in args.replicas_sweep.split(",") if x] if args.replicas_sweep else []
    if min([args.replicas, args.clients, args.rounds, *sweep]) < 1 or args.seconds <= 0:
        ap.error("--replicas, --clients, --rounds, the sweep's counts and --seconds must be positive")
    from loadtests.bench.run import machine
    from loadtests.texts import articles

    texts = [t for _, t in articles(limit=500, seed=2)]
    common = f"--clients {args.clients} --seconds {args.seconds:g}"
    hw = machine()
    print(announce(ONE_CLIENT_LIMITS), file=sys.stderr)
    if sweep:
        rows = []
        for n in sweep:
            with cluster(n) as c:
                rows.append((n, measure(c.url, texts, args.clients, args.seconds)))
            print(f"{n} replica(s): {rows[-1][1]['rps']:.0f} articles/s", file=sys.stderr, flush=True)
        table = sweep_table(
            rows, f"python -m loadtests.bench.nginx_hop --replicas-sweep {args.replicas_sweep} {common}"
        )
        failures = sum(m["failures"] for _, m in rows)
    else:
        direct, nginx = [], []
        with cluster(args.replicas) as c:
            for k in range(args.rounds):
                for label, url, into in (("direct", c.replica_url(0), direct), ("nginx", c.url, nginx)):
                    into.append(measure(url, texts, args.clients, args.seconds))
                    print(f"round {k + 1} {label}: {into[-1]['rps']:.0f} articles/s", file=sys.stderr, flush=True)
        command = f"python -m loadtests.bench.nginx_hop --replicas {args.replicas} {common} --rounds {args.rounds}"
        table = hop_table(direct, nginx, command)
        failures = sum(m["failures"] for m in direct + nginx)
    print(f"\n{hw['cpu']}, {hw['usable_cores']} usable cores; /classify, one article per request\n\n{table}")
    if failures:
        print(f"\n{failures} failed requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
