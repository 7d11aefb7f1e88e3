"""Session stores: the in-process LRU + TTL store, and the Redis store against a real redis-server."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from serving.sessions import (
    MemoryStore,
    RedisStore,
    SessionBusy,
    StoreUnavailable,
    decode_state,
    encode_state,
    new_session_id,
)
from serving.validation import SESSION_ID

from serving_helpers import RedisServer


@dataclass
class State:        # the same shape of data as runtime.generator.GenState
    h: np.ndarray
    c: np.ndarray
    logits: np.ndarray
    rng_state: dict = field(default_factory=dict)


def run(coro):
    return asyncio.run(coro)


def test_session_ids_are_long_random_and_valid():
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    for sid in ids:
        assert len(sid) == 32 and SESSION_ID.match(sid)     # 24 random bytes = 192 bits


def test_state_codec_round_trip_and_model_check():
    rng = np.random.default_rng(5)
    st = State(rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((2, 8)).astype(np.float32),
               rng.standard_normal(30).astype(np.float32), rng.bit_generator.state)
    blob = encode_state(st, "model-a")
    back = decode_state(blob, State, "model-a")
    for name in ("h", "c", "logits"):
        np.testing.assert_array_equal(getattr(back, name), getattr(st, name))
        assert getattr(back, name).dtype == np.float32
    assert back.rng_state == st.rng_state
    assert decode_state(blob, State, "model-b") is None     # saved by another model version: unusable


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_memory_store_ttl_is_idle_time():
    clock = Clock()
    s = MemoryStore(ttl_s=10, max_sessions=5, clock=clock)

    async def go():
        await s.save("a", b"1")
        clock.t = 9
        assert await s.load("a") == b"1"
        await s.save("a", b"2")         # used again: the idle clock restarts
        clock.t = 18
        assert await s.load("a") == b"2"
        assert await s.count() == 1
        clock.t = 19.01
        assert await s.load("a") is None
        assert await s.count() == 0
    run(go())


def test_memory_store_evicts_least_recently_used():
    s = MemoryStore(ttl_s=100, max_sessions=3)

    async def go():
        for sid in "abc":
            await s.save(sid, sid.encode())
        await s.save("a", b"a2")        # a is now the most recent; b the least
        await s.save("d", b"d")
        assert [await s.load(k) for k in "abcd"] == [b"a2", None, b"c", b"d"]
        assert s.evicted == 1 and await s.count() == 3
        assert await s.delete("c") is True
        assert await s.delete("c") is False
    run(go())


def test_memory_store_busy_flag():
    s = MemoryStore(ttl_s=100, max_sessions=3)

    async def go():
        tok = await s.acquire("a")
        with pytest.raises(SessionBusy):
            await s.acquire("a")
        await s.acquire("b")            # other sessions are unaffected
        await s.release("a", tok)
        await s.acquire("a")
    run(go())


@pytest.mark.redis
def test_redis_store_round_trip_eviction_and_busy(redis_server):
    async def go():
        s = RedisStore(redis_server.url, ttl_s=60, max_sessions=3, prefix=f"t{new_session_id()[:6]}:")
        assert await s.ping()
        for sid in ("s1", "s2", "s3"):
            await s.save(sid, sid.encode())
            await asyncio.sleep(0.01)   # distinct last-use scores
        await s.save("s1", b"again")
        await asyncio.sleep(0.01)
        await s.save("s4", b"s4")       # over the cap: s2 (least recently used) goes
        assert [await s.load(k) for k in ("s1", "s2", "s3", "s4")] == [b"again", None, b"s3", b"s4"]
        assert await s.count() == 3 and s.evicted == 1
        tok = await s.acquire("s1")
        with pytest.raises(SessionBusy):
            await s.acquire("s1")
        await s.release("s1", "not-the-token")      # only the holder can release
        with pytest.raises(SessionBusy):
            await s.acquire("s1")
        await s.release("s1", tok)
        await s.release("s1", await s.acquire("s1"))
        assert await s.delete("s3") is True and await s.delete("s3") is False
        assert await s.count() == 2
        await s.close()
    run(go())


@pytest.mark.redis
def test_redis_store_ttl_expiry(redis_server):
    async def go():
        s = RedisStore(redis_server.url, ttl_s=0.3, max_sessions=10, prefix=f"t{new_session_id()[:6]}:")
        await s.save("x", b"1")
        assert await s.load("x") == b"1" and await s.count() == 1
        await asyncio.sleep(0.5)
        assert await s.load("x") is None
        assert await s.count() == 0
        await s.close()
    run(go())


@pytest.mark.redis
def test_redis_store_down_is_store_unavailable():
    async def go():
        server = RedisServer()
        s = RedisStore(server.url, ttl_s=10, max_sessions=10)
        await s.save("x", b"1")
        server.stop()
        assert await s.ping() is False
        with pytest.raises(StoreUnavailable):
            await s.load("x")
        await s.close()
    run(go())
