"""HTTP benchmarks against a running service: classification under concurrency, streaming generation, sessions.

Clients are asyncio + aiohttp in one process (lighter on the shared 2 cores than threads or httpx). Latencies are
client-side, from sending the request to the last byte (classify) or to the first / last event (generate).
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time

import aiohttp

from loadtests.texts import prose, prose_slice


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=120))


# ------------------------------------------------------------------ classification

async def _classify_load(url: str, texts: list[str], concurrency: int, duration: float, warmup: float) -> dict:
    lat: list[float] = []
    done_at: list[float] = []
    failures = 0
    async with _session(concurrency) as s:
        start = time.perf_counter()
        m0, m1 = start + warmup, start + warmup + duration

        async def worker(k: int) -> None:
            nonlocal failures
            i = k
            while time.perf_counter() < m1:
                body = {"texts": [texts[i % len(texts)]]}
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with s.post(url + "/classify", json=body) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                t1 = time.perf_counter()
                if t0 >= m0:
                    if ok:
                        lat.append(t1 - t0)
                    else:
                        failures += 1
                if ok and m0 <= t1 <= m1:
                    done_at.append(t1)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    # closed loop without think time: Little's law (throughput = clients / mean latency) is exact in steady
    # state and, unlike counting completions in the window, not quantised by batches finishing together
    mean = sum(lat) / len(lat) if lat else float("inf")
    return {"concurrency": concurrency, "requests": len(lat), "failures": failures,
            "throughput_rps": concurrency / mean, "completed_in_window_rps": len(done_at) / duration,
            "p50_ms": pct(lat, 50) * 1000,
            "p95_ms": pct(lat, 95) * 1000, "p99_ms": pct(lat, 99) * 1000}


def classify_load(url: str, texts: list[str], concurrency: int, duration: float = 8.0,
                  warmup: float = 2.0) -> dict:
    """Closed loop: ``concurrency`` clients, each sending one article per request back to back."""
    return asyncio.run(_classify_load(url, texts, concurrency, duration, warmup))


# ------------------------------------------------------------------ generation

async def _stream(s: aiohttp.ClientSession, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first = None
    chars = 0
    last: dict = {}
    async with s.post(url + "/generate", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"/generate: HTTP {r.status}: {(await r.text())[:200]}")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            ev = json.loads(line[5:])
            if first is None:
                first = time.perf_counter()
            if ev.get("error"):
                raise RuntimeError(f"/generate error event: {ev}")
            chars += len(ev.get("text") or "")
            last = ev
    t1 = time.perf_counter()
    if not last.get("done"):
        raise RuntimeError("/generate: stream ended without a done event")
    return {"ttfc": first - t0, "total": t1 - t0, "chars": chars, "start": t0, "end": t1,
            "session_id": last.get("session_id")}


async def _streams(url: str, bodies: list[dict]) -> list[dict]:
    async with _session(len(bodies)) as s:
        return await asyncio.gather(*(_stream(s, url, b) for b in bodies))


def streams(url: str, bodies: list[dict]) -> list[dict]:
    return asyncio.run(_streams(url, bodies))


def _body(rng: random.Random, prompt_chars: int, max_chars: int, **extra) -> dict:
    return {"prompt": prose_slice(rng, prompt_chars), "max_chars": max_chars, "temperature": 0.8, "top_k": 20,
            "seed": rng.randrange(1 << 30), **extra}


def generation(url: str, stream_chars: int = 1000, concurrencies=(1, 4, 16), repeats: int = 3,
               ttfc_samples: int = 15) -> dict:
    """Time to first chunk (200-char prompt), one stream's chars/s, aggregate chars/s of N concurrent streams."""
    rng = random.Random(0)
    streams(url, [_body(rng, 200, 50) for _ in range(2)])       # warm-up
    ttfc = [streams(url, [_body(rng, 200, 20)])[0]["ttfc"] for _ in range(ttfc_samples)]
    out: dict = {"ttfc_p50_ms": statistics.median(ttfc) * 1000, "ttfc_p95_ms": pct(ttfc, 95) * 1000,
                 "stream_chars": stream_chars, "by_streams": {}}
    for n in concurrencies:
        rates, per_stream = [], []
        for _ in range(repeats):
            res = streams(url, [_body(rng, 200, stream_chars) for _ in range(n)])
            wall = max(r["end"] for r in res) - min(r["start"] for r in res)
            rates.append(sum(r["chars"] for r in res) / wall)
            per_stream.extend(r["chars"] / r["total"] for r in res)
        out["by_streams"][n] = {"aggregate_chars_per_s": statistics.median(rates),
                                "per_stream_chars_per_s": statistics.median(per_stream)}
    one = out["by_streams"][concurrencies[0]]["aggregate_chars_per_s"]
    out["one_stream_chars_per_s"] = one
    top = concurrencies[-1]
    out[f"aggregate_{top}_vs_1"] = out["by_streams"][top]["aggregate_chars_per_s"] / one
    return out


def session_continuation(url: str, history_chars: int = 10_000, new_chars: int = 500, repeats: int = 5,
                         max_prompt_chars: int = 4000) -> dict:
    """Time to generate ``new_chars`` continuing a session that has read ``history_chars`` characters vs
    the same request on a fresh session (same short prompt, alternating, medians)."""
    text = prose()[100_000:100_000 + history_chars]
    sid, seen = None, 0
    while seen < history_chars:        # feed the history in prompt-sized pieces, generating 1 char each
        piece = text[seen:seen + max_prompt_chars]
        body = {"prompt": piece, "max_chars": 1, "keep_session": True, "seed": 1,
                **({"session_id": sid} if sid else {})}
        sid = streams(url, [body])[0]["session_id"]
        seen += len(piece) + 1
    fresh, cont = [], []
    prompt = " Holmes looked up"
    for i in range(repeats + 1):        # the first pair is a warm-up
        f = streams(url, [{"prompt": prompt, "max_chars": new_chars, "temperature": 0.8, "seed": i}])[0]
        c = streams(url, [{"prompt": prompt, "max_chars": new_chars, "temperature": 0.8, "seed": i,
                           "session_id": sid, "keep_session": True}])[0]
        sid = c["session_id"]
        if i:
            fresh.append(f["total"])
            cont.append(c["total"])
    asyncio.run(_end(url, sid))
    return {"history_chars": seen, "new_chars": new_chars, "fresh_ms": statistics.median(fresh) * 1000,
            "continued_ms": statistics.median(cont) * 1000,
            "ratio": statistics.median(cont) / statistics.median(fresh)}


async def _end(url: str, sid: str) -> None:
    async with _session(1) as s:
        async with s.post(url + "/end_session", json={"session_id": sid}) as r:
            await r.read()
