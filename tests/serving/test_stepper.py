"""The step batcher with a small deterministic stand-in for GeneratorRuntime (no ONNX needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from runtime.generator import sample_next
from serving.stepper import Stepper, StepperFull

VOCAB = "abcdefghij"


@dataclass
class State:
    h: np.ndarray
    logits: np.ndarray


class FakeRuntime:
    """Next-character logits depend on the whole history through h, so any mix-up between streams shows."""

    def __init__(self, step_s: float = 0.0, gate: threading.Event | None = None):
        self.step_s, self.gate = step_s, gate
        self.batches: list[int] = []
        self.fail = False

    def start(self, seed_value: float) -> State:
        s = State(np.array([seed_value]), np.zeros(len(VOCAB)))
        self._update(s)
        return s

    @staticmethod
    def _update(s: State) -> None:
        k = np.arange(len(VOCAB))
        s.logits = np.cos(k * (1.0 + s.h[0]) * 1.7) * 3

    def sample_next(self, logits, temperature, top_k, top_p, rng):
        return sample_next(logits, temperature, top_k, top_p, rng)

    def advance(self, states, ids, wide=False):
        if self.fail:
            raise RuntimeError("step failed")
        if self.gate is not None:
            self.gate.wait(10)  # hold the first tick until the test has opened all its streams
        self.batches.append(len(states))
        if self.step_s:
            time.sleep(self.step_s)
        for s, i in zip(states, ids):
            s.h = np.array([(s.h[0] * 0.61 + i * 0.37) % 5.0])
            self._update(s)

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)


def reference(rt: FakeRuntime, seed_value: float, n: int, temperature: float, seed: int) -> str:
    """The same stream generated alone, one plain step at a time."""
    s, rng, out = rt.start(seed_value), np.random.default_rng(seed), []
    for _ in range(n):
        i = rt.sample_next(s.logits, temperature, None, 1.0, rng)
        out.append(i)
        rt.advance([s], [i])
    return rt.decode(out)


async def collect(stream) -> str:
    parts = []
    while True:
        item = await stream.out.get()
        if item is None:
            return "".join(parts)
        if isinstance(item, Exception):
            raise item
        parts.append(item)


def test_concurrent_streams_are_batched_and_independent():
    rt = FakeRuntime(gate=threading.Event())
    params = [(0.1 * i, 20 + i, 0.0 if i % 2 else 0.9, i) for i in range(16)]  # greedy and sampled mixed
    expected = [reference(FakeRuntime(), v, n, t, seed) for v, n, t, seed in params]

    async def go():
        st = Stepper(rt, max_streams=16)
        streams = [st.open(rt.start(v), n, np.random.default_rng(seed), t, None, 1.0) for v, n, t, seed in params]
        rt.gate.set()
        texts = await asyncio.gather(*(collect(s) for s in streams))
        assert st.active == 0
        await st.aclose()
        return texts

    texts = asyncio.run(go())
    assert texts == expected
    assert [len(t) for t in texts] == [n for _, n, _, _ in params]
    # one batched step per tick: ~35 ticks (the longest stream) instead of sum(20..35) = 440 single steps
    # (the stepping thread may take its first tick before the other 15 streams have joined)
    assert 35 <= len(rt.batches) <= 36
    assert rt.batches.count(16) >= 19 and rt.batches[-1] == 1
    assert sum(rt.batches) == sum(n for _, n, _, _ in params)  # no stream stepped past its max_chars


def test_close_frees_the_slot_at_once_and_full_is_refused():
    rt = FakeRuntime(step_s=0.01)

    async def go():
        st = Stepper(rt, max_streams=2)
        a = st.open(rt.start(0.0), 1000, np.random.default_rng(0), 0.0, None, 1.0)
        b = st.open(rt.start(1.0), 1000, np.random.default_rng(1), 0.0, None, 1.0)
        with pytest.raises(StepperFull):
            st.open(rt.start(2.0), 10, np.random.default_rng(2), 0.0, None, 1.0)
        await a.out.get()  # a is running
        st.close(a)  # its client went away
        assert st.active == 1
        c = st.open(rt.start(2.0), 5, np.random.default_rng(2), 0.0, None, 1.0)  # the slot is free again
        assert len(await collect(c)) == 5
        produced = a.produced
        await asyncio.sleep(0.05)
        assert a.produced == produced  # a is not advanced any more
        st.close(b)
        await st.aclose()

    asyncio.run(go())


def test_failed_step_fails_its_streams_and_the_loop_goes_on():
    rt = FakeRuntime()

    async def go():
        st = Stepper(rt, max_streams=4)
        rt.fail = True
        s = st.open(rt.start(0.0), 5, np.random.default_rng(0), 0.0, None, 1.0)
        with pytest.raises(RuntimeError, match="step failed"):
            await collect(s)
        assert st.active == 0
        rt.fail = False
        s = st.open(rt.start(0.0), 5, np.random.default_rng(0), 0.0, None, 1.0)
        assert await collect(s) == reference(FakeRuntime(), 0.0, 5, 0.0, 0)
        await st.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("busy, lo, hi", [(False, 0.0, 0.05), (True, 9 * 0.02, 1.0)])
def test_ticks_give_way_to_a_running_request_but_never_starve(busy, lo, hi):
    """While the worker runs a /classify batch the stepper waits before each tick, at most GIVE_WAY_S (20 ms)."""
    from serving import stepper as stepper_module

    assert stepper_module.GIVE_WAY_S == 0.02
    rt = FakeRuntime()

    async def main():
        st = Stepper(rt, 4, busy=lambda: busy)
        try:
            t0 = time.perf_counter()
            text = await collect(st.open(rt.start(0.3), 10, np.random.default_rng(1), 0.0, None, 1.0))
            return text, time.perf_counter() - t0
        finally:
            await st.aclose()

    text, took = asyncio.run(main())
    assert text == reference(rt, 0.3, 10, 0.0, 1)  # the same text either way
    assert lo <= took < hi, took


def test_a_stop_sequence_ends_the_stream_on_its_last_character():
    rt = FakeRuntime()
    whole = reference(FakeRuntime(), 0.3, 200, 0.9, 5)
    stop = whole[40:42]  # two characters the sampled text writes, first ending at or before position 42
    end = whole.index(stop) + len(stop)

    async def go():
        st = Stepper(rt, max_streams=4)
        s = st.open(rt.start(0.3), 200, np.random.default_rng(5), 0.9, None, 1.0, stop=("zzz", stop))
        text = await collect(s)
        await st.aclose()
        return s, text

    s, text = asyncio.run(go())
    assert text == whole[:end]  # the stepper emits it; the event layer holds it back (runtime.logprobs.StopText)
    assert (s.reason, s.stop_hit, s.produced) == ("stop", stop, end)
    assert sum(rt.batches) == end  # not one step more


def test_stop_ends_between_ticks_and_the_state_covers_exactly_what_was_emitted():
    """POST /stop: a stream stopped after N characters continues exactly as the uninterrupted one."""
    rt = FakeRuntime(step_s=0.002)
    whole = reference(FakeRuntime(), 0.7, 300, 0.0, 0)

    async def go():
        st = Stepper(rt, max_streams=4)
        s = st.open(rt.start(0.7), 300, np.random.default_rng(0), 0.0, None, 1.0)
        while s.produced < 20:
            await asyncio.sleep(0.005)
        assert st.stop(s) is True
        text = await collect(s)
        assert st.stop(s) is False  # ended already
        rest = st.open(s.state, 300 - len(text), s.rng, 0.0, None, 1.0)  # continue from its state
        more = await collect(rest)
        await st.aclose()
        return s, text, more

    s, text, more = asyncio.run(go())
    assert s.reason == "stopped" and 20 <= s.produced == len(text) < 300
    assert text + more == whole


def test_forced_characters_are_read_and_scored_then_sampling_goes_on():
    """Scoring (/score, echo with logprobs): forced ids go through the same batched step; the log-probability of
    each comes from the logits before it, exactly as a plain loop computes them."""
    from runtime.logprobs import log_softmax

    rt = FakeRuntime()
    forced = np.array([3, 1, 4, 1, 5], np.int64)
    plain, expected = rt.start(0.2), []
    for i in forced:
        expected.append(log_softmax(plain.logits)[i])
        rt.advance([plain], [int(i)])
    after = rt.decode([int(np.argmax(plain.logits))])  # greedy continues from the state after the forced ids

    async def go():
        st = Stepper(rt, max_streams=4)
        score = st.open(rt.start(0.2), 0, None, 0.0, None, 1.0, forced=forced, top=2)
        both = st.open(rt.start(0.2), 1, None, 0.0, None, 1.0, forced=forced, top=0)
        texts = await asyncio.gather(collect(score), collect(both))
        await st.aclose()
        return score, both, texts

    score, both, texts = asyncio.run(go())
    assert texts == ["", after]
    assert (score.reason, score.produced, both.produced) == ("length", 0, 1)
    assert [r.id for r in score.logprobs] == forced.tolist()
    assert [r.logprob for r in score.logprobs] == pytest.approx(expected, abs=1e-12)
    assert all(len(r.top) == 2 and r.top[0][1] >= r.top[1][1] for r in score.logprobs)
    assert len(both.logprobs) == 6 and both.logprobs[-1].id == VOCAB.index(after)
