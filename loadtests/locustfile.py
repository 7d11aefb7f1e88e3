"""Locust users for the rnntext service (run it through ``python -m loadtests.run`` / ``make loadtest``).

ClassifyUser  POST /classify with one article-length text (sometimes a batch of 8) and checks one result per text.
GenerateUser  POST /generate and reads the server-sent events to the end, checking the final ``done`` event:
              - one-shot streams,
              - sessions continued over 2-4 requests, then either ended (POST /end_session) or left to expire,
              - streams abandoned mid-way (the connection is closed after the first few events).

Reported names: ``/classify``, ``/classify [8]``, ``/generate`` (time to the last event), ``/generate (continue)``,
``/generate (abandoned)``, ``/end_session`` and ``/generate first chunk`` (type SSE: time to the first event).
Think times (1-3 s classify, 1-4 s generate) model users, not a closed-loop flood: 50 users offer roughly
15 /classify requests (~30 articles) and 5 generation streams per second; the closed-loop maximum-throughput
figures are in loadtests/bench/run.py, and load near capacity is ``python -m loadtests.run --profile capacity``
(an open-loop asyncio driver, not locust: a locust user waits for its reply, so it cannot hold an arrival rate).
Texts come from $DATA_DIR (BBC articles, Sherlock Holmes prose) when present, else generated ones.
"""

from __future__ import annotations

import json
import random
import time

from locust import HttpUser, between, task

from loadtests.sse import sse_events
from loadtests.texts import articles, prose_slice

GEN_CHARS = (80, 300)  # new characters per generation request (uniform)


def _results(doc) -> list:
    """The per-text results of a /classify reply: a list, or the list inside a one-key-list dict."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        for key in ("results", "predictions", "labels", "items"):
            if isinstance(doc.get(key), list):
                return doc[key]
    return []


class ClassifyUser(HttpUser):
    weight = 3
    wait_time = between(1.0, 3.0)  # think time: 50 users are a busy service, not a flood

    def on_start(self):
        self.rng = random.Random()
        self.texts = [t for _, t in articles()]

    def _classify(self, n: int, name: str):
        texts = self.rng.sample(self.texts, n)
        with self.client.post("/classify", json={"texts": texts}, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            try:
                got = len(_results(resp.json()))
            except ValueError:
                resp.failure("reply is not JSON")
                return
            if got != n:
                resp.failure(f"{got} results for {n} texts")

    @task(6)
    def classify_one(self):
        self._classify(1, "/classify")

    @task(1)
    def classify_batch(self):
        self._classify(8, "/classify [8]")


class GenerateUser(HttpUser):
    weight = 2
    wait_time = between(1.0, 4.0)

    def on_start(self):
        self.rng = random.Random()

    def _stream(self, body: dict, name: str, abandon_after: int | None = None) -> dict | None:
        """POST /generate, read the events; returns the last event (None on failure or when abandoned)."""
        t0 = time.perf_counter()
        last, n_events, chars = None, 0, 0
        with self.client.post("/generate", json=body, name=name, stream=True, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return None
            try:
                for ev in sse_events(resp.iter_lines(decode_unicode=True)):
                    if n_events == 0:
                        self.environment.events.request.fire(
                            request_type="SSE",
                            name="/generate first chunk",
                            response_time=(time.perf_counter() - t0) * 1000,
                            response_length=0,
                            exception=None,
                            context={},
                        )
                    n_events += 1
                    if ev.get("error"):
                        resp.failure(f"error event: {ev['error']}")
                        return None
                    chars += len(ev.get("text") or "")
                    last = ev
                    if abandon_after is not None and n_events >= abandon_after:
                        resp.close()  # walk away mid-stream: the server must notice and clean up
                        break
            except (ValueError, json.JSONDecodeError) as exc:
                resp.failure(f"bad event stream: {exc}")
                return None
            except Exception as exc:  # connection dropped mid-stream
                resp.failure(f"stream broken: {exc!r}")
                return None
            resp.request_meta["response_time"] = (time.perf_counter() - t0) * 1000
            resp.request_meta["response_length"] = chars
            if abandon_after is not None:
                if n_events == 0:
                    resp.failure("no event before the stream was abandoned")
                return None
            if not last or not last.get("done"):
                resp.failure(f"stream ended without a done event after {n_events} events")
                return None
            if body.get("keep_session") and not last.get("session_id"):
                resp.failure("keep_session asked for, but the done event has no session_id")
                return None
            return last

    def _body(self, **extra) -> dict:
        body = {
            "prompt": prose_slice(self.rng, self.rng.randint(20, 400)),
            "max_chars": self.rng.randint(*GEN_CHARS),
            "temperature": 0.8,
            "top_k": 20,
        }
        body.update(extra)
        return body

    @task(4)
    def one_shot(self):
        self._stream(self._body(seed=self.rng.randrange(1 << 30)), "/generate")

    @task(3)
    def conversation(self):
        """A session continued over several requests, then ended (2 of 3) or abandoned (left to expire)."""
        last = self._stream(self._body(keep_session=True), "/generate")
        for _ in range(self.rng.randint(1, 3)):
            if not last:
                return
            body = self._body(keep_session=True, session_id=last["session_id"])
            body["prompt"] = self.rng.choice(["", " ", "\n\n", ' "Holmes," said I, '])
            last = self._stream(body, "/generate (continue)")
        if last and self.rng.random() < 2 / 3:
            with self.client.post(
                "/end_session", json={"session_id": last["session_id"]}, name="/end_session", catch_response=True
            ) as resp:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")

    @task(1)
    def abandoned_stream(self):
        body = self._body(max_chars=2000, keep_session=self.rng.random() < 0.5)
        self._stream(body, "/generate (abandoned)", abandon_after=self.rng.randint(1, 3))
