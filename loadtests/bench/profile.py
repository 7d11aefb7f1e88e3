"""``python -m loadtests.bench.profile``: where a saturated /classify server spends its CPU, sampled with py-spy.

Starts the service with its default settings (per-client limits lifted, as the benchmarks do), drives /classify with
the benchmark's closed-loop client (``--clients`` connections, one real article per request) and meanwhile runs
``py-spy record --subprocesses`` on the whole process tree for ``--seconds``. Prints the share of samples by phase
(buckets of frames below) and the top functions by own time; writes the raw collapsed stacks and a JSON summary under
``--out``. py-spy is in the test extra; it needs ptrace permission (root, or ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtests import ROOT
from loadtests.bench import http_load
from loadtests.server import ONE_CLIENT_LIMITS, Server
from loadtests.texts import articles

# a sample's phase: the first of these found in its stack, innermost frame first (py-spy prints "func (file:line)")
PHASES = (
    ("model call (ONNX Runtime run)", ("run (onnxruntime",)),
    ("tokenizing + encoding", ("tokenize (runtime/classifier.py", "encode (runtime/classifier.py")),
    ("rest of the runtime (padding, softmax, results)", ("runtime/classifier.py",)),
    ("adaptive batching (BentoML dispatcher)", ("dispatcher.py",)),
    ("validation and serialization (pydantic, JSON)", ("pydantic", "json", "serialization", "io_descriptors")),
    ("HTTP and ASGI (uvicorn, starlette, h11/httptools)", ("uvicorn", "starlette", "h11", "httptools")),
    ("service code (serving/)", ("serving/",)),
    ("event loop and threads (asyncio, threading, idle waits)", ("asyncio", "threading", "selectors", "concurrent")),
)


def phase_of(stack: str) -> str:
    frames = stack.split(";")[::-1]  # innermost first
    for frame in frames:
        for name, keys in PHASES:
            if any(k in frame for k in keys):
                return name
    return "other"


def summarize(raw: Path) -> dict:
    """Collapsed stacks ("frame;frame;... count" per line) -> shares by phase and the top own-time functions."""
    phases, own, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        total += n
        phases[phase_of(stack)] += n
        own[stack.split(";")[-1]] += n
    return {
        "samples": total,
        "phases": {k: v / total for k, v in phases.most_common()} if total else {},
        "top_own": [(k, v / total) for k, v in own.most_common(15)] if total else [],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="py-spy sampling time (the load runs 4 s longer)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--out", help="output folder (default results/profile-<UTC stamp>)")
    args = ap.parse_args(argv)
    out = Path(args.out or ROOT / "results" / f"profile-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    texts = [t for _, t in articles(limit=500, seed=2)]
    server = Server(env=dict(ONE_CLIENT_LIMITS))
    try:
        server.wait_ready()
        http_load.classify_load(server.url, texts, args.clients, duration=2.0, warmup=1.0)  # warm every worker
        result: dict = {}
        load = threading.Thread(
            target=lambda: result.update(
                http_load.classify_load(server.url, texts, args.clients, duration=args.seconds + 2, warmup=1.0)
            )
        )
        load.start()
        time.sleep(1.5)
        raw = out / "classify.collapsed.txt"
        cmd = ["py-spy", "record", "--pid", str(server.proc.pid), "--subprocesses", "--nonblocking"]
        cmd += ["--rate", str(args.rate), "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(raw)]
        spy = subprocess.run(cmd, capture_output=True, text=True)
        load.join()
        if spy.returncode != 0 or not raw.is_file():
            print(f"py-spy failed ({spy.returncode}): {spy.stderr[-2000:]}", file=sys.stderr)
            return 1
    finally:
        server.stop()
    summary = {"clients": args.clients, "seconds": args.seconds, "load": result, **summarize(raw)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rps, p95 = result.get("throughput_rps", 0.0), result.get("p95_ms", 0.0)
    print(f"/classify at {args.clients} clients: {rps:.0f} req/s, p95 {p95:.1f} ms while sampled")
    print(f"{summary['samples']} samples over the server's processes; share by phase:")
    for name, share in summary["phases"].items():
        print(f"  {share:6.1%}  {name}")
    print("top functions by own time:")
    for frame, share in summary["top_own"]:
        print(f"  {share:6.1%}  {frame}")
    print(f"raw stacks and summary: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
