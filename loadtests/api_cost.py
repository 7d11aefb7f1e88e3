"""``python -m loadtests.api_cost``: what the generation API's options cost, side by side on one server.

Starts ``bentoml serve`` (default settings, the client rate lifted: one client sends everything), then times, one
request at a time and client-side to the last byte, the median of ``--repeats`` requests for each of: ``/generate``,
``/v1/completions`` (JSON and streamed), ``/v1/completions`` with ``logprobs: 5``, all for ``--chars`` characters
with the same sampling; and ``/score`` of ``--score-chars`` characters of the canon beside ``evaluate-generator``'s
scorer in this process (the ceiling: the same runtime and precision, no server). Prints chars/s and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .server import ONE_CLIENT_LIMITS, Server

PROMPT = "Holmes was " * 18  # about the benchmarks' 200-character prompt


def median_s(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.api_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--chars", type=int, default=2000, help="characters generated per request")
    p.add_argument("--score-chars", type=int, default=8000, help="characters of the canon scored")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "../shared/data"), help="holds sherlock/canon.txt")
    args = p.parse_args(argv)

    import httpx

    from runtime.generator import GeneratorRuntime
    from training.common.files import read_text
    from training.generator.evaluate import bits_per_char

    canon = read_text(Path(args.data_dir) / "sherlock" / "canon.txt")
    text = canon[len(canon) // 2 : len(canon) // 2 + args.score_chars]
    sampling = {"temperature": 0.8, "top_k": 20, "seed": 1}
    server = Server(env=ONE_CLIENT_LIMITS)
    try:
        server.wait_ready()
        time.sleep(3)  # the workers warm up after /readyz first answers
        with httpx.Client(base_url=server.url, timeout=120) as c:

            def post(path: str, body: dict) -> Callable[[], object]:
                return lambda: c.post(path, json=body).raise_for_status()

            v1 = {"prompt": PROMPT, "max_tokens": args.chars, **sampling}
            rows = {
                "/generate": post("/generate", {"prompt": PROMPT, "max_chars": args.chars, **sampling}),
                "/v1/completions": post("/v1/completions", v1),
                "/v1/completions stream": post("/v1/completions", {**v1, "stream": True}),
                "/v1/completions logprobs=5": post("/v1/completions", {**v1, "logprobs": 5}),
            }
            rates = {name: args.chars / median_s(call, args.repeats) for name, call in rows.items()}
            score_s = median_s(post("/score", {"text": text}), max(3, args.repeats // 2))
            precision = c.get("/info").json()["precision"]["generator"]
    finally:
        server.stop()
    runtime = GeneratorRuntime("exported_models", "cpu", os.cpu_count() or 1, precision=precision)  # as a lone stream
    ids = runtime.encode(text)
    ceiling_s = median_s(lambda: bits_per_char(runtime, ids, streams=1), 3)
    for name, rate in rates.items():
        print(f"{name:28s} {rate:8,.0f} chars/s   {rate / rates['/generate']:.2f} of /generate")
    print(f"{'/score':28s} {len(text) / score_s:8,.0f} chars/s   {ceiling_s / score_s:.2f} of the in-process scorer")
    print(f"in-process scorer ({precision}) {len(text) / ceiling_s:8,.0f} chars/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
