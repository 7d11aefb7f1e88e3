"""``python -m loadtests.bench`` (= ``make bench``): side-by-side performance figures from one run.

Sections (``--sections``, comma-separated; default all):
  models      classifier inference: ONNX Runtime vs TorchScript vs eager PyTorch, batch 1 and 32, real articles
  quant       int8 dynamic quantization of the ONNX models: speed ratios, accuracy and bits-per-char change
  http        HTTP /classify: throughput, p50/p95 vs concurrency with adaptive batching on and off
  generation  time to first chunk, one stream's chars/s, aggregate chars/s of 1/4/16 concurrent streams
  session     continuing a session after 10,000 characters of history vs a fresh request

Writes results/bench-<UTC stamp>/bench.json and PNG plots (``--docs`` also copies the plots to docs/img/).
The models/quant sections import torch (TorchScript, eager PyTorch); the service itself never does.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from loadtests import ROOT
from loadtests.texts import articles

SECTIONS = ("models", "quant", "http", "generation", "session")
# "batching off": the service has no switch for it (BentoML rejects max_batch_size=1), so the baseline is the
# same ClassifierRuntime behind a non-batchable BentoML endpoint (loadtests/bench/nobatch.py)
BATCHING_OFF_SERVICE = "loadtests.bench.nobatch:NoBatch"


def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform(), "gpu": None}


def _f(x: float, nd: int = 1) -> str:
    return f"{x:.{nd}f}"


def report_models(r: dict) -> None:
    print(f"\n== classifier inference, ms per article ({r['threads']} thread(s); batch 1 = "
          f"{r['tokens_batch1_mean']:.0f} tokens on average, batch {r['batch']} = {r['tokens_batch_mean']:.0f}) ==")
    print(f"{'':10} {'ONNX Runtime':>13} {'TorchScript':>12} {'eager':>8} {'ORT vs eager':>13} {'ORT vs TS':>10}")
    for key in ("batch1", f"batch{r['batch']}"):
        ms = r[key]["ms_per_article"]
        print(f"{key:10} {ms['onnxruntime']:13.2f} {ms['torchscript']:12.2f} {ms['eager']:8.2f} "
              f"{r[key]['ort_speedup_vs_eager']:12.2f}x {r[key]['ort_speedup_vs_torchscript']:9.2f}x")
    print(f"max |logit diff| vs eager: {r['max_abs_logit_diff_vs_eager']}")


def report_quant(r: dict) -> None:
    c, g = r.get("classifier"), r.get("generator")
    print("\n== int8 dynamic quantization (ONNX Runtime) ==")
    if c:
        print(f"classifier: accuracy {c['accuracy']['fp32']:.4f} -> {c['accuracy']['int8']:.4f} "
              f"({c['accuracy_change']:+.4f}) on {c['evaluated_on']}, agreement {c['agreement']:.4f}; speed-up "
              f"{c['speedup_batch1']:.2f}x batch 1, {c['speedup_batch32']:.2f}x batch 32; "
              f"{c['file_bytes']['fp32'] / 1e6:.1f} -> {c['file_bytes']['int8'] / 1e6:.1f} MB")
    if g:
        print(f"generator:  bits/char {g['bpc']['fp32']:.4f} -> {g['bpc']['int8']:.4f} ({g['bpc_change']:+.4f}) "
              f"on {g['evaluated_on']}; step {g['step_ms']['fp32']:.3f} -> {g['step_ms']['int8']:.3f} ms "
              f"({g['step_speedup']:.2f}x), prefill {g['prefill_speedup']:.2f}x")


def report_http(r: dict) -> None:
    print("\n== HTTP /classify, one article per request (client-side latency) ==")
    print(f"{'clients':>7} {'mode':>12} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'fails':>6}")
    for mode in ("batching_on", "batching_off"):
        for row in r.get(mode, []):
            print(f"{row['concurrency']:7d} {mode:>12} {row['throughput_rps']:8.1f} {row['p50_ms']:8.1f} "
                  f"{row['p95_ms']:8.1f} {row['failures']:6d}")
    if "speedup_at_max" in r:
        print(f"adaptive batching vs off at {r['max_concurrency']} clients: {r['speedup_at_max']:.2f}x throughput")


def report_generation(r: dict) -> None:
    print("\n== generation (streaming /generate) ==")
    print(f"time to first chunk: p50 {r['ttfc_p50_ms']:.1f} ms, p95 {r['ttfc_p95_ms']:.1f} ms")
    for n, row in r["by_streams"].items():
        print(f"{n:>3} stream(s) of {r['stream_chars']} chars: aggregate {row['aggregate_chars_per_s']:8.0f} chars/s,"
              f" per stream {row['per_stream_chars_per_s']:7.0f} chars/s")
    if "in_process" in r:
        ip = r["in_process"]
        print(f"one stream without the server (in-process sample + step, {ip['threads']} thread(s)): "
              f"{ip['chars_per_s']:.0f} chars/s")
    top = max(r["by_streams"], key=int)
    print(f"aggregate {top} streams vs one: {r[f'aggregate_{top}_vs_1']:.2f}x")


def report_session(r: dict) -> None:
    print(f"\n== session continuation: {r['new_chars']} new chars ==")
    print(f"fresh request {r['fresh_ms']:.0f} ms, after {r['history_chars']:,} chars of history "
          f"{r['continued_ms']:.0f} ms: ratio {r['ratio']:.2f}")


def plots(res: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "models" in res:
        r = res["models"]
        keys = ["batch1", f"batch{r['batch']}"]
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
        for j, b in enumerate(("onnxruntime", "torchscript", "eager")):
            vals = [r[k]["ms_per_article"][b] for k in keys]
            ax.bar([i + (j - 1) * 0.27 for i in range(len(keys))], vals, width=0.27, label=b)
        ax.set_xticks(range(len(keys)), [f"batch {k[5:]}" for k in keys])
        ax.set(ylabel="ms per article", title=f"Classifier inference, {r['threads']} thread(s), 2-core CPU")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        made.append(out / "bench_classifier_backends.png")
        fig.tight_layout()
        fig.savefig(made[-1])
        plt.close(fig)
    if "http" in res and res["http"].get("batching_on"):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
        for mode in ("batching_on", "batching_off"):
            rows = res["http"].get(mode) or []
            c = [row["concurrency"] for row in rows]
            a1.plot(c, [row["throughput_rps"] for row in rows], marker="o", label=mode.replace("_", " "))
            a2.plot(c, [row["p95_ms"] for row in rows], marker="o", label=mode.replace("_", " "))
        a1.set(xlabel="concurrent clients", ylabel="articles / s", title="/classify throughput")
        a2.set(xlabel="concurrent clients", ylabel="p95 latency (ms)", title="/classify p95 latency")
        made.append(_finish(plt, fig, (a1, a2), out / "bench_http_concurrency.png"))
    if "generation" in res:
        g = res["generation"]["by_streams"]
        n = sorted(g, key=int)
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
        ax.plot([int(k) for k in n], [g[k]["aggregate_chars_per_s"] for k in n], marker="o", label="aggregate")
        ax.plot([int(k) for k in n], [g[k]["per_stream_chars_per_s"] for k in n], marker="o", label="per stream")
        ax.set(xlabel="concurrent streams", ylabel="characters / s", title="Streaming generation (step batching)")
        made.append(_finish(plt, fig, (ax,), out / "bench_generation_streams.png"))
    return made


def _finish(plt, fig, axes, path):
    """y axes from zero, grid, legend; save and close the figure; return its path."""
    for a in axes:
        a.set_ylim(bottom=0)
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--models", type=Path, default=ROOT / "exported_models")
    ap.add_argument("--threads", type=int, default=1, help="threads for the models/quant sections (default 1)")
    ap.add_argument("--rounds", type=int, default=20, help="timing rounds per backend (default 20)")
    ap.add_argument("--concurrency", type=_ints, default=[1, 8, 32], help="HTTP client counts (default 1,8,32)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per HTTP level (default 8)")
    ap.add_argument("--streams", type=_ints, default=[1, 4, 16], help="concurrent streams (default 1,4,16)")
    ap.add_argument("--stream-chars", type=int, default=1000, help="characters per benchmark stream")
    ap.add_argument("--url", help="use a running server for http(batching on)/generation/session")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="server setting for the http/generation/session sections, e.g. RNNTEXT_THREADS=1")
    ap.add_argument("--int8", action="store_true",
                    help="serve int8-quantized copies of the models in the http/generation/session sections")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default results/bench-<stamp>)")
    ap.add_argument("--docs", action="store_true", help="also copy the PNG plots to docs/img/")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "results" / f"bench-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                 "command": "python -m loadtests.bench " + " ".join(argv if argv is not None else sys.argv[1:])}
    t_start = time.perf_counter()

    if "models" in sections:
        from loadtests.bench.models import classifier_backends

        res["models"] = classifier_backends(args.models / "classifier", args.threads, args.rounds)
        report_models(res["models"])
    if "quant" in sections:
        from loadtests.bench.models import quantize_classifier, quantize_generator

        res["quant"] = {"classifier": quantize_classifier(args.models / "classifier", args.threads),
                        "generator": quantize_generator(args.models / "generator", args.threads)}
        report_quant(res["quant"])
    if {"http", "generation", "session"} & set(sections):
        run_server_sections(args, sections, res, out)

    res["seconds"] = time.perf_counter() - t_start
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    made = plots(res, out)
    from loadtests.bench.report import markdown

    (out / "bench.md").write_text(markdown(res) + "\n")
    if args.docs:
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        for p in made:
            shutil.copy(p, ROOT / "docs" / "img" / p.name)
    print(f"\nresults: {out / 'bench.json'}, bench.md" + (f", plots: {', '.join(p.name for p in made)}" if made else "")
          + f" ({res['seconds']:.0f} s)")
    return 0


def run_server_sections(args, sections: list[str], res: dict, out: Path) -> None:
    from loadtests.bench import http_load as bh
    from loadtests.server import Server

    texts = [t for _, t in articles(limit=500, seed=2)]
    models = args.models
    if args.int8:
        from loadtests.bench.models import int8_copy

        models = int8_copy(args.models, out / "int8_models")
    env = {"RNNTEXT_MODELS": str(models), **dict(kv.split("=", 1) for kv in args.env)}
    res["server_env"] = env
    top = max(args.concurrency)

    def classify_levels(url: str) -> list[dict]:
        return [bh.classify_load(url, texts, c, args.duration) for c in args.concurrency]

    server = None if args.url else Server(env=env, log_path=out / "server.log")
    try:
        url = args.url.rstrip("/") if args.url else server.url
        if server:
            server.wait_ready()
        if "http" in sections:
            res["http"] = {"batching_on": classify_levels(url)}
        if "generation" in sections:
            res["generation"] = bh.generation(url, args.stream_chars, tuple(args.streams))
            from loadtests.bench.models import generator_in_process
            from serving.config import Settings

            threads = Settings.from_env({**os.environ, **env}).threads   # what the service uses
            res["generation"]["in_process"] = generator_in_process(Path(env["RNNTEXT_MODELS"]) / "generator",
                                                                   threads)
            report_generation(res["generation"])
        if "session" in sections:
            res["session"] = bh.session_continuation(url)
            report_session(res["session"])
    finally:
        if server:
            server.stop()
    if "http" in sections:
        with Server(env=env, service=BATCHING_OFF_SERVICE, log_path=out / "server-batching-off.log") as off:
            off.wait_ready()
            res["http"]["batching_off"] = classify_levels(off.url)
        on = {r["concurrency"]: r for r in res["http"]["batching_on"]}
        offr = {r["concurrency"]: r for r in res["http"]["batching_off"]}
        res["http"].update(max_concurrency=top, batching_off_baseline=BATCHING_OFF_SERVICE,
                           speedup_at_max=on[top]["throughput_rps"] / offr[top]["throughput_rps"])
        if 1 in on:
            res["http"]["single_client_p50_ms"] = on[1]["p50_ms"]
        report_http(res["http"])


if __name__ == "__main__":
    sys.exit(main())
