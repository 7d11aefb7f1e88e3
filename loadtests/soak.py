"""``python -m loadtests.soak``: a memory soak test, a bounded load of mixed requests that judges memory growth.

1. starts ``bentoml serve`` from the project root on a free 127.0.0.1 port (loadtests.server.Server), or loads
   ``--url`` (then without the memory check);
2. sends ``--requests`` HTTP requests from ``--clients`` keep-alive clients, a mix fixed by ``--seed`` (MIX):
   /classify with a headline (38 %) or an article (8 %), /livez (34 %), /metrics (3 %), one-shot 16-character
   /generate (4 %), session flows generate -> continue -> /end_session (6 %, 3 requests each), streams dropped
   after their first event (2 %) and bad input that must get a 400 {"error", "kind"} (5 %);
3. samples the RSS of the server's whole process tree every ``--sample-every`` requests, then checks that the
   gauge rnntext_active_streams is back to 0 (dropped streams freed their slots);
4. writes rss.csv, rss.png, summary.json and server.log under results/soak-<UTC stamp>/ and exits 0 = targets
   met, 1 = a target missed (any failed request, growth over --max-growth-mb or slope over
   --max-kb-per-request), 2 = unusable run (the server did not start, too few samples).

Memory after warm-up (samples at >= warmup-frac x N requests): growth = mean RSS of the last 5 % of those samples
minus the mean of their first 5 %; slope = least-squares fit of RSS (KB = 1024 bytes) against the request count.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

from loadtests import ROOT

# kind: (share of all requests, HTTP requests per operation). A 16-character stream costs the server ~9 ms of
# CPU against ~1 ms for a headline and ~0.4 ms for /livez, so at twice these generation shares streams took
# 70 % of the run; here they take about half, and 100,000 requests fit in a few minutes on 2 cores.
MIX = {
    "classify": (0.38, 1),
    "classify_article": (0.08, 1),
    "livez": (0.34, 1),
    "metrics": (0.03, 1),
    "generate": (0.04, 1),
    "session": (0.06, 3),
    "abandon": (0.02, 1),
    "bad": (0.05, 1),
}
LABELS = {"business", "entertainment", "politics", "sport", "tech"}
GEN = {"max_chars": 16, "temperature": 0.8}
PROMPT_CHARS = (4, 16)
# (path, body, expected kind): not JSON, an empty texts list, an unknown field
BAD = [
    ("/classify", b'{"texts": ["a"', "malformed_json"),
    ("/classify", b'{"texts": []}', "invalid_request"),
    ("/generate", b'{"prompt": "x", "colour": "red"}', "invalid_request"),
]
MB = 2**20


def traffic_plan(n_requests: int, seed: int) -> list[tuple[str, int]]:
    """(kind, per-operation seed) pairs whose HTTP requests add up to exactly ``n_requests``."""
    rng = random.Random(seed)
    kinds = list(MIX)
    weights = [share / per_op for share, per_op in MIX.values()]
    plan, total = [], 0
    while total < n_requests:
        kind = rng.choices(kinds, weights)[0]
        if total + MIX[kind][1] > n_requests:
            kind = "livez"  # a session flow would overshoot the count: fill with one request
        plan.append((kind, rng.getrandbits(32)))
        total += MIX[kind][1]
    return plan


def plan_shares(plan: list[tuple[str, int]]) -> dict[str, float]:
    """Share of HTTP requests per kind."""
    reqs = Counter()
    for kind, _ in plan:
        reqs[kind] += MIX[kind][1]
    total = sum(reqs.values())
    return {k: reqs[k] / total for k in MIX}


def fit_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def memory_verdict(
    samples: list[tuple[int, float, int]],
    n_requests: int,
    warmup_frac: float,
    max_growth_mb: float,
    max_kb_per_request: float,
) -> dict | None:
    """Judge (requests, seconds, rss bytes) samples; None when there are too few after the warm-up."""
    after = [(n, rss) for n, _, rss in samples if n >= warmup_frac * n_requests]
    if len(after) < 3:
        return None
    k = max(1, round(0.05 * len(after)))
    base = sum(r for _, r in after[:k]) / k
    final = sum(r for _, r in after[-k:]) / k
    growth = (final - base) / MB
    slope = fit_slope([n for n, _ in after], [r / 1024 for _, r in after])
    missed = []
    if not growth <= max_growth_mb:
        missed.append(f"memory grew {growth:.1f} MB after warm-up (limit {max_growth_mb:g} MB)")
    if not slope <= max_kb_per_request:
        missed.append(f"memory slope {slope:.3f} KB/request (limit {max_kb_per_request:g})")
    return {
        "baseline_mb": base / MB,
        "final_mb": final / MB,
        "peak_mb": max(r for _, r in after) / MB,
        "growth_mb": growth,
        "slope_kb_per_request": slope,
        "samples_used": len(after),
        "window_samples": k,
        "warmup_requests": after[0][0],
        "missed": missed,
    }


def gauge(metrics_text: str, name: str) -> float | None:
    """Sum of a Prometheus gauge's samples over its label sets (the exposition text parsed by prometheus_client),
    None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    vals = [
        s.value for family in text_string_to_metric_families(metrics_text) for s in family.samples if s.name == name
    ]
    return sum(vals) if vals else None


class Bad(Exception):
    """A reply that is not the expected one (status or body)."""


def _reply(want: int, ok, decode=json.loads):
    """A reader that expects status ``want`` and a body for which ``ok(decoded body)`` is true."""

    async def read(r):
        body = await r.read()
        if r.status != want:
            raise Bad(f"HTTP {r.status}")
        if not ok(decode(body)):
            raise Bad(f"unexpected reply {body[:120]!r}")

    return read


_classified = _reply(200, lambda d: isinstance(d, list) and len(d) == 1 and d[0].get("label") in LABELS)
_alive = _reply(200, lambda b: True, bytes)
_metrics = _reply(200, lambda b: b"rnntext_active_streams" in b, bytes)


def _stream(max_chars: int, session: bool = False, abandon: bool = False):
    """Reads the SSE to the done event (checked), or with ``abandon`` drops the connection after the first."""

    async def read(r):
        if r.status != 200:
            raise Bad(f"HTTP {r.status}")
        async for line in r.content:
            if not line.startswith(b"data:"):
                continue
            ev = json.loads(line[5:])
            if abandon:
                if not ev.get("text"):
                    raise Bad(f"first event {ev}")
                r.close()  # closes the connection, not just this response: the server sees a disconnect
                return ev
            if ev.get("done"):
                if "error" in ev or ev.get("chars") != max_chars or session != isinstance(ev.get("session_id"), str):
                    raise Bad(f"bad done event {ev}")
                return ev
        raise Bad("stream ended without a done event")

    return read


class Soak:
    """Runs a traffic plan with concurrent aiohttp clients (lighter on the client's CPU share than httpx, as in
    loadtests/bench/http_load.py), counting requests per label and failures per label and reason."""

    def __init__(self, url: str, plan: list[tuple[str, int]], clients: int, sample_every: int, rss=None, progress=None):
        from loadtests.texts import articles, prose

        with warnings.catch_warnings():  # a few corpus files are Latin-1, which read_text warns about
            warnings.simplefilter("ignore")
            texts = [t for _, t in articles()]
            prose()
        self.headlines = [t.strip().split("\n", 1)[0][:200] for t in texts]
        self.articles = [t for t in texts if len(t) <= 4000] or texts  # article-length, not the rare 20 KB ones
        self.url, self.plan, self.clients, self.progress = url, plan, clients, progress
        self.rss, self.sample_every, self.next_sample = rss, sample_every, sample_every
        self.samples: list[tuple[int, float, int]] = []  # (requests, seconds, rss bytes)
        self.done, self.t0 = 0, time.perf_counter()
        self.counts: Counter = Counter()
        self.failures: Counter = Counter()

    def sample(self) -> None:
        self.samples.append((self.done, time.perf_counter() - self.t0, self.rss()))

    async def _req(self, s, label: str, path: str, read, **kw):
        """One HTTP request (GET without a body, else POST); ``read`` checks the reply and raises Bad."""
        result, reason = None, None
        try:
            async with s.request("POST" if kw else "GET", path, **kw) as r:
                result = await read(r)
        except Bad as exc:
            reason = str(exc)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not JSON, or JSON of another shape
            reason = f"bad body ({type(exc).__name__})"
        except Exception as exc:
            reason = f"transport {type(exc).__name__}"
        self.done += 1
        self.counts[label] += 1
        if reason:
            self.failures[f"{label}: {reason}"] += 1
        if self.rss and self.done >= self.next_sample:
            self.next_sample += self.sample_every
            # psutil's walk over the server's process tree takes milliseconds: off the event loop
            asyncio.get_running_loop().run_in_executor(None, self.sample)
        if self.progress:
            self.progress.update(1)
        return result if reason is None else None

    async def _op(self, s, kind: str, rng: random.Random) -> None:
        from loadtests.texts import prose_slice

        if kind == "classify":
            await self._req(s, "POST /classify", "/classify", _classified, json={"texts": [rng.choice(self.headlines)]})
        elif kind == "classify_article":
            await self._req(
                s, "POST /classify [article]", "/classify", _classified, json={"texts": [rng.choice(self.articles)]}
            )
        elif kind == "livez":
            await self._req(s, "GET /livez", "/livez", _alive)
        elif kind == "metrics":
            await self._req(s, "GET /metrics", "/metrics", _metrics)
        elif kind == "bad":
            path, body, want = rng.choice(BAD)
            error = _reply(400, lambda d: {"error", "kind"} <= set(d) and d["kind"] == want)
            await self._req(
                s, f"POST {path} (bad input)", path, error, data=body, headers={"Content-Type": "application/json"}
            )
        else:
            body = {"prompt": prose_slice(rng, rng.randint(*PROMPT_CHARS)), **GEN, "seed": rng.getrandbits(31)}
            if kind == "generate":
                await self._req(s, "POST /generate", "/generate", _stream(GEN["max_chars"]), json=body)
            elif kind == "abandon":
                await self._req(
                    s,
                    "POST /generate (abandoned)",
                    "/generate",
                    _stream(2000, abandon=True),
                    json={**body, "max_chars": 2000},
                )
            else:
                read = _stream(GEN["max_chars"], session=True)
                ev = await self._req(
                    s, "POST /generate (session)", "/generate", read, json={**body, "keep_session": True}
                )
                if ev is None:
                    return
                sid = ev["session_id"]
                await self._req(
                    s,
                    "POST /generate (continue)",
                    "/generate",
                    read,
                    json={"session_id": sid, "prompt": "", **GEN, "keep_session": True},
                )
                await self._req(
                    s,
                    "POST /end_session",
                    "/end_session",
                    _reply(200, lambda d: d == {"ended": sid}),
                    json={"session_id": sid},
                )

    async def _run(self) -> None:
        import aiohttp

        ops = iter(self.plan)  # shared by the clients: one event loop, so next() never races

        async def client() -> None:
            async with aiohttp.ClientSession(
                self.url, connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=120)
            ) as s:
                for kind, op_seed in ops:
                    await self._op(s, kind, random.Random(op_seed))

        await asyncio.gather(*(client() for _ in range(self.clients)))

    def run(self) -> float:
        """Runs the plan; returns its duration (s). Samples RSS at the start, every sample_every requests and
        at the end."""
        self.t0 = time.perf_counter()
        if self.rss:
            self.sample()
        asyncio.run(self._run())  # waits for the executor: every sample taken so far is in
        duration = time.perf_counter() - self.t0
        if self.rss:
            self.sample()
            self.samples.sort()
        return duration


def plot(samples, mem: dict | None, warmup_requests: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = [s[0] for s in samples], [s[2] / MB for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(xs, ys, ".-", ms=3, lw=0.8, label="server RSS (process tree)")
    ax.axvline(warmup_requests, color="grey", ls="--", label="end of warm-up")
    if mem:
        fx, fy = zip(*[(x, y) for x, y in zip(xs, ys) if x >= mem["warmup_requests"]])
        mx, my, k = sum(fx) / len(fx), sum(fy) / len(fy), mem["slope_kb_per_request"] / 1024
        # a least-squares line passes through the means
        ax.plot(
            [fx[0], fx[-1]],
            [my + k * (fx[0] - mx), my + k * (fx[-1] - mx)],
            "r-",
            label=f"fit: {mem['slope_kb_per_request']:.3f} KB/request",
        )
    ax.set(xlabel="requests", ylabel="RSS (MB)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse(argv):
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=100_000, help="HTTP requests in all (default 100000)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients (default 8)")
    ap.add_argument("--warmup-frac", type=float, default=0.1, help="share of requests before the baseline (0.1)")
    ap.add_argument("--max-growth-mb", type=float, default=20.0, help="allowed growth after warm-up (20 MB)")
    ap.add_argument("--max-kb-per-request", type=float, default=0.2, help="allowed RSS slope (0.2 KB/request)")
    ap.add_argument("--sample-every", type=int, default=500, help="requests between RSS samples (500)")
    ap.add_argument("--url", help="load an already running server instead of starting one (no memory check)")
    ap.add_argument("--out", type=Path, help="report folder (default results/soak-<UTC stamp>/)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    ap.add_argument("--seed", type=int, default=0, help="traffic plan seed (0)")
    args = ap.parse_args(argv)
    if min(args.requests, args.clients, args.sample_every) < 1 or not 0 <= args.warmup_frac < 1:
        ap.error("--requests, --clients and --sample-every must be >= 1 and --warmup-frac in [0, 1)")
    if any("=" not in kv for kv in args.env):
        ap.error("--env takes KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = args.out or ROOT / "results" / f"soak-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    import httpx
    from tqdm import tqdm

    from loadtests.server import ONE_CLIENT_LIMITS, Server, announce

    server = None
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            env = {**ONE_CLIENT_LIMITS, **dict(kv.split("=", 1) for kv in args.env)}
            print(announce(env), flush=True)
            server = Server(env=env, log_path=out / "server.log")
            print(f"starting the server on {server.url} (log: {out / 'server.log'}) ...", flush=True)
            try:
                print(f"ready after {server.wait_ready():.1f} s", flush=True)
            except (RuntimeError, TimeoutError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            url = server.url
        print(f"soak: {args.requests} requests from {args.clients} clients against {url}", flush=True)
        with tqdm(total=args.requests, unit="req", mininterval=1.0, smoothing=0.05) as bar:
            soak = Soak(
                url,
                traffic_plan(args.requests, args.seed),
                args.clients,
                args.sample_every,
                rss=server.rss if server else None,
                progress=bar,
            )
            duration = soak.run()
        time.sleep(2)  # a dropped stream's slot is freed once the server notices the closed connection
        try:
            active = gauge(httpx.get(url + "/metrics", timeout=30).text, "rnntext_active_streams")
        except httpx.HTTPError as exc:
            active = f"unknown ({type(exc).__name__})"
    finally:
        if server:
            server.stop()
    return _report(args, out, url, soak, duration, soak.samples, active)


def _report(args, out: Path, url: str, soak: Soak, duration: float, samples, active) -> int:
    mem = (
        memory_verdict(samples, args.requests, args.warmup_frac, args.max_growth_mb, args.max_kb_per_request)
        if samples
        else None
    )
    missed = [f"{n} failed: {k}" for k, n in sorted(soak.failures.items())]
    if active != 0:
        missed.append(f"rnntext_active_streams is {active} after the run (expected 0)")
    missed += mem["missed"] if mem else []
    unusable = bool(samples) and mem is None
    rc = 2 if unusable else 1 if missed else 0
    verdict = ("PASS", "FAIL", "UNUSABLE")[rc]
    rps = soak.done / duration
    print(f"\n{soak.done} requests in {duration:.1f} s ({rps:.0f} req/s), {sum(soak.failures.values())} failures")
    for label, n in sorted(soak.counts.items()):
        print(f"  {label:<30} {n:>7}")
    if mem:
        print(
            f"server RSS after warm-up ({mem['warmup_requests']} requests): baseline {mem['baseline_mb']:.1f} MB, "
            f"final {mem['final_mb']:.1f} MB, peak {mem['peak_mb']:.1f} MB; growth {mem['growth_mb']:+.1f} MB "
            f"(limit {args.max_growth_mb:g}), slope {mem['slope_kb_per_request']:.3f} KB/request "
            f"(limit {args.max_kb_per_request:g})"
        )
    elif unusable:
        print("too few RSS samples after the warm-up for a memory verdict (lower --sample-every)")
    else:
        print("no memory check: the server was started elsewhere (--url)")
    if samples:
        with open(out / "rss.csv", "w") as f:
            f.write("requests,seconds,rss_mb\n" + "".join(f"{n},{t:.2f},{r / MB:.2f}\n" for n, t, r in samples))
        figures = f"growth {mem['growth_mb']:+.1f} MB, {mem['slope_kb_per_request']:.3f} KB/request, " if mem else ""
        plot(
            samples,
            mem,
            args.requests * args.warmup_frac,
            f"soak: {soak.done} requests, {rps:.0f} req/s, {figures}{verdict}",
            out / "rss.png",
        )
    summary = {
        "url": url,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "requests": soak.done,
        "duration_s": duration,
        "requests_per_s": rps,
        "counts": dict(soak.counts),
        "failures": dict(soak.failures),
        "active_streams_after": active,
        "memory": mem,
        "missed": missed,
        "verdict": verdict,
        "exit_code": rc,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"reports: {out}/\n{verdict}" + (":\n  " + "\n  ".join(missed) if missed else ""))
    return rc


if __name__ == "__main__":
    sys.exit(main())
