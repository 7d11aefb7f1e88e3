"""Old vs new classifier ONNX graph, in-process, side by side in one run: articles/s per precision and chunk size.

    git show REV:exported_models/classifier/model.onnx > /tmp/old.onnx   # and model.int8.onnx > /tmp/old.int8.onnx
    python -m loadtests.bench.classifier_graph --old /tmp/old.onnx --new exported_models/classifier

Each graph runs through ``runtime.classifier.ClassifierRuntime.predict_logits`` (tokenizing included) on calls of
``--call`` real BBC articles ($DATA_DIR/bbc, a fixed shuffled sample; ``--words`` cuts them short), as the service
calls it with its adaptive batches (up to 32), one ONNX Runtime intra-op thread. ``chunk`` is predict_logits'
``batch_size``: the most texts per ONNX call. The old graph is chunked as the old runtime did (length-sorted, no
bounds: --old-padding 1), the new one with the runtime's bounds (MAX_PADDING, MAX_TOKENS). Best of ``--rounds``
passes; within a round every configuration takes its turn, so load on a shared host falls on all of them alike.
``--clock cpu`` (default) counts this process's CPU seconds: on a busy host, what an idle core would do. No torch.

OLD / NEW: an exported classifier folder (model.onnx, model.int8.onnx, manifest.json) or a single .onnx file (its
int8 twin X.int8.onnx beside it, when present); the tokenizer comes from --manifest-from (default NEW if a folder,
else exported_models/classifier).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
import warnings
from pathlib import Path

from loadtests import texts as corpus
from runtime.classifier import MAX_PADDING, MAX_TOKENS, ClassifierRuntime
from runtime.providers import make_session


def graph_files(path: Path) -> dict[str, Path]:
    """Folder or .onnx file -> {"fp32": path, "int8": path} (int8 only where present)."""
    fp32 = path / "model.onnx" if path.is_dir() else path
    int8 = fp32.with_name(fp32.name[: -len(".onnx")] + ".int8.onnx")
    if not fp32.is_file():
        raise SystemExit(f"no ONNX graph at {fp32}")
    return {"fp32": fp32, **({"int8": int8} if int8.is_file() else {})}


def runtimes(base: ClassifierRuntime, graphs: dict, threads: int) -> dict[tuple[str, str], ClassifierRuntime]:
    """{(graph, precision): a copy of ``base`` (same encoding) running that file}."""
    out = {}
    for name, files in graphs.items():
        for precision, path in files.items():
            rt = copy.copy(base)
            rt.session, rt.precision = make_session(path, "cpu", threads), precision
            out[(name, precision)] = rt
    return out


def measure(rts: dict, bounds: dict, calls: list[list[str]], chunks: list[int], rounds: int, clock) -> dict:
    """{(graph, precision, chunk): best articles per second of ``clock`` over ``rounds`` passes over ``calls``}."""
    n = sum(map(len, calls))
    best: dict = {}
    for key, rt in rts.items():  # warm-up: the first runs of each shape allocate and pick kernels
        for chunk in chunks:
            rt.predict_logits(calls[0], chunk, **bounds[key[0]])
    for _ in range(rounds):
        for chunk in chunks:
            for (graph, precision), rt in rts.items():
                t0 = clock()
                for call in calls:
                    rt.predict_logits(call, chunk, **bounds[graph])
                rate = n / (clock() - t0)
                k = (graph, precision, chunk)
                best[k] = max(best.get(k, 0.0), rate)
    return best


def ratios(best: dict, chunks: list[int]) -> dict[str, float]:
    lo, hi = min(chunks), max(chunks)

    def get(*k):
        return best.get(k)

    out = {}
    for g in ("old", "new"):
        for p in ("fp32", "int8"):
            if hi != lo and get(g, p, hi) and get(g, p, lo):
                out[f"{g} {p}: chunk {hi} / chunk {lo}"] = get(g, p, hi) / get(g, p, lo)
    for c in chunks:
        if get("new", "int8", c) and get("new", "fp32", c):
            out[f"new int8 / new fp32 at chunk {c}"] = get("new", "int8", c) / get("new", "fp32", c)
    ceiling = max((v for (g, p, _), v in best.items() if (g, p) == ("new", "int8")), default=None)
    if ceiling and get("old", "int8", 4):
        out["new int8 ceiling / old int8 chunk 4"] = ceiling / get("old", "int8", 4)
    for p in ("fp32", "int8"):
        for c in chunks:
            if get("new", p, c) and get("old", p, c):
                out[f"new / old {p} at chunk {c}"] = get("new", p, c) / get("old", p, c)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="old classifier folder or .onnx file")
    ap.add_argument("--new", type=Path, default=Path("exported_models/classifier"), help="new folder or .onnx")
    ap.add_argument("--manifest-from", type=Path, help="folder whose manifest gives the tokenizer (default NEW)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[4, 32], help="predict_logits batch_size values")
    ap.add_argument("--call", type=int, default=32, help="texts per predict_logits call (the service's batch)")
    ap.add_argument("--articles", type=int, default=512, help="real articles in the sample")
    ap.add_argument("--words", type=int, help="cut each article to its first WORDS words (short texts)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--old-padding", type=float, default=1.0, help="old graph's padding bound (1: none)")
    ap.add_argument("--new-padding", type=float, default=MAX_PADDING, help="new graph's padding bound")
    ap.add_argument("--old-tokens", type=int, default=10**9, help="old graph's rows x longest bound (none)")
    ap.add_argument("--new-tokens", type=int, default=MAX_TOKENS, help="new graph's rows x longest bound")
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: this process's CPU seconds (one thread: what an idle core would take; steadier on a shared "
        "host), wall: elapsed seconds",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    folder = args.manifest_from or (args.new if args.new.is_dir() else Path("exported_models/classifier"))
    base = ClassifierRuntime(folder, "cpu", args.threads, precision="fp32")
    rts = runtimes(base, {"old": graph_files(args.old), "new": graph_files(args.new)}, args.threads)
    with warnings.catch_warnings():  # a Latin-1 article is read as training read it: no need to say so here
        warnings.simplefilter("ignore")
        sample = [text for _, text in corpus.articles(args.articles)]
    if args.words:
        sample = [" ".join(t.split()[: args.words]) for t in sample]
    random.Random(0).shuffle(sample)
    calls = [sample[i : i + args.call] for i in range(0, len(sample), args.call)]
    tokens = sum(len(base.encode(t)) for t in sample)
    print(
        f"{len(sample)} articles ({tokens / len(sample):.0f} tokens on average) in calls of {args.call}, "
        f"{args.threads} thread(s), best of {args.rounds}, {args.clock} clock; bounds: old padding "
        f"{args.old_padding:g}, tokens {args.old_tokens}; new padding {args.new_padding:g}, tokens {args.new_tokens}",
        flush=True,
    )
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    bounds = {
        "old": {"max_padding": args.old_padding, "max_tokens": args.old_tokens},
        "new": {"max_padding": args.new_padding, "max_tokens": args.new_tokens},
    }
    best = measure(rts, bounds, calls, args.chunks, args.rounds, clock)
    print(f"\n{'graph':<6}{'precision':<11}" + "".join(f"{'chunk ' + str(c):>12}" for c in args.chunks))
    for graph, precision in rts:
        cells = "".join(f"{best[(graph, precision, c)]:>12,.0f}" for c in args.chunks)
        print(f"{graph:<6}{precision:<11}{cells}")
    print(f"articles per {args.clock} second\n")
    r = ratios(best, args.chunks)
    for k, v in r.items():
        print(f"{k:<42}{v:6.2f}x")
    if args.json:
        doc = {"articles_per_s": {f"{g} {p} chunk {c}": v for (g, p, c), v in best.items()}, "ratios": r}
        args.json.write_text(json.dumps({**doc, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
