"""Step batching for generation: one asyncio task advances every active stream together.

Each tick samples one character per stream (its own temperature / top-k / top-p and its own random generator)
and then runs ONE batched step of the generator for all of them (``GeneratorRuntime.advance``), so N concurrent
streams cost about one step of batch N instead of N steps of batch 1. The tick runs in a dedicated thread (ONNX
Runtime releases the GIL), so the event loop keeps serving requests meanwhile.

A stream that is closed (finished, or its client went away) leaves the active set at once: its slot is free for
the next request even while a tick that still includes it is running; that tick's result for it is dropped.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


class StepperFull(Exception):
    """Every stream slot of this worker is taken."""


@dataclass(eq=False)
class Stream:
    state: Any                  # a GenState: h, c, next-character logits, rng_state
    remaining: int
    temperature: float
    top_k: int | None
    top_p: float
    rng: Any                    # numpy Generator, advanced only by this stream
    out: asyncio.Queue = field(default_factory=asyncio.Queue)   # str chunks, then None (end) or an Exception
    produced: int = 0
    closed: bool = False


class Stepper:
    def __init__(self, runtime: Any, max_streams: int,
                 on_tick: Callable[[int, int], None] | None = None):
        self.runtime, self.max_streams = runtime, max_streams
        self.on_tick = on_tick                  # (streams in the tick, characters emitted) for the metrics
        self._active: list[Stream] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # one thread: ticks are sequential by design, and they must not queue behind classifier batches
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepper")
        self.ticks = 0

    @property
    def active(self) -> int:
        return len(self._active)

    def open(self, state: Any, max_chars: int, rng: Any, temperature: float, top_k: int | None,
             top_p: float) -> Stream:
        if len(self._active) >= self.max_streams:
            raise StepperFull(f"all {self.max_streams} generation slots are busy")
        stream = Stream(state, max_chars, temperature, top_k, top_p, rng)
        self._active.append(stream)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stepper")
        self._wake.set()
        return stream

    def close(self, stream: Stream) -> None:
        """Free the stream's slot now (idempotent)."""
        stream.closed = True
        if stream in self._active:
            self._active.remove(stream)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self._active)
            try:
                ids = await loop.run_in_executor(self._pool, self._tick, batch)
            except Exception as exc:  # a failed step fails only the streams that were in it
                log.exception("generation step failed for %d streams", len(batch))
                for s in batch:
                    self.close(s)
                    s.out.put_nowait(exc)
                continue
            self.ticks += 1
            emitted = 0
            for s, i in zip(batch, ids):
                if s.closed:
                    continue
                s.out.put_nowait(self.runtime.decode([i]))
                s.produced += 1
                s.remaining -= 1
                emitted += 1
                if s.remaining <= 0:
                    self.close(s)
                    s.out.put_nowait(None)
            if self.on_tick:
                self.on_tick(len(batch), emitted)

    def _tick(self, batch: list[Stream]) -> list[int]:
        """Worker thread: sample each stream's next character, then feed them all through one batched step."""
        rt = self.runtime
        ids = [rt.sample_next(s.state.logits, s.temperature, s.top_k, s.top_p, s.rng) for s in batch]
        rt.advance([s.state for s in batch], ids)
        return ids

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for s in list(self._active):
            self.close(s)
            s.out.put_nowait(None)
        self._pool.shutdown(wait=False, cancel_futures=True)
