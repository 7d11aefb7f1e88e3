"""In-process ceilings: what the service's own runtimes do with no HTTP in between, measured in the same run.

``classify_ceiling``: one process per usable core (``runtime.hardware.usable_cores``), each with its own
``ClassifierRuntime`` (same models folder, provider and precision as the server, 1 intra-op thread), all
started together and each calling ``predict_proba`` on batches of ``batch`` (32 = the service's
``max_batch_size``) real articles back to back for a fixed duration, tokenizing included. The total
articles/s is what the HTTP /classify throughput is compared with (the notes' "in-process ceiling").

``stream_in_process``: one generation stream (sample + step per character) with the server's precision.

No torch. ``python -m loadtests.bench.ceiling`` prints the classifier ceiling on its own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

from loadtests.server import tree_total
from runtime.hardware import usable_cores
from runtime.manifest import model_dir


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants, 0.0 once it is gone."""
    return float(tree_total(pid, lambda p: sum(p.cpu_times()[:2])))


def wait_idle(pid: int, max_cores: float = 0.05, window: float = 0.5, windows: int = 2, timeout: float = 60.0) -> float:
    """Wait until a process tree has used under ``max_cores`` cores for ``windows`` windows in a row: a server
    is ready once one worker answers /readyz, while the others may still be warming up. Returns the wait (s)."""
    t0 = time.perf_counter()
    quiet = 0
    last = tree_cpu_seconds(pid)
    while quiet < windows and time.perf_counter() - t0 < timeout:
        time.sleep(window)
        now = tree_cpu_seconds(pid)
        quiet = quiet + 1 if now - last < max_cores * window else 0
        last = now
    return time.perf_counter() - t0


def _classify_worker(
    folder: str,
    provider: str,
    threads: int,
    precision: str | None,
    texts: list[str],
    offset: int,
    batch: int,
    duration: float,
    barrier,
    results,
) -> None:
    from runtime.classifier import ClassifierRuntime

    try:
        rt = ClassifierRuntime(folder, provider, threads, precision=precision or "auto")
        for k in range(3):  # first runs of each shape allocate and pick kernels
            rt.predict_proba([texts[(offset + k * batch + j) % len(texts)] for j in range(batch)])
    except BaseException as exc:
        barrier.abort()
        results.put({"error": repr(exc)})
        raise
    barrier.wait()
    n, i = 0, offset + 3 * batch
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        rt.predict_proba([texts[(i + j) % len(texts)] for j in range(batch)])
        n += batch
        i += batch
    elapsed = time.perf_counter() - t0
    results.put(
        {
            "articles": n,
            "seconds": elapsed,
            "articles_per_s": n / elapsed,
            "precision": rt.precision,
            "providers": rt.session.get_providers(),
        }
    )


def classify_ceiling(
    models: str | os.PathLike,
    texts: list[str],
    precision: str | None = None,
    provider: str = "cpu",
    processes: int | None = None,
    batch: int = 32,
    duration: float = 5.0,
    threads: int = 1,
) -> dict:
    """Total articles/s of ``processes`` (default: usable cores) processes classifying ``texts`` in batches of
    ``batch`` with the service's ClassifierRuntime, all at once for ``duration`` seconds."""
    folder = str(model_dir(models, "classifier"))
    n = processes or usable_cores()
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no ONNX Runtime state forked
    barrier, results = ctx.Barrier(n, timeout=120), ctx.Queue()
    procs = [
        ctx.Process(
            target=_classify_worker,
            daemon=True,
            args=(
                folder,
                provider,
                threads,
                precision,
                list(texts),
                k * len(texts) // n,
                batch,
                duration,
                barrier,
                results,
            ),
        )
        for k in range(n)
    ]
    for p in procs:
        p.start()
    try:
        rows = [results.get(timeout=duration + 180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(f"in-process ceiling failed: {errors[0]}")
    return {
        "articles_per_s": sum(r["articles_per_s"] for r in rows),
        "processes": n,
        "batch": batch,
        "threads_per_process": threads,
        "duration_s": duration,
        "provider": provider,
        "providers": rows[0]["providers"],
        "precision": rows[0]["precision"],
        "texts": len(texts),
        "per_process_articles_per_s": [r["articles_per_s"] for r in rows],
        "method": f"{n} process(es) (one per usable core), ClassifierRuntime.predict_proba on batches of "
        f"{batch} articles back to back for {duration:g} s, tokenizing included, no HTTP",
    }


def stream_in_process(
    models: str | os.PathLike,
    precision: str | None = None,
    provider: str = "cpu",
    threads: int = 1,
    chars: int = 2000,
    repeats: int = 3,
) -> dict:
    """chars/s of one stream with no server in between (runtime.generator.generate: sample + step per
    character), same precision as the server: the ceiling that the HTTP one-stream figure is compared with."""
    from runtime.generator import GeneratorRuntime, generate

    # as the service steps a lone stream on an idle machine: the wide session (every core)
    rt = GeneratorRuntime(
        model_dir(models, "generator"), provider, threads, precision=precision or "auto", wide_threads=usable_cores()
    )
    "".join(generate(rt, "Holmes", 50, seed=0))  # warm-up
    rates = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        n = len("".join(generate(rt, "Holmes", chars, temperature=0.8, top_k=20, seed=seed)))
        rates.append(n / (time.perf_counter() - t0))
    return {
        "threads": threads,
        "wide_threads": usable_cores(),
        "chars": chars,
        "chars_per_s": statistics.median(rates),
        "precision": rt.precision,
        "provider": provider,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    from loadtests import ROOT
    from loadtests.texts import articles

    ap = argparse.ArgumentParser(
        prog="python -m loadtests.bench.ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--models", type=Path, default=ROOT / "exported_models")
    ap.add_argument("--precision", default=os.environ.get("RNNTEXT_PRECISION"), help="auto | fp32 | int8")
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--processes", type=int, default=None, help="default: usable cores")
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args(argv)
    texts = [t for _, t in articles(limit=500, seed=2)]
    r = classify_ceiling(args.models, texts, args.precision, args.provider, args.processes, duration=args.duration)
    print(
        f"in-process ceiling: {r['articles_per_s']:.0f} articles/s ({r['method']}; precision {r['precision']}, "
        f"providers {r['providers']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
