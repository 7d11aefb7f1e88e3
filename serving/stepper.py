"""Step batching for generation: one loop advances every active stream together.

Each tick samples one character per stream (its own temperature / top-k / top-p and its own random generator)
and then runs ONE batched step of the generator for all of them (``GeneratorRuntime.advance``), so N concurrent
streams cost about one step of batch N instead of N steps of batch 1.

The loop runs in its own thread and never waits for the event loop: it hands characters over with
``call_soon_threadsafe`` and goes straight on to the next tick (ONNX Runtime releases the GIL meanwhile, so the
event loop keeps serving requests). A round trip to the event loop per tick cost more than the step itself on
a busy 2-core host, and even a one-way hand-over per character (thousands a second, each waking the event loop
and taking the GIL from the stepping thread) halved one stream's speed; so a stream's characters are handed
over at its first character, when it finishes, and otherwise at most every HANDOVER_S (the event stream sends
at most one event per 50 ms anyway). A stream's bookkeeping (``produced``, ``remaining``) is done in that
thread, under the lock, so a finished stream's state has fed exactly the characters it emitted, never one more.

A stream that is closed (finished, or its client went away) leaves the active set at once: its slot is free for
the next request even while a tick that still includes it is running; that tick's result for it is dropped.

How a stream ends (``Stream.reason``): ``length`` (``max_chars`` written), ``stop`` (its text ends with one of its
stop sequences, checked character by character here, so not one character more is generated), or ``stopped``
(``stop()``, i.e. POST /stop: it ends between two ticks, so its state covers exactly the characters it emitted).
A stream may first read ``forced`` characters through the same batched step (scoring: /score, and a prompt whose
log-probabilities are asked for), recording each one's log-probability; they are not emitted as text.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.logprobs import char_logprob, first_stop

log = logging.getLogger(__name__)
HANDOVER_S = 0.01
# The stepping thread runs at a lower CPU priority (Linux nice, per thread) than the requests: a stream is
# throughput work that takes every idle cycle, while a /classify request waits for its answer. Without it, 16
# streams next to /classify at 80% of its capacity gave /classify a p95 of 353 ms on 2 cores.
STEPPER_NICE = 10
GIVE_WAY_S = 0.02  # the longest a tick waits for this worker's /classify batch (streams never starve)
# With a decode graph a tick runs K characters per stream in one call: TICK_CHARS over the batch, at most MAX_STEPS
# (1 to 4 streams: 32 characters each, ~3 ms; 16 streams: 8 each, ~4 ms), so the per-call and per-tick costs are
# spread without making a tick long enough to delay a /classify batch or a stop() by more than a few milliseconds.
TICK_CHARS = 128
MAX_STEPS = 32


class StepperFull(Exception):
    """Every stream slot of this worker is taken."""


@dataclass(eq=False)
class Stream:
    state: Any  # a GenState: h, c, next-character logits, rng_state
    remaining: int
    temperature: float
    top_k: int | None
    top_p: float
    rng: Any  # numpy Generator, advanced only by this stream
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # str chunks, then None (end) or an Exception
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set with the last item (None or Exception)
    produced: int = 0  # characters generated (forced ones not counted)
    closed: bool = False
    pending: list = field(default_factory=list)  # characters not yet handed to the event loop
    stop: tuple[str, ...] = ()  # stop sequences
    forced: Any = None  # (F,) ids read before sampling starts, each one's log-probability recorded
    top: int | None = None  # record log-probabilities with this many alternatives (None: record none)
    logprobs: list = field(default_factory=list)  # CharLogprob per forced, then per generated character
    fed: int = 0  # forced ids read so far
    stopping: bool = False  # stop() was called: end at the next tick boundary
    reason: str | None = None  # why it ended: "length", "stop" or "stopped"
    stop_hit: str | None = None  # the stop sequence it ended with (reason "stop")
    tail: str = ""  # the last characters generated, as long as the longest stop sequence

    @property
    def forcing(self) -> bool:
        return self.forced is not None and self.fed < len(self.forced)

    def wrote(self, ch: str) -> None:
        """Count one generated character (the caller holds the stepper's lock, or owns the stream)."""
        self.produced += 1
        self.remaining -= 1
        self.pending.append(ch)
        if self.stop:
            self.tail = (self.tail + ch)[-max(map(len, self.stop)) :]
            self.stop_hit = first_stop(self.tail, self.stop)
            if self.stop_hit is not None:
                self.reason = "stop"
                return
        if self.remaining <= 0:
            self.reason = "length"


class Stepper:
    def __init__(
        self,
        runtime: Any,
        max_streams: int,
        on_tick: Callable[[int, int], None] | None = None,
        wide: Callable[[int], bool] | None = None,
        busy: Callable[[], bool] | None = None,
    ):
        self.runtime, self.max_streams = runtime, max_streams
        # (streams in the tick, characters emitted), from the thread; (0, 0) once when it falls idle
        self.on_tick = on_tick
        self.wide = wide  # (streams in the tick) -> step with the wide session?
        self.busy = busy  # () -> a request's model call is running in this worker now
        self._active: list[Stream] = []
        self._lock = threading.Lock()  # guards _active and every stream's bookkeeping
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.ticks = 0

    @property
    def active(self) -> int:
        return len(self._active)

    def open(
        self,
        state: Any,
        max_chars: int,
        rng: Any,
        temperature: float,
        top_k: int | None,
        top_p: float,
        first: str | None = None,
        stop: tuple[str, ...] = (),
        forced: Any = None,
        top: int | None = None,
        first_logprob: Any = None,
    ) -> Stream:
        """A stream of ``max_chars`` characters; ``first``: its first character, already fed to ``state`` (with
        its CharLogprob when ``top`` is set); ``forced``: ids to read first (then ``first`` must be None)."""
        stream = Stream(state, max_chars, temperature, top_k, top_p, rng, stop=tuple(stop), forced=forced, top=top)
        if first is not None:
            if first_logprob is not None:
                stream.logprobs.append(first_logprob)
            stream.wrote(first)
            stream.pending.clear()
            stream.out.put_nowait(first)
        elif not stream.forcing and max_chars <= 0:
            stream.reason = "length"
        if stream.reason is not None:  # done already: never stepped
            self._deliver([(stream, "", True)])
            return stream
        with self._lock:
            if len(self._active) >= self.max_streams:
                raise StepperFull(f"all {self.max_streams} generation slots are busy")
            self._active.append(stream)
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="stepper", daemon=True)
            self._thread.start()
        self._wake.set()
        return stream

    def stop(self, stream: Stream) -> bool:
        """End the stream at the next tick boundary (reason "stopped"): the characters it has emitted by then are
        exactly the ones its state has read. False when it has ended already. A stream still reading its forced
        characters ends when it has read them all (a state half-way through a prompt would continue nothing)."""
        with self._lock:
            if stream.closed or stream not in self._active:
                return False
            stream.stopping = True
        self._wake.set()
        return True

    def stop_all(self) -> int:
        """``stop`` every running stream (a server draining); how many were running."""
        with self._lock:
            streams = list(self._active)
        return sum(self.stop(s) for s in streams)

    def close(self, stream: Stream) -> None:
        """Free the stream's slot now (idempotent); no character is produced for it after this returns."""
        with self._lock:
            stream.closed = True
            if stream in self._active:
                self._active.remove(stream)

    # ------------------------------------------------------------ the stepping thread
    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), STEPPER_NICE)  # this thread only
        except (AttributeError, OSError):  # not Linux, or not allowed: same priority as the rest
            pass
        last_handover, stepped = 0.0, False
        while not self._stopping:
            self._wake.clear()
            with self._lock:
                batch = [s for s in self._active if not (s.stopping and not s.forcing)]
                stopped = self._end_stopped() if len(batch) < len(self._active) else []
            if stopped:
                self._hand_over(self._deliver, stopped)
            if not batch:
                if stepped and self.on_tick:
                    self.on_tick(0, 0)
                stepped = False
                self._wake.wait(1.0)
                continue
            stepped = True
            self._give_way()
            try:
                chars, commit = self._tick(batch)
            except Exception as exc:  # a failed step fails only the streams that were in it
                log.exception("generation step failed for %d streams", len(batch))
                self._hand_over(self._fail, self._take(batch), exc)
                continue
            out, emitted = [], 0
            now = time.monotonic()
            due = now - last_handover >= HANDOVER_S
            with self._lock:
                for b, (s, items) in enumerate(zip(batch, chars)):
                    if s.closed:
                        continue
                    used = wrote = 0
                    for i, record in items:  # one character (a step graph), or K (the decode graph)
                        used += 1
                        emitted += 1
                        if record is not None:
                            s.logprobs.append(record() if callable(record) else record)
                        if s.forcing:
                            s.fed += 1
                            if not s.forcing and s.remaining <= 0:
                                s.reason = "length"
                        else:
                            s.wrote(self.runtime.decode([i]))
                            wrote += 1
                        if s.reason is not None:
                            break
                    commit(b, used)  # its state has read exactly the characters counted above
                    finished = s.reason is not None
                    if finished:
                        self._active.remove(s)  # finished: its state covers exactly what it emitted
                    if due or finished or (wrote and s.produced == wrote):  # its first characters go out at once
                        out.append((s, "".join(s.pending), finished))
                        s.pending.clear()
                self.ticks += 1
            if self.on_tick:
                self.on_tick(len(batch), emitted)
            if due:
                last_handover = now
            if out:
                self._hand_over(self._deliver, out)

    def _give_way(self) -> None:
        """Wait (up to GIVE_WAY_S) while a request's model call runs in this worker: its thread and the event
        loop need the GIL that a tick's Python code holds, and a lower OS priority does not help with that."""
        if self.busy is None:
            return
        deadline = time.monotonic() + GIVE_WAY_S
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _end_stopped(self) -> list[tuple[Stream, str, bool]]:
        """Take the streams that stop() asked to end out of the active set (the caller holds the lock)."""
        out = []
        for s in [s for s in self._active if s.stopping and not s.forcing]:
            self._active.remove(s)
            s.reason = "stopped"
            out.append((s, "".join(s.pending), True))
            s.pending.clear()
        return out

    def steps_for(self, streams: int) -> int:
        """Characters per tick with a decode graph: TICK_CHARS spread over the streams, at least 1."""
        return max(1, min(MAX_STEPS, TICK_CHARS // streams))

    def _tick(self, batch: list[Stream]) -> tuple[list[list[tuple[int, Any]]], Callable[[int, int], None]]:
        """Each stream's next characters (forced ones, or samples) and their log-probability records, from ONE model
        call for the whole batch -> (per stream [(id, record)], commit(b, n): stream b keeps its first n)."""
        rt = self.runtime
        wide = bool(self.wide and self.wide(len(batch)))
        if not getattr(rt, "fused", False):  # a step graph: sample here, one character per call
            ids, records = [], []
            for s in batch:
                forcing = s.forcing  # read once: the event loop may stop the stream meanwhile, never unforce it
                i = (
                    int(s.forced[s.fed])
                    if forcing
                    else rt.sample_next(s.state.logits, s.temperature, s.top_k, s.top_p, s.rng)
                )
                ids.append(i)
                records.append(None if s.top is None else char_logprob(s.state.logits, i, s.top))
            rt.advance([s.state for s in batch], ids, wide=wide)
            return [[(i, r)] for i, r in zip(ids, records)], lambda b, n: None
        # a new stream's first ticks are short (1, 2, 4, ... characters): its first chunk is being sent meanwhile,
        # and a long tick on every core would delay it (time to first chunk: 11.4 -> 14.9 ms p50 without this)
        k = min(self.steps_for(len(batch)), max(1, min(s.produced + s.fed for s in batch)))
        forced = np.full((k, len(batch)), -1, np.int64)
        for b, s in enumerate(batch):
            if s.forcing:
                rest = s.forced[s.fed : s.fed + k]
                forced[: len(rest), b] = rest
        dec = rt.decode_steps(
            [s.state for s in batch],
            [s.rng for s in batch],
            [(s.temperature, s.top_k, s.top_p) for s in batch],
            k,
            forced,
            wide,
        )

        def record(j: int, b: int, i: int, top: int):  # computed only for the characters a stream keeps
            return lambda: char_logprob(dec.logits_before(j, b), i, top)

        ids = dec.ids.T.tolist()  # (B, K) python ints
        chars = [
            [(i, None if s.top is None else record(j, b, i, s.top)) for j, i in enumerate(ids[b])]
            for b, s in enumerate(batch)
        ]
        return chars, lambda b, n: dec.take(b, n, batch[b].state, batch[b].rng)

    def _take(self, batch: list[Stream]) -> list[Stream]:
        with self._lock:
            taken = [s for s in batch if not s.closed]
            for s in taken:
                s.closed = True
                self._active.remove(s)
        return taken

    def _hand_over(self, fn: Callable, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: the service is shutting down
            self._stopping = True

    # ------------------------------------------------------------ on the event loop
    @staticmethod
    def _deliver(out: list[tuple[Stream, str, bool]]) -> None:
        for s, text, finished in out:
            s.out.put_nowait(text)
            if finished:
                s.out.put_nowait(None)
                s.ended.set()

    @staticmethod
    def _fail(streams: list[Stream], exc: Exception) -> None:
        for s in streams:
            s.out.put_nowait(exc)
            s.ended.set()

    async def aclose(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        for s in list(self._active):
            self.close(s)
            s.out.put_nowait(None)
            s.ended.set()
