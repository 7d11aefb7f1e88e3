"""One contract for every session store (memory, SQLite, Redis against a real redis-server), and for the two
shared ones (SQLite, Redis) what N worker processes need: a lease held in another process, a worker killed with
SIGKILL mid-stream, two processes saving at once.

The memory and SQLite stores take a fake clock, so their TTL and lease cases run instantly and exactly; Redis
keeps time itself, so its cases sleep, with a 1 s TTL and lease and at least 0.2 s of margin either side of
every deadline. Loading does not renew a session (no store implements it: every kept session ends its request
with a save, which does); ``test_lru_order_is_by_save_not_by_load`` pins that down.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.generator import GenState as State  # the state the service stores
from serving.sessions import (
    MemoryStore,
    RedisStore,
    SessionBusy,
    SqliteStore,
    decode_state,
    encode_state,
    new_session_id,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


class FakeClock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Env:
    """How one kind of store is made, and how time passes for it."""

    kind: str
    make: Callable[..., Any]  # make(ttl_s=..., max_sessions=..., lease_s=...) -> a store
    clock: FakeClock | None  # None: the store keeps real time (Redis)
    ttl_s: float  # the TTL and lease the time-dependent cases use
    lease_s: float

    async def advance(self, dt: float) -> None:
        if self.clock is None:
            await asyncio.sleep(dt)
        else:
            self.clock.t += dt


def _prefix() -> str:
    return f"t{new_session_id()[:8]}:"  # a fresh keyspace per store on the module's one redis-server


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def env(request, tmp_path) -> Env:
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        return Env(
            "redis",
            lambda ttl_s=60, max_sessions=100, lease_s=1.0: RedisStore(
                url, ttl_s, max_sessions, prefix=_prefix(), lease_s=lease_s
            ),
            None,
            1.0,
            1.0,
        )
    clock = FakeClock()
    if request.param == "sqlite":
        return Env(
            "sqlite",
            lambda ttl_s=60, max_sessions=100, lease_s=10.0: SqliteStore(
                tmp_path / "sessions.db", ttl_s, max_sessions, lease_s=lease_s, clock=clock
            ),
            clock,
            10.0,
            10.0,
        )
    return Env(
        "memory",
        lambda ttl_s=60, max_sessions=100, lease_s=10.0: MemoryStore(ttl_s, max_sessions, lease_s=lease_s, clock=clock),
        clock,
        10.0,
        10.0,
    )


def contract(max_sessions: int = 100, short_ttl: bool = False, short_lease: bool = False):
    """``async test(env, store)`` on a fresh store (TTL 60 s unless ``short_ttl``: env.ttl_s; lease 30 s unless
    ``short_lease``: env.lease_s), closed afterwards."""

    def decorate(test):
        def wrapper(env: Env):
            async def go():
                opts = {"max_sessions": max_sessions}
                opts.update({"ttl_s": env.ttl_s} if short_ttl else {})
                opts.update({"lease_s": env.lease_s} if short_lease else {})
                store = env.make(**opts)
                try:
                    await test(env, store)
                finally:
                    await store.close()

            run(go())

        # not functools.wraps: pytest would read the signature of ``test`` and look for a ``store`` fixture
        wrapper.__name__, wrapper.__doc__ = test.__name__, test.__doc__
        return wrapper

    return decorate


@contract()
async def test_round_trip_of_an_encoded_state_and_the_model_check(env, store):
    rng = np.random.default_rng(3)
    st = State(
        rng.standard_normal((2, 512)).astype(np.float32),
        rng.standard_normal((2, 512)).astype(np.float32),
        rng.standard_normal(93).astype(np.float32),
        rng.bit_generator.state,
    )
    blob = encode_state(st, "model-a")
    assert store.kind == env.kind and await store.ping() is True
    assert await store.load("s1") is None
    await store.save("s1", blob)
    back = await store.load("s1")
    assert back == blob and len(back) == len(blob)
    state = decode_state(back, State, "model-a")
    for name in ("h", "c", "logits"):
        np.testing.assert_array_equal(getattr(state, name), getattr(st, name))
    assert state.rng_state == st.rng_state
    assert decode_state(back, State, "model-b") is None  # saved by another model version
    assert await store.count() == 1 and store.evicted == 0


@contract(short_ttl=True)
async def test_ttl_is_idle_time_renewed_by_save(env, store):
    t = env.ttl_s
    await store.save("a", b"1")
    await store.save("b", b"1")
    await env.advance(0.6 * t)
    assert await store.load("a") == b"1"
    await store.save("a", b"2")  # used again: a's idle time starts over, b's does not
    await env.advance(0.6 * t)  # 1.2 ttl after the first saves, 0.6 after a's second
    assert [await store.load("a"), await store.load("b")] == [b"2", None]
    assert await store.count() == 1
    assert await store.delete("b") is False  # expired is gone, not deletable
    await env.advance(0.6 * t)
    assert await store.load("a") is None
    assert await store.count() == 0
    assert store.evicted == 0  # expiry is not eviction


@contract(max_sessions=3)
async def test_lru_cap_evicts_the_oldest_saves(env, store):
    for i in range(5):
        await store.save(f"s{i}", f"v{i}".encode())
        await env.advance(0.01)  # distinct save times (Redis scores are milliseconds)
    assert [await store.load(f"s{i}") for i in range(5)] == [None, None, b"v2", b"v3", b"v4"]
    assert store.evicted == 2 and await store.count() == 3


@contract(max_sessions=3)
async def test_lru_order_is_by_save_not_by_load(env, store):
    for sid in "abc":
        await store.save(sid, sid.encode())
        await env.advance(0.01)
    assert await store.load("a") == b"a"  # a read: a stays the least recently saved
    await store.save("d", b"d")
    await env.advance(0.01)
    assert [await store.load(k) for k in "abcd"] == [None, b"b", b"c", b"d"]
    await store.save("b", b"b2")  # a save: b becomes the most recent, c the oldest
    await env.advance(0.01)
    await store.save("e", b"e")
    assert [await store.load(k) for k in "bcde"] == [b"b2", None, b"d", b"e"]
    assert store.evicted == 2 and await store.count() == 3


@contract(max_sessions=3)
async def test_leased_sessions_are_never_evicted(env, store):
    for sid in "abc":
        await store.save(sid, sid.encode())
        await env.advance(0.01)
    token = await store.acquire("a")
    for sid in "de":
        await store.save(sid, sid.encode())
        await env.advance(0.01)
    # a is the oldest, but a stream holds it: b and c went instead
    assert [await store.load(k) for k in "abcde"] == [b"a", None, None, b"d", b"e"]
    assert await store.count() == 3 and store.evicted == 2
    await store.release("a", token)  # released, it is the oldest again and goes next
    await store.save("f", b"f")
    assert [await store.load(k) for k in "adef"] == [None, b"d", b"e", b"f"]
    assert await store.count() == 3 and store.evicted == 3


@contract()
async def test_an_owner_quota_evicts_only_the_owners_oldest_sessions(env, store):
    await store.save("alice0", b"alice", "k:alice", 2)  # the oldest of all
    await env.advance(0.01)
    bob = [f"bob{i}" for i in range(5)]
    for sid in bob:
        await store.save(sid, sid.encode(), "k:bob", 2)
        await env.advance(0.01)
    assert [await store.count("k:bob"), await store.count("k:alice"), await store.count()] == [2, 1, 3]
    assert store.evicted == 3
    assert [await store.load(sid) for sid in bob] == [None, None, None, b"bob3", b"bob4"]
    assert [await store.load("alice0", "k:alice"), await store.load("bob4", "k:bob")] == [b"alice", b"bob4"]
    assert [await store.load("bob4", "k:alice"), await store.load("alice0", "k:bob")] == [None, None]
    assert [await store.owner_of(k) for k in ("bob4", "alice0", "bob0")] == ["k:bob", "k:alice", None]


@contract()
async def test_delete_and_count(env, store):
    for sid in ("x", "y", "z"):
        await store.save(sid, b"v")
    await store.save("x", b"v2")  # a second save of the same id is still one session
    assert await store.count() == 3
    assert await store.delete("y") is True
    assert await store.delete("y") is False
    assert await store.delete("never-saved") is False
    assert await store.load("y") is None
    assert await store.count() == 2
    assert [await store.load("x"), await store.load("z")] == [b"v2", b"v"]


@contract()
async def test_busy_lease_is_released_only_by_its_token(env, store):
    tok = await store.acquire("a")
    with pytest.raises(SessionBusy):
        await store.acquire("a")
    other = await store.acquire("b")  # other sessions are not affected
    await store.release("a", "not-the-token")
    assert await store.refresh("a", "not-the-token") is False
    with pytest.raises(SessionBusy):
        await store.acquire("a")
    await store.release("a", tok)
    tok2 = await store.acquire("a")
    assert tok2 != tok
    await store.release("a", tok)  # the old token again: the new holder keeps the lease
    with pytest.raises(SessionBusy):
        await store.acquire("a")
    await store.release("a", tok2)
    await store.release("b", other)
    await store.release("a", await store.acquire("a"))


@contract(short_lease=True)
async def test_lease_expires_after_lease_s(env, store):
    assert store.LOCK_TTL_S == env.lease_s
    dead = await store.acquire("a")  # a holder that never comes back
    await env.advance(0.5 * env.lease_s)
    with pytest.raises(SessionBusy):
        await store.acquire("a")
    await env.advance(0.7 * env.lease_s)  # 1.2 lease_s after the acquire
    tok = await store.acquire("a")
    assert await store.refresh("a", dead) is False  # the lost holder cannot take it back
    await store.release("a", dead)
    with pytest.raises(SessionBusy):
        await store.acquire("a")
    await store.release("a", tok)


@contract(short_lease=True)
async def test_refresh_extends_a_lease(env, store):
    tok = await store.acquire("a")
    await env.advance(0.6 * env.lease_s)
    assert await store.refresh("a", tok) is True
    await env.advance(0.6 * env.lease_s)  # past the first lease's end, inside the refreshed one
    with pytest.raises(SessionBusy):
        await store.acquire("a")
    await env.advance(0.6 * env.lease_s)  # 1.2 lease_s after the refresh
    assert await store.refresh("a", tok) is False  # expired: refresh does not revive it
    await store.release("a", await store.acquire("a"))


@contract(short_lease=True)
async def test_a_flag_is_taken_once_and_lapses(env, store):
    """Stop requests for a stream on another worker (serving/generation.py): raised by one, taken by the other."""
    assert await store.take_flag("stop:a") is False
    await store.set_flag("stop:a", env.lease_s)
    await store.set_flag("stop:b", env.lease_s)
    assert await store.take_flag("stop:a") is True
    assert await store.take_flag("stop:a") is False  # taken: lowered
    await store.set_flag("stop:c", 0.5 * env.lease_s)
    await env.advance(0.7 * env.lease_s)
    assert await store.take_flag("stop:c") is False  # lapsed before anyone took it
    assert await store.take_flag("stop:b") is True
    assert await store.count() == 0  # flags are not sessions


# ---------------------------------------------------------------- several processes on one shared store
CHILD = r"""
import asyncio, json, sys, time
from serving.sessions import RedisStore, SessionBusy, SqliteStore

cfg = json.loads(sys.argv[1])

def say(*words):
    print(*words, flush=True)

async def main():
    if cfg["kind"] == "redis":
        s = RedisStore(cfg["url"], 60, 100000, prefix=cfg["prefix"], lease_s=cfg["lease_s"])
    else:
        s = SqliteStore(cfg["path"], 60, 100000, lease_s=cfg["lease_s"])
    act = cfg["action"]
    if act == "hold":           # take the lease, give it back when told
        tok = await s.acquire(cfg["sid"])
        say("held")
        sys.stdin.readline()
        await s.release(cfg["sid"], tok)
        say("released")
    elif act == "churn":        # a worker mid-stream: holds a lease, writes on, until it is killed
        await s.acquire(cfg["sid"])
        await s.save("churn", b"churn-0")
        say("ready")
        i = 0
        while True:
            i += 1
            await s.save("churn", b"churn-%d" % i)
    elif act == "save":         # many sessions, each under its lease, as fast as it can
        say("ready")
        sys.stdin.readline()
        for i in range(cfg["n"]):
            sid = "%s-%d" % (cfg["tag"], i)
            tok = await s.acquire(sid)
            await s.save(sid, ("%s:%d;" % (cfg["tag"], i)).encode() * 40)
            await s.release(sid, tok)
        say("done")
    await s.close()

asyncio.run(main())
"""


@dataclass
class Shared:
    """A shared store as this process and its child processes (running CHILD) open it."""

    kind: str
    cfg: dict
    procs: list = field(default_factory=list)

    def make(self, lease_s: float = 1.0):
        if self.kind == "redis":
            return RedisStore(self.cfg["url"], 60, 100000, prefix=self.cfg["prefix"], lease_s=lease_s)
        return SqliteStore(self.cfg["path"], 60, 100000, lease_s=lease_s)

    def child(self, action: str, lease_s: float = 1.0, **kw) -> subprocess.Popen:
        cfg = {**self.cfg, "kind": self.kind, "action": action, "lease_s": lease_s, **kw}
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg)],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def stop_children(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def expect(proc: subprocess.Popen, line: str) -> None:
    got = proc.stdout.readline().strip()
    assert got == line, f"child said {got!r} (exit {proc.poll()})"


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def shared(request, tmp_path):
    if request.param == "redis":
        cfg = {"url": request.getfixturevalue("redis_server").url, "prefix": _prefix()}
    else:
        cfg = {"path": str(tmp_path / "sessions.db")}
    sh = Shared(request.param, cfg)
    yield sh
    sh.stop_children()


def test_a_lease_held_in_another_process_is_busy_here(shared):
    async def go():
        store = shared.make()
        child = shared.child("hold", sid="s1")
        expect(child, "held")
        with pytest.raises(SessionBusy):
            await store.acquire("s1")
        await store.release("s2", await store.acquire("s2"))  # only that session
        child.stdin.write("\n")
        child.stdin.flush()
        expect(child, "released")
        await store.release("s1", await store.acquire("s1"))
        assert child.wait(10) == 0
        await store.close()

    run(go())


def test_a_worker_killed_mid_stream_frees_its_lease_within_lease_s(shared):
    lease_s = 1.0

    async def go():
        store = shared.make(lease_s)
        kept = {f"keep-{i}": os.urandom(9000) for i in range(3)}
        for sid, blob in kept.items():
            await store.save(sid, blob)
        child = shared.child("churn", lease_s, sid="held")
        expect(child, "ready")
        child.kill()  # SIGKILL, while it writes on
        killed = time.monotonic()
        assert child.wait(10) == -9
        with pytest.raises(SessionBusy):
            await store.acquire("held")
        while True:
            try:
                tok = await store.acquire("held")
                break
            except SessionBusy:
                assert time.monotonic() - killed < lease_s + 0.5, "the dead worker's lease did not expire"
                await asyncio.sleep(0.02)
        await store.release("held", tok)
        for sid, blob in kept.items():
            assert await store.load(sid) == blob
        assert (await store.load("churn")).startswith(b"churn-")
        assert await store.count() == 4
        await store.save("after", b"x")  # the store still takes writes
        assert await store.load("after") == b"x" and await store.count() == 5
        await store.close()
        if shared.kind == "sqlite":
            with sqlite3.connect(shared.cfg["path"]) as db:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    run(go())


def test_two_processes_saving_at_once_lose_nothing(shared):
    n = 300
    # both open the store (for SQLite: a new file, created by whichever comes first) before either writes
    children = [shared.child("save", tag=tag, n=n) for tag in ("p0", "p1")]
    for c in children:
        expect(c, "ready")
    for c in children:
        c.stdin.write("go\n")
        c.stdin.flush()
    for c in children:
        expect(c, "done")
        assert c.wait(20) == 0

    async def go():
        store = shared.make()
        assert await store.count() == 2 * n
        for tag in ("p0", "p1"):
            for i in range(n):
                assert await store.load(f"{tag}-{i}") == f"{tag}:{i};".encode() * 40
        await store.close()

    run(go())
