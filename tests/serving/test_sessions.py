"""Session stores, beyond the contract all of them meet (test_store_contract.py): the state codec, each store's
own behaviour (SQLite's file, locking and failures; Redis against a real redis-server) and make_store."""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import sqlite3
import threading
import time

import numpy as np
import pytest
from serving_helpers import RedisServer

from runtime.generator import GenState as State  # the state the service stores
from serving.sessions import (
    MemoryStore,
    RedisStore,
    SessionBusy,
    SqliteStore,
    StoreUnavailable,
    decode_state,
    encode_state,
    make_store,
    new_session_id,
)

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")  # secrets.token_urlsafe alphabet


def run(coro):
    return asyncio.run(coro)


def test_session_ids_are_long_random_and_valid():
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    for sid in ids:
        assert len(sid) == 32 and SESSION_ID.match(sid)  # 24 random bytes = 192 bits


def test_state_codec_round_trip_and_model_check():
    rng = np.random.default_rng(5)
    st = State(
        rng.standard_normal((2, 8)).astype(np.float32),
        rng.standard_normal((2, 8)).astype(np.float32),
        rng.standard_normal(30).astype(np.float32),
        rng.bit_generator.state,
    )
    blob = encode_state(st, "model-a")
    back = decode_state(blob, State, "model-a")
    for name in ("h", "c", "logits"):
        np.testing.assert_array_equal(getattr(back, name), getattr(st, name))
        assert getattr(back, name).dtype == np.float32
    assert back.rng_state == st.rng_state
    assert decode_state(blob, State, "model-b") is None  # saved by another model version: unusable


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
        await s.save("a", b"2")  # used again: the idle clock restarts
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
        await s.save("a", b"a2")  # a is now the most recent; b the least
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
        await s.acquire("b")  # other sessions are unaffected
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
            await asyncio.sleep(0.01)  # distinct last-use scores
        await s.save("s1", b"again")
        await asyncio.sleep(0.01)
        await s.save("s4", b"s4")  # over the cap: s2 (least recently used) goes
        assert [await s.load(k) for k in ("s1", "s2", "s3", "s4")] == [b"again", None, b"s3", b"s4"]
        assert await s.count() == 3 and s.evicted == 1
        tok = await s.acquire("s1")
        with pytest.raises(SessionBusy):
            await s.acquire("s1")
        await s.release("s1", "not-the-token")  # only the holder can release
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


def raw_rows(path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_sqlite_store_is_a_wal_file_that_survives_a_restart(tmp_path):
    path = tmp_path / "sub" / "sessions.db"  # the folder is created

    async def go():
        s = SqliteStore(path, ttl_s=60, max_sessions=10)
        await s.save("a", b"state")
        assert s._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert s._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        await s.close()
        again = SqliteStore(path, ttl_s=60, max_sessions=10)  # a restarted service
        assert await again.load("a") == b"state" and await again.count() == 1
        await again.close()

    run(go())


def test_sqlite_store_deletes_expired_rows_and_dead_leases(tmp_path):
    clock = Clock()
    path = tmp_path / "s.db"
    s = SqliteStore(path, ttl_s=10, max_sessions=1000, lease_s=5, clock=clock)

    async def go():
        for i in range(50):
            await s.save(f"s{i}", bytes(9000))
        await s.acquire("s0")  # a worker killed while holding it: never released
        clock.t = 11
        assert await s.count() == 0  # expired, though still in the file
        assert raw_rows(path, "sessions") == 50 and raw_rows(path, "leases") == 1
        await s.save("new", b"x")  # every save clears what has expired
        assert raw_rows(path, "sessions") == 1 and raw_rows(path, "leases") == 0
        assert s.evicted == 0
        await s.close()

    run(go())


def test_sqlite_lease_written_before_the_clock_was_set_back_does_not_block(tmp_path):
    clock = Clock()
    clock.t = 5000.0
    s = SqliteStore(tmp_path / "s.db", ttl_s=60, max_sessions=10, lease_s=5, clock=clock)

    async def go():
        await s.acquire("a")  # then the holder dies
        clock.t = 4000.0  # and the wall clock is set back: the lease "ends" in 1005 s
        await s.release("a", await s.acquire("a"))
        held = await s.acquire("b")
        clock.t = 3996.0  # a step back shorter than a lease leaves a live lease alone
        with pytest.raises(SessionBusy):
            await s.acquire("b")
        assert await s.refresh("b", held) is True
        await s.close()

    run(go())


def hold_write_lock(path, seconds: float) -> threading.Event:
    """Another process's long write transaction, in a thread: returns once the lock is held."""
    held = threading.Event()

    def hold():
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO leases VALUES ('other', 'tok', 0)")
        held.set()
        time.sleep(seconds)
        db.execute("COMMIT")
        db.close()

    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(5)
    return held


def test_sqlite_store_waits_for_the_write_lock_without_blocking_the_event_loop(tmp_path):
    path = tmp_path / "s.db"
    s = SqliteStore(path, ttl_s=60, max_sessions=10, busy_timeout_s=5)

    async def go():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await s.save("a", b"1")
        hold_write_lock(path, 0.4)
        t0 = time.monotonic()
        assert await s.load("a") == b"1"  # WAL: reading goes on during another's write
        await s.save("b", b"2")  # waits for the lock
        waited = time.monotonic() - t0
        task.cancel()
        assert 0.3 < waited < 2.0
        assert ticks >= 15  # the loop ran on meanwhile (40 ticks if nothing else ran)
        assert await s.count() == 2
        await s.close()

    run(go())


def test_sqlite_store_locked_past_the_timeout_is_store_unavailable_then_recovers(tmp_path):
    path = tmp_path / "s.db"
    s = SqliteStore(path, ttl_s=60, max_sessions=10, busy_timeout_s=0.2)

    async def go():
        await s.save("a", b"1")
        hold_write_lock(path, 1.0)
        for write in (s.save("b", b"2"), s.acquire("a"), s.delete("a")):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match="database is locked"):
                await write
            assert 0.15 < time.monotonic() - t0 < 0.8
        assert await s.ping() is True  # reading still works
        await asyncio.sleep(1.0)  # the other transaction ends
        await s.save("b", b"2")  # no transaction was left open by the failures
        assert [await s.load("a"), await s.load("b")] == [b"1", b"2"]
        await s.release("a", await s.acquire("a"))
        await s.close()

    run(go())


def _open_store_at_the_barrier(path, barrier, results) -> None:
    barrier.wait()
    try:
        SqliteStore(path, ttl_s=60, max_sessions=10)
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))


def test_workers_starting_together_on_a_new_file_all_open_it(tmp_path):
    # Switching a new file to WAL fails with SQLITE_BUSY at once, past SQLite's busy handler: before setup was
    # retried, 4 processes opening one new file failed in 18 of 200 rounds (so ~1% that 50 rounds miss it)
    ctx = multiprocessing.get_context("fork")
    failures = []
    for r in range(50):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [
            ctx.Process(target=_open_store_at_the_barrier, args=(tmp_path / f"{r}.db", barrier, results))
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []


def test_sqlite_store_on_an_unusable_path_is_store_unavailable(tmp_path):
    (tmp_path / "not-a-db").write_bytes(b"these bytes are no sqlite database, not at all. " * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SqliteStore(tmp_path / "not-a-db", ttl_s=60, max_sessions=10)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreUnavailable):
        SqliteStore(tmp_path / "a-file" / "sessions.db", ttl_s=60, max_sessions=10)  # parent is a file

    async def go():  # the file becomes unreadable while in use
        path = tmp_path / "s.db"
        s = SqliteStore(path, ttl_s=60, max_sessions=10)
        await s.save("a", b"1")
        await s.close()
        path.write_bytes(b"\0garbage" * 1000)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        assert await s.ping() is False
        with pytest.raises(StoreUnavailable):
            await s.load("a")

    run(go())


def test_make_store_picks_redis_then_sqlite_then_memory(tmp_path):
    async def go():
        redis = make_store("redis://127.0.0.1:1/0", tmp_path / "s.db", 60, 10, lease_s=3)  # connects lazily
        sqlite = make_store("", tmp_path / "s.db", 60, 10, lease_s=4)
        memory = make_store("", None, 60, 10)
        assert [type(x) for x in (redis, sqlite, memory)] == [RedisStore, SqliteStore, MemoryStore]
        assert [x.kind for x in (redis, sqlite, memory)] == ["redis", "sqlite", "memory"]
        assert [x.LOCK_TTL_S for x in (redis, sqlite, memory)] == [3, 4, 30.0]
        for x in (redis, sqlite, memory):
            await x.close()

    run(go())
