"""HTTP benchmarks against a running service: classification under concurrency, streaming generation, sessions.

Clients are asyncio + aiohttp in one process (lighter on the shared 2 cores than threads or httpx). Latencies are
client-side, from sending the request to the last byte (classify) or to the first / last event (generate); in the
open loop (``open_loop``, the capacity load profile of loadtests/run.py) from when the request was due.
Every reply's ``X-Rnntext-Worker`` header is counted, so each figure says which workers served it.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter

import aiohttp

from loadtests.texts import prose, prose_slice


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False), timeout=aiohttp.ClientTimeout(total=120)
    )


# ------------------------------------------------------------------ classification

WORKER_HEADER = "X-Rnntext-Worker"  # the service names the worker that answered on every response


def worker_spread(per_client: list[Counter]) -> dict:
    """How the clients' keep-alive connections were spread over the server's workers. Each client has one
    connection and a keep-alive connection stays on one worker, so with several workers a throughput figure
    depends on this split (measured here: 4:28 to 16:16 between rounds); a client answered by two workers (its
    connection was re-opened) counts once for each."""
    conns: Counter = Counter()
    reqs: Counter = Counter()
    for seen in per_client:
        conns.update(seen.keys())
        reqs.update(seen)
    order = sorted(conns, key=lambda w: (not w.isdigit(), int(w) if w.isdigit() else 0, w))
    return {
        "connections_by_worker": {w: conns[w] for w in order},
        "requests_by_worker": {w: reqs[w] for w in order},
        "spread": ":".join(str(conns[w]) for w in order) or "none",
        "reconnected_clients": sum(len(seen) > 1 for seen in per_client),
    }


async def _background_streams(url: str, n: int, stream_chars: int, until: float) -> None:
    """``n`` generation streams kept open back to back until ``until`` (perf_counter), results ignored."""

    async def one(k: int) -> None:
        rng = random.Random(k)
        async with _session(1) as s:
            while time.perf_counter() < until:
                try:
                    await _stream(s, url, _body(rng, 200, stream_chars))
                except (TimeoutError, RuntimeError, aiohttp.ClientError, ValueError):
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(one(k) for k in range(n)))


async def _classify_load(
    url: str,
    texts: list[str],
    concurrency: int,
    duration: float,
    warmup: float,
    streams: int = 0,
    stream_chars: int = 300,
) -> dict:
    lat: list[float] = []
    done_at: list[float] = []
    failures = 0
    per_client = [Counter() for _ in range(concurrency)]
    # one session (= one keep-alive connection) per client, so the spread over workers is per connection
    sessions = [_session(1) for _ in range(concurrency)]
    try:
        start = time.perf_counter()
        m0, m1 = start + warmup, start + warmup + duration

        async def worker(k: int) -> None:
            nonlocal failures
            s, seen = sessions[k], per_client[k]
            i = k
            while time.perf_counter() < m1:
                body = {"texts": [texts[i % len(texts)]]}
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with s.post(url + "/classify", json=body) as r:
                        await r.read()
                        ok = r.status == 200
                        seen[r.headers.get(WORKER_HEADER, "unknown")] += 1
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                t1 = time.perf_counter()
                if t0 >= m0:
                    if ok:
                        lat.append(t1 - t0)
                    else:
                        failures += 1
                if ok and m0 <= t1 <= m1:
                    done_at.append(t1)

        await asyncio.gather(
            *(worker(k) for k in range(concurrency)), _background_streams(url, streams, stream_chars, m1)
        )
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    # closed loop without think time: Little's law (throughput = clients / mean latency) is exact in steady
    # state and, unlike counting completions in the window, not quantised by batches finishing together
    mean = sum(lat) / len(lat) if lat else float("inf")
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "failures": failures,
        "throughput_rps": concurrency / mean,
        "completed_in_window_rps": len(done_at) / duration,
        "p50_ms": pct(lat, 50) * 1000,
        "p95_ms": pct(lat, 95) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "workers": worker_spread(per_client),
    }


def classify_load(
    url: str,
    texts: list[str],
    concurrency: int,
    duration: float = 8.0,
    warmup: float = 2.0,
    streams: int = 0,
    stream_chars: int = 300,
) -> dict:
    """Closed loop: ``concurrency`` clients, each with its own keep-alive connection, sending one article per
    request back to back; ``workers`` says how the connections were spread over the server's workers.
    ``streams``: that many /generate streams run meanwhile, back to back (capacity next to generation)."""
    return asyncio.run(_classify_load(url, texts, concurrency, duration, warmup, streams, stream_chars))


# ------------------------------------------------------------------ generation


async def _stream(s: aiohttp.ClientSession, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first = None
    chars = 0
    last: dict = {}
    async with s.post(url + "/generate", json=body) as r:
        worker = r.headers.get(WORKER_HEADER, "unknown")
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
    return {
        "ttfc": first - t0,
        "total": t1 - t0,
        "chars": chars,
        "start": t0,
        "end": t1,
        "session_id": last.get("session_id"),
        "worker": worker,
    }


async def _streams(url: str, bodies: list[dict]) -> list[dict]:
    async with _session(len(bodies)) as s:
        return await asyncio.gather(*(_stream(s, url, b) for b in bodies))


def streams(url: str, bodies: list[dict]) -> list[dict]:
    return asyncio.run(_streams(url, bodies))


def _body(rng: random.Random, prompt_chars: int, max_chars: int, **extra) -> dict:
    return {
        "prompt": prose_slice(rng, prompt_chars),
        "max_chars": max_chars,
        "temperature": 0.8,
        "top_k": 20,
        "seed": rng.randrange(1 << 30),
        **extra,
    }


def generation(
    url: str, stream_chars: int = 1000, concurrencies=(1, 4, 16), repeats: int = 3, ttfc_samples: int = 15
) -> dict:
    """Time to first chunk (200-char prompt), one stream's chars/s, aggregate chars/s of N concurrent streams."""
    rng = random.Random(0)
    streams(url, [_body(rng, 200, 50) for _ in range(2)])  # warm-up
    ttfc = [streams(url, [_body(rng, 200, 20)])[0]["ttfc"] for _ in range(ttfc_samples)]
    out: dict = {
        "ttfc_p50_ms": statistics.median(ttfc) * 1000,
        "ttfc_p95_ms": pct(ttfc, 95) * 1000,
        "stream_chars": stream_chars,
        "by_streams": {},
    }
    for n in concurrencies:
        rates, per_stream = [], []
        for _ in range(repeats):
            res = streams(url, [_body(rng, 200, stream_chars) for _ in range(n)])
            wall = max(r["end"] for r in res) - min(r["start"] for r in res)
            rates.append(sum(r["chars"] for r in res) / wall)
            per_stream.extend(r["chars"] / r["total"] for r in res)
        out["by_streams"][n] = {
            "aggregate_chars_per_s": statistics.median(rates),
            "per_stream_chars_per_s": statistics.median(per_stream),
        }
    one = out["by_streams"][concurrencies[0]]["aggregate_chars_per_s"]
    out["one_stream_chars_per_s"] = one
    top = concurrencies[-1]
    out[f"aggregate_{top}_vs_1"] = out["by_streams"][top]["aggregate_chars_per_s"] / one
    return out


def session_continuation(
    url: str, history_chars: int = 10_000, new_chars: int = 500, repeats: int = 5, max_prompt_chars: int = 4000
) -> dict:
    """Time to generate ``new_chars`` continuing a session that has read ``history_chars`` characters vs
    the same request on a fresh session (same short prompt, alternating, medians)."""
    text = prose()[100_000 : 100_000 + history_chars]
    sid, seen = None, 0
    while seen < history_chars:  # feed the history in prompt-sized pieces, generating 1 char each
        piece = text[seen : seen + max_prompt_chars]
        body = {
            "prompt": piece,
            "max_chars": 1,
            "keep_session": True,
            "seed": 1,
            **({"session_id": sid} if sid else {}),
        }
        sid = streams(url, [body])[0]["session_id"]
        seen += len(piece) + 1
    fresh, cont = [], []
    prompt = " Holmes looked up"
    for i in range(repeats + 1):  # the first pair is a warm-up
        f = streams(url, [{"prompt": prompt, "max_chars": new_chars, "temperature": 0.8, "seed": i}])[0]
        c = streams(
            url,
            [
                {
                    "prompt": prompt,
                    "max_chars": new_chars,
                    "temperature": 0.8,
                    "seed": i,
                    "session_id": sid,
                    "keep_session": True,
                }
            ],
        )[0]
        sid = c["session_id"]
        if i:
            fresh.append(f["total"])
            cont.append(c["total"])
    asyncio.run(_end(url, sid))
    # ratio_best (fastest of each) is what background load on a shared machine moves least: reading the
    # 10,000 characters again would cost ~800 ms (one-thread prefill) against ~115 ms for the whole request
    return {
        "history_chars": seen,
        "new_chars": new_chars,
        "fresh_ms": statistics.median(fresh) * 1000,
        "continued_ms": statistics.median(cont) * 1000,
        "ratio": statistics.median(cont) / statistics.median(fresh),
        "ratio_best": min(cont) / min(fresh),
    }


async def _end(url: str, sid: str) -> None:
    async with _session(1) as s:
        async with s.post(url + "/end_session", json={"session_id": sid}) as r:
            await r.read()


# ------------------------------------------------------------------ open loop (the capacity load profile)


async def _open_loop(
    url: str,
    texts: list[str],
    rate: float,
    duration: float,
    n_streams: int,
    stream_chars: int,
    warmup: float,
    max_connections: int,
) -> dict:
    """/classify requests arriving at ``rate`` per second whatever the replies do, plus ``n_streams`` generation
    streams kept open back to back. A request's latency is counted from when it was due to be sent, so a
    client (or server) falling behind shows up in the latency instead of silently lowering the rate."""
    cls_lat: list[float] = []
    cls_lag: list[float] = []  # due -> the client actually sending: the client keeping up, or not
    cls_done_in_window = 0
    cls_fail: Counter = Counter()
    cls_workers: Counter = Counter()
    st_first: list[float] = []
    st_total: list[float] = []
    st_rate: list[float] = []
    st_fail: Counter = Counter()
    st_workers: Counter = Counter()
    sent = st_chars = 0
    rng = random.Random(0)
    t_start = time.perf_counter()
    m0, t_end = t_start + warmup, t_start + warmup + duration

    async with _session(max_connections) as cs, _session(n_streams) as gs:

        async def classify(due: float, text: str) -> None:
            nonlocal cls_done_in_window
            if due >= m0:
                cls_lag.append(time.perf_counter() - due)
            try:
                async with cs.post(url + "/classify", json={"texts": [text]}) as r:
                    await r.read()
                    cls_workers[r.headers.get(WORKER_HEADER, "unknown")] += 1
                    err = None if r.status == 200 else f"HTTP {r.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                err = type(exc).__name__
            done = time.perf_counter()
            if err:
                cls_fail[err] += 1
            elif due >= m0:
                cls_lat.append(done - due)
                cls_done_in_window += done <= t_end

        async def streamer(k: int) -> None:
            nonlocal st_chars
            srng = random.Random(k)
            while time.perf_counter() < t_end:
                body = _body(srng, 200, stream_chars)
                try:
                    res = await _stream(gs, url, body)
                except (TimeoutError, RuntimeError, aiohttp.ClientError, ValueError) as exc:
                    st_fail[str(exc)[:80] or type(exc).__name__] += 1
                    await asyncio.sleep(0.05)  # a refusing server is not hammered in a tight loop
                    continue
                st_workers[res["worker"]] += 1
                if res["start"] >= m0:
                    st_first.append(res["ttfc"])
                    st_total.append(res["total"])
                    st_rate.append(res["chars"] / res["total"])
                    st_chars += res["chars"]

        streams_t = [asyncio.create_task(streamer(k)) for k in range(n_streams)]
        pending: set[asyncio.Task] = set()
        k = 0
        while True:
            due = t_start + k / rate
            if due >= t_end:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(classify(due, texts[rng.randrange(len(texts))]))
            pending.add(t)
            t.add_done_callback(pending.discard)
            k += 1
        sent = k
        await asyncio.gather(*streams_t, *list(pending))
        wall = time.perf_counter() - m0
    measured = len(cls_lat)
    return {
        "rate_rps": rate,
        "duration_s": duration,
        "warmup_s": warmup,
        "streams": n_streams,
        "stream_chars": stream_chars,
        "classify": {
            "sent": sent,
            "measured": measured,
            "failures": sum(cls_fail.values()),
            "failure_kinds": dict(cls_fail),
            "achieved_rps": cls_done_in_window / duration,
            "client_send_lag_p95_ms": pct(cls_lag, 95) * 1000,
            "p50_ms": pct(cls_lat, 50) * 1000,
            "p95_ms": pct(cls_lat, 95) * 1000,
            "p99_ms": pct(cls_lat, 99) * 1000,
            "requests_by_worker": dict(sorted(cls_workers.items())),
        },
        "generate": {
            "streams_done": len(st_total),
            "failures": sum(st_fail.values()),
            "failure_kinds": dict(st_fail),
            "first_chunk_p50_ms": pct(st_first, 50) * 1000,
            "first_chunk_p95_ms": pct(st_first, 95) * 1000,
            "p50_ms": pct(st_total, 50) * 1000,
            "p95_ms": pct(st_total, 95) * 1000,
            "p99_ms": pct(st_total, 99) * 1000,
            "per_stream_chars_per_s_p50": pct(st_rate, 50),
            "per_stream_chars_per_s_p5": pct(st_rate, 5),
            "aggregate_chars_per_s": st_chars / wall if wall > 0 else float("nan"),
            "streams_by_worker": dict(sorted(st_workers.items())),
        },
    }


def open_loop(
    url: str,
    texts: list[str],
    rate: float,
    duration: float,
    n_streams: int = 16,
    stream_chars: int = 300,
    warmup: float = 2.0,
    max_connections: int = 256,
) -> dict:
    """Open-loop /classify at ``rate`` requests/s (one article each, evenly spaced) with ``n_streams``
    concurrent /generate streams of ``stream_chars`` characters, for ``warmup`` + ``duration`` seconds;
    percentiles over requests due after the warm-up, failures over the whole run."""
    return asyncio.run(_open_loop(url, texts, rate, duration, n_streams, stream_chars, warmup, max_connections))
