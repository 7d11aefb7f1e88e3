"""``python -m loadtests.bench`` (= ``make bench``): side-by-side performance figures from one run.

Sections (``--sections``, comma-separated; default all):
  models      classifier inference: ONNX Runtime vs TorchScript vs eager PyTorch, batch 1 and 32, real articles
  quant       int8 dynamic quantization of the ONNX models: speed ratios, accuracy and bits-per-char change
  http        HTTP /classify: throughput, p50/p95 vs concurrency with adaptive batching on and off (same worker
              count and precision), how the connections were spread over the workers, and the in-process
              ceiling measured in the same run (ceiling.py: the same runtime, articles and precision, one
              process per usable core, no HTTP), and a reference server driven the same way
              (reference_server.py: plain uvicorn + ONNX Runtime, the same model and precision, as many
              worker processes as the service, 1 intra-op thread each, one model call per request); the
              service's throughput is reported as a ratio to both
  generation  time to first chunk, one stream's chars/s, aggregate chars/s of 1/4/16 concurrent streams
  session     continuing a session after 10,000 characters of history vs a fresh request

The server sections run the service with its default settings (``--precision`` / ``--env`` change them) and
sample the resident memory of its whole process tree. Every target (TARGETS below) is a ratio or threshold
measured in this run; the verdicts are printed at the end and written to bench.json under "targets".
Writes results/bench-<UTC stamp>/bench.json, bench.md and PNG plots (``--docs`` also copies the plots to
docs/img/). The models/quant sections import torch (TorchScript, eager PyTorch); the service itself never does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from loadtests import ROOT
from loadtests.texts import articles

SECTIONS = ("models", "quant", "http", "generation", "session")
PRECISIONS = ("auto", "fp32", "int8")
RSS_PERIOD_S = 0.5
# key -> (what, op, threshold, unit): the issues' targets (issue 26 raised several), each judged on figures measured
# in the same run
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "classify_vs_ceiling": ("/classify articles/s at {top} clients / in-process ceiling", ">=", 0.80, ""),
    "classify_p95_ms": ("/classify p95 at {top} clients", "<=", 40, " ms"),
    "classify_errors": ("/classify failed requests (batching on, every client count)", "<=", 0, ""),
    "batching_on_vs_off": ("/classify throughput at {top} clients, batching on / off", ">=", 1.5, "x"),
    "single_client_p50_ms": ("/classify p50, one client", "<=", 3, " ms"),
    "one_stream_chars_per_s": ("one sampled /generate stream, chars/s", ">=", 10000, ""),
    "streams_vs_one": ("aggregate chars/s, {streams} streams / one stream", ">=", 6, "x"),
    "first_chunk_p50_ms": ("/generate time to first chunk, p50", "<=", 10, " ms"),
    "continuation_ratio": ("continuing after 10,000 chars of history / fresh request", "<=", 1.1, "x"),
    "server_rss_max_gb": ("max RSS of the server's process tree during {rss_sections}", "<=", 1.5, " GB"),
}
# the /classify rows of the http section: the service with batching on, off, and the reference server
HTTP_MODES = ("batching_on", "batching_off", "reference")
# "batching off": the same service with a non-batchable /classify (one model call per request, concurrently in
# BentoML's thread pool); everything else (workers, precision, middleware, connection spreading) is the same
BATCHING_OFF_ENV = {"RNNTEXT_BATCHING": "0"}


def machine() -> dict:
    """The machine this run measured (runtime.hardware), with the Python and ONNX Runtime versions."""
    import onnxruntime

    from runtime.hardware import describe

    hw = describe()
    return {
        "cpu": hw["cpu"],
        "cores": hw["cores"],
        "usable_cores": hw["usable_cores"],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "gpu": hw["gpu"],
    }


def report_models(r: dict) -> None:
    print(
        f"\n== classifier inference, ms per article ({r['threads']} thread(s); batch 1 = "
        f"{r['tokens_batch1_mean']:.0f} tokens on average, batch {r['batch']} = {r['tokens_batch_mean']:.0f}) =="
    )
    print(f"{'':10} {'ONNX Runtime':>13} {'TorchScript':>12} {'eager':>8} {'ORT vs eager':>13} {'ORT vs TS':>10}")
    for key in ("batch1", f"batch{r['batch']}"):
        ms = r[key]["ms_per_article"]
        print(
            f"{key:10} {ms['onnxruntime']:13.2f} {ms['torchscript']:12.2f} {ms['eager']:8.2f} "
            f"{r[key]['ort_speedup_vs_eager']:12.2f}x {r[key]['ort_speedup_vs_torchscript']:9.2f}x"
        )
    print(f"max |logit diff| vs eager: {r['max_abs_logit_diff_vs_eager']}")


def report_quant(r: dict) -> None:
    print("\n== int8 dynamic quantization (ONNX Runtime) ==")
    try:
        _report_quant(r)
    except (KeyError, TypeError) as exc:  # models.py owns these keys; the figures are in bench.json anyway
        print(f"(not printed: {exc!r}; see bench.json)")


def _report_quant(r: dict) -> None:
    c, g = r.get("classifier"), r.get("generator")
    if c:
        print(
            f"classifier: accuracy {c['accuracy']['fp32']:.4f} -> {c['accuracy']['int8']:.4f} "
            f"({c['accuracy_change']:+.4f}) on {c['evaluated_on']}, agreement {c['agreement']:.4f}; speed-up "
            f"{c['speedup_batch1']:.2f}x batch 1, {c['speedup_batch32']:.2f}x batch 32; "
            f"{c['file_bytes']['fp32'] / 1e6:.1f} -> {c['file_bytes']['int8'] / 1e6:.1f} MB"
        )
    if g:
        print(
            f"generator:  bits/char {g['bpc']['fp32']:.4f} -> {g['bpc']['int8']:.4f} ({g['bpc_change']:+.4f}) "
            f"on {g['evaluated_on']}; step {g['step_ms']['fp32']:.3f} -> {g['step_ms']['int8']:.3f} ms "
            f"({g['step_speedup']:.2f}x), prefill {g['prefill_speedup']:.2f}x"
        )


def report_ceiling(c: dict) -> None:
    print(
        f"\n== in-process ceiling: {c['articles_per_s']:.0f} articles/s ({c['method']}; precision "
        f"{c['precision']}, providers {c['providers']}) =="
    )
    if "server_cpu_s_meanwhile" in c:
        print(
            f"(the idle server used {c['server_cpu_s_meanwhile']:.2f} CPU s meanwhile; waited "
            f"{c['waited_for_idle_server_s']:.1f} s for it to go idle first)"
        )


def report_http(r: dict) -> None:
    print("\n== HTTP /classify, one article per request (client-side latency) ==")
    print(f"{'clients':>7} {'mode':>12} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'fails':>6}  connections per worker")
    for mode in HTTP_MODES:
        for row in r.get(mode, []):
            w = row.get("workers") or {}
            print(
                f"{row['concurrency']:7d} {mode:>12} {row['throughput_rps']:8.1f} {row['p50_ms']:8.1f} "
                f"{row['p95_ms']:8.1f} {row['failures']:6d}  {w.get('spread', 'unknown')} "
                f"{w.get('connections_by_worker', '')}"
            )
    if "speedup_at_max" in r:
        print(f"adaptive batching vs off at {r['max_concurrency']} clients: {r['speedup_at_max']:.2f}x throughput")
    if r.get("vs_ceiling_at_max") is not None:
        print(f"batching on at {r['max_concurrency']} clients vs the in-process ceiling: {r['vs_ceiling_at_max']:.2f}")
    ref = r.get("reference_server") or {}
    if r.get("ratios"):
        print(
            f"service vs the reference server ({ref.get('what', 'reference_server.py')}; {ref.get('workers')} "
            f"worker(s), precision {ref.get('precision')}) and vs the in-process ceiling, articles/s:"
        )
        print(f"{'clients':>7} {'on/ref':>8} {'off/ref':>8} {'on/ceil':>8} {'ref/ceil':>9}")
        for x in r["ratios"]:
            print(
                f"{x['concurrency']:7d} {_fmt(x['batching_on_vs_reference'])} {_fmt(x['batching_off_vs_reference'])} "
                f"{_fmt(x['batching_on_vs_ceiling'])} {_fmt(x['reference_vs_ceiling'], 9)}"
            )
    if r.get("vs_reference_at_max") is not None:
        print(f"batching on at {r['max_concurrency']} clients vs the reference server: {r['vs_reference_at_max']:.2f}")
    if r.get("reference_error"):
        print(f"reference server: not measured ({r['reference_error']})")


def _fmt(x: float | None, width: int = 8) -> str:
    return f"{x:{width}.2f}" if x is not None else f"{'-':>{width}}"


def report_generation(r: dict) -> None:
    print("\n== generation (streaming /generate) ==")
    print(f"time to first chunk: p50 {r['ttfc_p50_ms']:.1f} ms, p95 {r['ttfc_p95_ms']:.1f} ms")
    for n, row in r["by_streams"].items():
        print(
            f"{n:>3} stream(s) of {r['stream_chars']} chars: aggregate {row['aggregate_chars_per_s']:8.0f} chars/s,"
            f" per stream {row['per_stream_chars_per_s']:7.0f} chars/s"
        )
    if "in_process" in r:
        ip = r["in_process"]
        print(
            f"one stream without the server (in-process sample + step on {ip.get('wide_threads', ip['threads'])} "
            f"core(s), "
            f"{ip.get('precision', 'fp32')}): {ip['chars_per_s']:.0f} chars/s"
        )
    top = max(r["by_streams"], key=int)
    print(f"aggregate {top} streams vs one: {r[f'aggregate_{top}_vs_1']:.2f}x")


def report_session(r: dict) -> None:
    print(f"\n== session continuation: {r['new_chars']} new chars ==")
    print(
        f"fresh request {r['fresh_ms']:.0f} ms, after {r['history_chars']:,} chars of history "
        f"{r['continued_ms']:.0f} ms: ratio {r['ratio']:.2f} (medians; fastest vs fastest "
        f"{r['ratio_best']:.2f})"
    )


def report_service(svc: dict) -> None:
    from loadtests.bench.report import describe

    print(f"\nserver: {describe(svc)}", flush=True)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if x == x else None  # NaN = not measured


def verdicts(res: dict) -> dict:
    """Each target of TARGETS with the figure measured in this run and met / missed (None: not measured)."""
    h = res.get("http") or {}
    on = {r["concurrency"]: r for r in h.get("batching_on") or []}
    off = {r["concurrency"]: r for r in h.get("batching_off") or []}
    top = max(on) if on else 32
    g, sess, rss = res.get("generation") or {}, res.get("session") or {}, res.get("server_rss") or {}
    ceiling = _num((res.get("ceiling") or {}).get("articles_per_s"))
    row = on.get(top)
    streams = max((int(k) for k in g.get("by_streams") or {}), default=16)
    measured = {
        "classify_vs_ceiling": row["throughput_rps"] / ceiling if row and ceiling else None,
        "classify_p95_ms": row["p95_ms"] if row else None,
        "classify_errors": sum(r["failures"] for r in on.values()) if on else None,
        "batching_on_vs_off": row["throughput_rps"] / off[top]["throughput_rps"] if row and top in off else None,
        "single_client_p50_ms": on[1]["p50_ms"] if 1 in on else None,
        "one_stream_chars_per_s": g.get("one_stream_chars_per_s"),
        "streams_vs_one": g.get(f"aggregate_{streams}_vs_1"),
        "first_chunk_p50_ms": g.get("ttfc_p50_ms"),
        "continuation_ratio": sess.get("ratio"),
        "server_rss_max_gb": rss["max_bytes"] / 1e9 if rss.get("max_bytes") else None,
    }
    out = {}
    for key, (what, op, threshold, unit) in TARGETS.items():
        value = _num(measured[key])
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        sampled = "/".join(rss.get("sampled_during") or ["http", "generation", "session"])
        out[key] = {
            "what": what.format(top=top, streams=streams, rss_sections=sampled),
            "target": f"{op} {threshold:g}{unit}",
            "op": op,
            "threshold": threshold,
            "unit": unit.strip(),
            "measured": value,
            "met": met,
        }
    return out


def report_targets(targets: dict) -> None:
    print("\n== targets (measured in this run) ==")
    for key, t in targets.items():
        unit = "" if not t["unit"] else t["unit"] if t["unit"] == "x" else " " + t["unit"]
        v = t["measured"]
        value = "not measured" if v is None else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}") + unit
        verdict = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        print(f"{verdict:>6}  {t['what']}: {value} (target {t['target']})  [{key}]")


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
        for mode in HTTP_MODES:
            rows = res["http"].get(mode) or []
            c = [row["concurrency"] for row in rows]
            a1.plot(c, [row["throughput_rps"] for row in rows], marker="o", label=mode.replace("_", " "))
            a2.plot(c, [row["p95_ms"] for row in rows], marker="o", label=mode.replace("_", " "))
        if (res.get("ceiling") or {}).get("articles_per_s"):
            a1.axhline(res["ceiling"]["articles_per_s"], ls="--", color="gray", label="in-process ceiling")
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
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--models", type=Path, default=ROOT / "exported_models")
    ap.add_argument("--threads", type=int, default=1, help="threads for the models/quant sections (default 1)")
    ap.add_argument("--rounds", type=int, default=20, help="timing rounds per backend (default 20)")
    ap.add_argument("--concurrency", type=_ints, default=[1, 8, 32], help="HTTP client counts (default 1,8,32)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per HTTP level (default 8)")
    ap.add_argument("--streams", type=_ints, default=[1, 4, 16], help="concurrent streams (default 1,4,16)")
    ap.add_argument("--stream-chars", type=int, default=1000, help="characters per benchmark stream")
    ap.add_argument("--url", help="use a running server for http(batching on)/generation/session")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="server setting for the http/generation/session sections, e.g. RNNTEXT_THREADS=1",
    )
    ap.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="RNNTEXT_PRECISION for the servers (default: the service's default, auto = int8 on CPU "
        "where its quality holds); the in-process ceiling uses whatever the server reports",
    )
    ap.add_argument(
        "--ceiling-duration", type=float, default=None, help="seconds of the in-process ceiling (default: --duration)"
    )
    ap.add_argument("--out", type=Path, default=None, help="output folder (default results/bench-<stamp>)")
    ap.add_argument("--docs", action="store_true", help="also copy the PNG plots to docs/img/")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "results" / f"bench-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "python -m loadtests.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    t_start = time.perf_counter()

    if "models" in sections:
        from loadtests.bench.models import classifier_backends

        res["models"] = classifier_backends(args.models / "classifier", args.threads, args.rounds)
        report_models(res["models"])
    if "quant" in sections:
        from loadtests.bench.models import quantize_classifier, quantize_generator

        res["quant"] = {
            "classifier": quantize_classifier(args.models / "classifier", args.threads),
            "generator": quantize_generator(args.models / "generator", args.threads),
        }
        report_quant(res["quant"])
    if {"http", "generation", "session"} & set(sections):
        run_server_sections(args, sections, res, out)
        res["targets"] = verdicts(res)
        report_targets(res["targets"])
    res["seconds"] = time.perf_counter() - t_start
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    made = plots(res, out)
    from loadtests.bench.report import markdown

    (out / "bench.md").write_text(markdown(res) + "\n")
    if args.docs:
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        for p in made:
            shutil.copy(p, ROOT / "docs" / "img" / p.name)
    print(
        f"\nresults: {out / 'bench.json'}, bench.md"
        + (f", plots: {', '.join(p.name for p in made)}" if made else "")
        + f" ({res['seconds']:.0f} s)"
    )
    return 0


def service_info(url: str) -> dict:
    """The server's /info."""
    import httpx

    r = httpx.get(url + "/info", timeout=10)
    r.raise_for_status()
    return r.json()


def describe_service(info: dict) -> dict:
    """What the server runs with, from its /info."""
    settings = info["settings"]
    return {
        "workers": info["workers"],
        "device": info["device"],
        "provider": info["providers"]["classifier"][0],
        "providers": info["providers"],
        "precision": info["precision"],
        "threads": settings["threads"],
        "settings": {
            k: settings[k]
            for k in ("provider", "precision", "workers", "threads", "batching", "max_batch_size", "session_store")
        },
    }


def ratios(on: dict, off: dict, ref: dict, ceiling: float) -> list[dict]:
    """Per client count: the service's /classify throughput (batching on, off) as a ratio to the reference
    server's and to the in-process ceiling; None where a side was not measured."""

    def ratio(a: dict | None, b: float | None) -> float | None:
        return a["throughput_rps"] / b if a and b else None

    return [
        {
            "concurrency": c,
            "batching_on_vs_reference": ratio(on[c], (ref.get(c) or {}).get("throughput_rps")),
            "batching_off_vs_reference": ratio(off.get(c), (ref.get(c) or {}).get("throughput_rps")),
            "batching_on_vs_ceiling": ratio(on[c], ceiling),
            "reference_vs_ceiling": ratio(ref.get(c), ceiling),
        }
        for c in sorted(on)
    ]


def reference_section(args, res: dict, svc: dict, provider: str, out: Path, classify_levels) -> None:
    """The reference server (reference_server.py) with the service's worker count, classifier precision and
    provider, started once the service is down, driven at the same client counts; it is stopped before this
    returns. A reference server that fails is reported, and the rest of the run goes on."""
    import httpx

    from loadtests.bench import ceiling as ceil
    from loadtests.bench.reference_server import ReferenceServer

    workers, precision = svc["workers"], svc["precision"]["classifier"]
    log = out / "reference-server.log"
    print(f"starting the reference server ({workers} uvicorn worker(s), {precision}; log: {log}) ...", flush=True)
    try:
        with ReferenceServer(args.models, workers, precision, provider, log_path=log) as ref:
            ref.wait_ready()
            ceil.wait_idle(ref.proc.pid)  # /readyz answers once one worker is up; the others may be loading
            info = service_info(ref.url)
            res["http"]["reference"] = classify_levels(ref.url)
    except (RuntimeError, TimeoutError, OSError, ValueError, httpx.HTTPError) as exc:
        res["http"]["reference_error"] = repr(exc)
        print(f"reference server failed: {exc!r}", flush=True)
        return
    res["http"]["reference_server"] = {
        "what": "plain uvicorn + Starlette, ONNX Runtime, one model call per request, no batching",
        "command": " ".join(["python", *ref.cmd[1:]]),
        "workers": workers,
        "precision": info["precision"],
        "provider": info["provider"],
        "threads_per_worker": info["threads"],
    }


def run_server_sections(args, sections: list[str], res: dict, out: Path) -> None:
    from loadtests.bench import ceiling as ceil
    from loadtests.bench import http_load as bh
    from loadtests.server import ONE_CLIENT_LIMITS, RssSampler, Server, announce

    texts = [t for _, t in articles(limit=500, seed=2)]
    env = {
        **ONE_CLIENT_LIMITS,
        "RNNTEXT_MODELS": str(args.models),
        **({"RNNTEXT_PRECISION": args.precision} if args.precision else {}),
        **dict(kv.split("=", 1) for kv in args.env),
    }
    res["server_env"] = env
    print(announce(env), flush=True)
    top = max(args.concurrency)

    def classify_levels(url: str) -> list[dict]:
        return [bh.classify_load(url, texts, c, args.duration) for c in args.concurrency]

    server = None if args.url else Server(env=env, log_path=out / "server.log")
    sampler = None
    try:
        url = args.url.rstrip("/") if args.url else server.url
        if server:
            print(f"starting the service (log: {out / 'server.log'}) ...", flush=True)
            print(f"ready after {server.wait_ready():.1f} s", flush=True)
        svc = res["service"] = describe_service(service_info(url))
        report_service(svc)
        precision = svc["precision"]["classifier"]
        provider = "cuda" if svc["provider"].startswith("CUDA") else "cpu"
        threads = svc["threads"]
        if "http" in sections:
            # the server is up but idle: the ceiling gets the cores to itself, as the server then gets them
            workers = svc["workers"]
            waited = ceil.wait_idle(server.proc.pid) if server else 0.0
            cpu0 = ceil.tree_cpu_seconds(server.proc.pid) if server else 0.0
            res["ceiling"] = ceil.classify_ceiling(
                args.models,
                texts,
                precision,
                provider,
                processes=None if provider == "cpu" else workers,
                duration=args.ceiling_duration or args.duration,
            )
            if server:  # what the idle server took meanwhile (start-up of the processes included)
                res["ceiling"]["server_cpu_s_meanwhile"] = ceil.tree_cpu_seconds(server.proc.pid) - cpu0
                res["ceiling"]["waited_for_idle_server_s"] = waited
            report_ceiling(res["ceiling"])
        if server:
            sampler = RssSampler(server, period=RSS_PERIOD_S)
            sampler.start()
        if "http" in sections:
            res["http"] = {"batching_on": classify_levels(url)}
        if "generation" in sections:
            res["generation"] = bh.generation(url, args.stream_chars, tuple(args.streams))
            gen_precision = svc["precision"]["generator"]
            res["generation"]["in_process"] = ceil.stream_in_process(args.models, gen_precision, provider, threads)
            report_generation(res["generation"])
        if "session" in sections:
            res["session"] = bh.session_continuation(url)
            report_session(res["session"])
    finally:
        if sampler:
            sampler.stop()
        if server:
            server.stop()
    if sampler and sampler.samples:
        values = [r for _, r in sampler.samples]
        res["server_rss"] = {
            "max_bytes": max(values),
            "max_mb": max(values) / 2**20,
            "mean_mb": sum(values) / len(values) / 2**20,
            "samples": len(values),
            "period_s": RSS_PERIOD_S,
            "sampled_during": [s for s in sections if s in ("http", "generation", "session")],
        }
    if "http" in sections:
        # batching off with the batching-on server's worker count and classifier precision, set explicitly
        off_env = {
            **env,
            **BATCHING_OFF_ENV,
            "RNNTEXT_WORKERS": str(svc["workers"]),
            "RNNTEXT_PRECISION": svc["precision"]["classifier"],
        }
        with Server(env=off_env, log_path=out / "server-batching-off.log") as off:
            off.wait_ready()
            off_info = service_info(off.url)
            res["http"]["batching_off"] = classify_levels(off.url)
        res["http"]["batching_off_server"] = {
            "env": off_env,
            "workers": off_info["workers"],
            "precision": off_info["precision"]["classifier"],
        }
        reference_section(args, res, svc, provider, out, classify_levels)
        on = {r["concurrency"]: r for r in res["http"]["batching_on"]}
        offr = {r["concurrency"]: r for r in res["http"]["batching_off"]}
        ref = {r["concurrency"]: r for r in res["http"].get("reference") or []}
        res["http"].update(
            max_concurrency=top,
            batching_off_baseline="RNNTEXT_BATCHING=0",
            speedup_at_max=on[top]["throughput_rps"] / offr[top]["throughput_rps"],
            vs_ceiling_at_max=on[top]["throughput_rps"] / res["ceiling"]["articles_per_s"],
            vs_reference_at_max=on[top]["throughput_rps"] / ref[top]["throughput_rps"] if top in ref else None,
            ratios=ratios(on, offr, ref, res["ceiling"]["articles_per_s"]),
        )
        if 1 in on:
            res["http"]["single_client_p50_ms"] = on[1]["p50_ms"]
        report_http(res["http"])
    if res.get("server_rss"):
        print(
            f"\nserver RSS (whole process tree, every {RSS_PERIOD_S:g} s during "
            f"{'/'.join(res['server_rss']['sampled_during'])}): max {res['server_rss']['max_mb']:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
