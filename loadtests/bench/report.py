"""Markdown tables from a bench.json (``python -m loadtests.bench.report results/bench-*/bench.json``), so the
figures in docs/benchmarks.md are pasted from a run, never typed in. The targets table lists each of the issue's
targets with the figure measured in the run (bench.json "targets", computed by loadtests.bench.run.verdicts)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ok(flag: bool | None) -> str:
    return "not measured" if flag is None else "met" if flag else "**missed**"


def _measured(t: dict) -> str:
    v = t.get("measured")
    if v is None:
        return "not measured"
    text = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    unit = t.get("unit") or ""
    return text + (unit if unit in ("", "x") else " " + unit)


def targets_table(targets: dict) -> list[str]:
    out = ["**Targets** (each measured in this run):\n", "| target | measured | verdict |", "| --- | ---: | --- |"]
    for t in targets.values():
        out.append(
            f"| {t['what']} {t['target'].replace('>=', '≥').replace('<=', '≤')} | {_measured(t)} | "
            f"{_ok(t.get('met'))} |"
        )
    out.append("")
    return out


def describe(svc: dict) -> str:
    """What the server ran with (``bench.json`` → ``service``, from its /info), in one sentence."""
    p = svc["precision"]
    return (
        f"{svc['workers']} worker(s) on {svc['device']}, provider {svc['provider']}, precision classifier "
        f"{p['classifier']} / generator {p['generator']}, {svc['threads']} intra-op thread(s) per session"
    )


def service_line(res: dict) -> str:
    rss = res.get("server_rss") or {}
    line = "Service: " + describe(res["service"])
    if rss.get("max_mb"):
        line += f"; server RSS (whole process tree) max {rss['max_mb']:.0f} MB over {rss.get('samples')} samples"
    return line + ".\n"


def markdown(res: dict) -> str:
    out = []
    m = res.get("machine", {})
    out.append(
        f"Run {res.get('date')} on {m.get('cpu')} ({m.get('cores')} cores), ONNX Runtime "
        f"{m.get('onnxruntime')}, Python {m.get('python')}; `{res.get('command')}`"
        + (f"; server settings {res['server_env']}" if res.get("server_env") else "")
        + ".\n"
    )
    if res.get("service"):
        out.append(service_line(res))
    if res.get("targets"):
        out.extend(targets_table(res["targets"]))
    if "models" in res:
        r = res["models"]
        out.append(
            f"**Classifier inference**, ms per article, {r['threads']} thread(s), median of {r['rounds']} "
            f"interleaved rounds (batch 1: {r['tokens_batch1_mean']:.0f} tokens on average; batch "
            f"{r['batch']}: {r['tokens_batch_mean']:.0f}):\n"
        )
        out.append(
            "| batch | ONNX Runtime | TorchScript | eager PyTorch | ORT vs eager | target | ORT vs TorchScript |"
        )
        out.append("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
        for key in ("batch1", f"batch{r['batch']}"):
            ms, sp = r[key]["ms_per_article"], r[key]["ort_speedup_vs_eager"]
            out.append(
                f"| {key[5:]} | {ms['onnxruntime']:.2f} | {ms['torchscript']:.2f} | {ms['eager']:.2f} | "
                f"{sp:.2f}x | >= 1.3x: {_ok(sp >= 1.3)} | {r[key]['ort_speedup_vs_torchscript']:.2f}x |"
            )
        out.append("")
    if "quant" in res:
        try:
            out.extend(_quant(res["quant"]))
        except (KeyError, TypeError) as exc:  # loadtests/bench/models.py owns these keys
            out.append(f"**int8 quantization**: see bench.json ({exc!r} not rendered).\n")
    _rest(res, out)
    return "\n".join(out)


def _quant(q: dict) -> list[str]:
    out = []
    c, g = q["classifier"], q["generator"]
    out.append("**int8 dynamic quantization** (`onnxruntime.quantization.quantize_dynamic`, QInt8 weights):\n")
    out.append("| model | quality fp32 | quality int8 | change | speed-up | size |")
    out.append("| --- | ---: | ---: | ---: | --- | --- |")
    out.append(
        f"| classifier | accuracy {c['accuracy']['fp32']:.4f} | {c['accuracy']['int8']:.4f} | "
        f"{c['accuracy_change']:+.4f} (agreement {c['agreement']:.4f}, {c['evaluated_on']}) | "
        f"{c['speedup_batch1']:.2f}x batch 1, {c['speedup_batch32']:.2f}x batch 32 | "
        f"{c['file_bytes']['fp32'] / 1e6:.1f} -> {c['file_bytes']['int8'] / 1e6:.1f} MB |"
    )
    out.append(
        f"| generator | {g['bpc']['fp32']:.4f} bits/char | {g['bpc']['int8']:.4f} | {g['bpc_change']:+.4f} "
        f"({g['evaluated_on']}) | step {g['step_speedup']:.2f}x ({g['step_ms']['fp32']:.3f} -> "
        f"{g['step_ms']['int8']:.3f} ms), prefill {g['prefill_speedup']:.2f}x | |"
    )
    out.append("")
    return out


def _rest(res: dict, out: list[str]) -> None:
    if "ceiling" in res:
        c = res["ceiling"]
        out.append(
            f"**In-process ceiling**: {c['articles_per_s']:.0f} articles/s ({c['method']}; precision "
            f"{c['precision']}, providers {', '.join(c['providers'])}).\n"
        )
    if "http" in res:
        h = res["http"]
        out.append(
            "**HTTP /classify**, one article per request, closed loop, client-side latency "
            f"(batching off = `{h.get('batching_off_baseline')}`):\n"
        )
        out.append("| clients | mode | articles/s | p50 ms | p95 ms | failures | connections per worker |")
        out.append("| ---: | --- | ---: | ---: | ---: | ---: | --- |")
        for mode in ("batching_on", "batching_off", "reference"):
            for row in h.get(mode, []):
                w = row.get("workers") or {}
                spread = ", ".join(f"{k}: {v}" for k, v in (w.get("connections_by_worker") or {}).items())
                out.append(
                    f"| {row['concurrency']} | {mode.replace('_', ' ')} | {row['throughput_rps']:.1f} | "
                    f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['failures']} | "
                    f"{spread or 'unknown'} |"
                )
        if "speedup_at_max" in h:
            out.append(
                f"\nAdaptive batching vs off at {h['max_concurrency']} clients: {h['speedup_at_max']:.2f}x "
                "throughput"
                + (
                    f"; batching on vs the in-process ceiling: {h['vs_ceiling_at_max']:.2f}"
                    if h.get("vs_ceiling_at_max") is not None
                    else ""
                )
                + (
                    f"; batching on vs the reference server: {h['vs_reference_at_max']:.2f}"
                    if h.get("vs_reference_at_max") is not None
                    else ""
                )
                + "."
            )
        ref = h.get("reference_server") or {}
        off = h.get("batching_off_server") or {}
        if off:
            out.append(
                f"Batching-off server: {off.get('workers', 'unknown')} worker(s), classifier precision "
                f"{off.get('precision', 'unknown')}. Each client holds one keep-alive connection, which stays "
                "on one worker: the last column says how the clients were spread."
            )
        if ref:
            out.append(
                f"Reference server (mode reference, `{ref.get('command', 'loadtests/bench/reference_server.py')}`): "
                f"{ref.get('what')}; {ref.get('workers')} worker(s), {ref.get('threads_per_worker')} intra-op "
                f"thread each, classifier precision {ref.get('precision')}, provider {ref.get('provider')}."
            )
        if h.get("reference_error"):
            out.append(f"Reference server: not measured ({h['reference_error']}).")
        out.append("")
        if h.get("ratios"):
            out.extend(_ratios(h["ratios"]))
    if "generation" in res:
        g = res["generation"]
        out.append(f"**Generation** (streams of {g['stream_chars']} characters after a 200-character prompt):\n")
        out.append("| streams | aggregate chars/s | per-stream chars/s |")
        out.append("| ---: | ---: | ---: |")
        for n, row in g["by_streams"].items():
            out.append(f"| {n} | {row['aggregate_chars_per_s']:.0f} | {row['per_stream_chars_per_s']:.0f} |")
        top = max(g["by_streams"], key=int)
        ratio = g[f"aggregate_{top}_vs_1"]
        one = g["one_stream_chars_per_s"]
        out.append(
            f"\nTime to first chunk p50 {g['ttfc_p50_ms']:.1f} ms, p95 {g['ttfc_p95_ms']:.1f} ms; one stream "
            f"{one:.0f} chars/s; {top} streams vs one {ratio:.2f}x."
        )
        if "in_process" in g:
            ip = g["in_process"]
            out.append(
                f"Same model in-process, no server (sample + step per character, stepping on "
                f"{ip.get('wide_threads', ip['threads'])} core(s) as a lone stream does in the service, "
                f"{ip.get('precision', 'fp32')}): {ip['chars_per_s']:.0f} chars/s."
            )
        out.append("")
    if "session" in res:
        s = res["session"]
        out.append(
            f"**Session continuation**: {s['new_chars']} new characters, fresh request {s['fresh_ms']:.0f} ms vs "
            f"after {s['history_chars']:,} characters of history {s['continued_ms']:.0f} ms: ratio "
            f"{s['ratio']:.2f}.\n"
        )


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _ratios(rows: list[dict]) -> list[str]:
    out = [
        "**/classify throughput ratios** (articles/s; reference = the reference server, ceiling = in-process):\n",
        "| clients | batching on / reference | batching off / reference | batching on / ceiling | "
        "reference / ceiling |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['concurrency']} | {_x(r.get('batching_on_vs_reference'))} | "
            f"{_x(r.get('batching_off_vs_reference'))} | {_x(r.get('batching_on_vs_ceiling'))} | "
            f"{_x(r.get('reference_vs_ceiling'))} |"
        )
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench.report", description=__doc__)
    ap.add_argument("bench_json", nargs="+", type=Path, help="bench.json files written by python -m loadtests.bench")
    for path in ap.parse_args(argv).bench_json:
        print(markdown(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
