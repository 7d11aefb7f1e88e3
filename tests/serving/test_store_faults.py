"""The Redis session and quota stores when Redis fails, against real redis-servers (no mocks).

Every Redis error in a store call must become ``StoreUnavailable`` (answered 503), never another exception (a
500): maxmemory reached (OOM), a primary demoted to a read-only replica (READONLY), an ACL user lacking commands
or keys (NOPERM) or a wrong password, and a server that is gone. ``ping`` answers a bool and never raises. The
quotas (``Quotas`` over ``RedisQuotas``) never raise at all: while Redis fails they fall back to the worker's
own limiter.

Then what the save script's atomic eviction guarantees: workers saving at once evict exactly the surplus, and
prefixes keep deployments apart (that leased sessions are never evicted, and that an owner's quota evicts only that
owner's sessions, is in the contract every store passes: tests/serving/test_store_contract.py).

This module runs its own redis-server (not the shared ``redis_server`` fixture), so CONFIG / ACL / REPLICAOF
changes cannot leak into other modules; every test also undoes its own changes, and the database is flushed
before each test.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from serving_helpers import RedisServer

from serving.quotas import Quotas, RedisQuotas
from serving.sessions import RedisStore, StoreUnavailable, new_session_id

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

STORE_OPS = ("save", "load", "owner_of", "count", "acquire", "release", "refresh", "delete")


def run(coro):
    return asyncio.run(coro)


def _prefix() -> str:
    return f"t{new_session_id()[:8]}:"


def make_store(url: str, prefix: str | None = None, max_sessions: int = 100) -> RedisStore:
    return RedisStore(url, ttl_s=60, max_sessions=max_sessions, prefix=prefix or _prefix(), lease_s=5)


def op(store: RedisStore, name: str, sid: str, token: str = "0123456789abcdef"):
    """One store call on ``sid``, as a coroutine."""
    return {
        "save": lambda: store.save(sid, b"state", "k:bob", 2),
        "load": lambda: store.load(sid),
        "owner_of": lambda: store.owner_of(sid),
        "count": lambda: store.count(),
        "acquire": lambda: store.acquire(sid),
        "release": lambda: store.release(sid, token),
        "refresh": lambda: store.refresh(sid, token),
        "delete": lambda: store.delete(sid),
    }[name]()


async def assert_unavailable(store: RedisStore, names, sid: str, token: str = "0123456789abcdef") -> None:
    """Each call raises StoreUnavailable; any other exception propagates out of pytest.raises and fails."""
    for name in names:
        with pytest.raises(StoreUnavailable):
            await op(store, name, sid, token)


async def assert_quotas_fall_back(store: RedisStore) -> None:
    """Quotas over a failing Redis answer from the worker's own limiter, and never raise."""
    quotas = Quotas(RedisQuotas(store.redis, store.prefix), lease_s=5)
    waits = [await quotas.take("k:bob", 10, 2) for _ in range(3)]
    assert waits[:2] == [0.0, 0.0]  # a full bucket of 2
    assert 0 < waits[2] <= 0.1  # empty: the next token in at most 1/rate s
    assert quotas.fallbacks == 3
    assert await quotas.open_stream("k:bob", "s1", 1) is True
    assert await quotas.open_stream("k:bob", "s2", 1) is False  # the local limiter enforces the limit
    assert quotas.fallbacks == 5
    await quotas.refresh_stream("k:bob", "s1")
    assert quotas.fallbacks == 6
    await quotas.close_stream("k:bob", "s1")  # swallows the shared store's error: its lease lapses
    assert quotas.fallbacks == 6
    assert await quotas.open_stream("k:bob", "s2", 1) is True  # the local slot was freed
    assert quotas.fallbacks == 7
    assert await quotas.take("k:anon", 0, 0) == 0.0  # rate 0: never limited, store not asked
    assert quotas.fallbacks == 7


@pytest.fixture(scope="module")
def rserver():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def admin(rserver):
    """A plain sync client for admin commands; the database is empty when a test starts."""
    client = redis.Redis.from_url(rserver.url)
    client.flushall()
    yield client
    client.close()


def wait_until(check, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------- faults
def test_maxmemory_reached(rserver, admin):
    """At maxmemory with ``noeviction``, Redis refuses the commands that may grow memory (OutOfMemoryError).

    Exactly what happens (Redis 7):
    * ``save`` and ``acquire`` raise StoreUnavailable: HSET (the save script's first write) and SET are
      denied-on-OOM commands. So does ``count``: Redis 7 refuses any command queued in MULTI at OOM, and
      count is a MULTI (ZREMRANGEBYSCORE + ZCARD).
    * ``load``, ``owner_of`` and ``ping`` work (reads), and so do ``refresh`` (PEXPIRE), ``release`` and
      ``delete`` (DEL, ZREM): writes that cannot grow memory are allowed.
    * Quotas: ``take`` (HSET) and ``refresh_stream`` (ZADD first) fall back to the local limiter. But
      ``open_stream`` is still served by Redis: its script writes first with ZREMRANGEBYSCORE (allowed),
      and Redis lets a script that has already written go on past maxmemory (it cannot stop half-way), so
      its ZADD succeeds: no fallback, and the shared limit stays enforced.
    """
    prefix = _prefix()
    saved = {k: v for k, v in admin.config_get("maxmemory*").items() if k in ("maxmemory", "maxmemory-policy")}

    async def main():
        store = make_store(rserver.url, prefix)
        try:
            await store.save("kept", b"kept-state", "k:bob")
            token = await store.acquire("kept")
            admin.set("filler", b"x" * 2_000_000)
            used = admin.info("memory")["used_memory"]
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", used // 2)

            await assert_unavailable(store, ["save", "acquire", "count"], "new")
            with pytest.raises(StoreUnavailable):  # overwriting an existing session too
                await store.save("kept", b"kept-state-2", "k:bob")
            assert await store.load("kept") == b"kept-state"
            assert await store.load("kept", "k:bob") == b"kept-state"
            assert await store.owner_of("kept") == "k:bob"
            assert await store.load("new") is None
            assert await store.ping() is True
            assert await store.refresh("kept", token) is True
            await store.release("kept", token)
            assert admin.exists(f"{prefix}lock:kept") == 0
            assert await store.delete("kept") is True
            assert await store.load("kept") is None

            quotas = Quotas(RedisQuotas(store.redis, store.prefix), lease_s=5)
            waits = [await quotas.take("k:bob", 10, 2) for _ in range(3)]
            assert waits[:2] == [0.0, 0.0] and 0 < waits[2] <= 0.1
            assert quotas.fallbacks == 3
            assert await quotas.open_stream("k:bob", "s1", 1) is True
            assert await quotas.open_stream("k:bob", "s2", 1) is False
            assert quotas.fallbacks == 3  # served by Redis (see above)
            assert admin.zrange(f"{prefix}streams:k:bob", 0, -1) == [b"s1"]
            await quotas.refresh_stream("k:bob", "s1")
            assert quotas.fallbacks == 4
            await quotas.close_stream("k:bob", "s1")  # ZREM: allowed at OOM
            assert admin.exists(f"{prefix}streams:k:bob") == 0
            assert quotas.fallbacks == 4
        finally:
            for key, value in saved.items():
                admin.config_set(key, value)
            admin.delete("filler")
            await store.close()

    run(main())
    assert {k: v for k, v in admin.config_get("maxmemory*").items() if k in saved} == saved

    # and the store works again
    async def after():
        store = make_store(rserver.url, prefix)
        try:
            await store.save("again", b"s")
            assert await store.count() == 1
        finally:
            await store.close()

    run(after())


def test_read_only_replica(rserver, admin):
    """The store's server demoted to a replica of another (as after a failover): every write is READONLY.

    ``save``, ``acquire``, ``release``, ``refresh``, ``delete`` and also ``count`` (its MULTI holds a
    ZREMRANGEBYSCORE, a write) raise StoreUnavailable; ``load``, ``owner_of`` and ``ping`` still read. The
    lease is seeded on the primary so that release/refresh, holding the right token, do reach their write (a
    script that writes nothing, e.g. release with a stale token, runs fine on a replica).
    """
    prefix = _prefix()
    primary = RedisServer()
    primary_admin = redis.Redis.from_url(primary.url)
    read_only = admin.config_get("replica-read-only")["replica-read-only"]
    try:
        primary_admin.config_set("repl-diskless-sync-delay", 0)  # sync now, not in 5 s
        primary_admin.hset(f"{prefix}sess:s1", mapping={"b": b"state", "o": "k:bob"})
        primary_admin.zadd(f"{prefix}lru", {"s1": int(time.time() * 1000)})
        primary_admin.set(f"{prefix}lock:s1", "tok", px=60_000)
        admin.config_set("replica-read-only", "yes")
        admin.replicaof("127.0.0.1", primary.port)

        def synced() -> bool:
            info = admin.info("replication")
            return (
                info["role"] == "slave"
                and info.get("master_link_status") == "up"
                and admin.exists(f"{prefix}lock:s1") == 1
            )

        wait_until(synced, what="the replica to sync")

        async def main():
            store = make_store(rserver.url, prefix)
            try:
                await assert_unavailable(
                    store, ["save", "acquire", "release", "refresh", "delete", "count"], "s1", token="tok"
                )
                await assert_unavailable(store, ["save", "acquire", "delete"], "s2")
                assert await store.load("s1") == b"state"
                assert await store.load("s1", "k:alice") is None
                assert await store.owner_of("s1") == "k:bob"
                assert isinstance(await store.ping(), bool)
                assert await store.ping() is True
                await store.release("s1", "stale-token")  # writes nothing: no error
                assert await store.refresh("s1", "stale-token") is False
                await assert_quotas_fall_back(store)
            finally:
                await store.close()

        run(main())
        assert primary_admin.get(f"{prefix}lock:s1") == b"tok"  # nothing written anywhere
    finally:
        admin.replicaof("NO", "ONE")
        admin.config_set("replica-read-only", read_only)
        primary_admin.close()
        primary.stop()
    assert admin.info("replication")["role"] == "master"


ACL_CASES = {
    # rules for user "limited", its password in the URL, what ping answers
    "ping-and-get-only": (["on", ">pw", "~*", "+ping", "+get"], "pw", True),
    "other-keys-only": (["on", ">pw", "~other:*", "+@all"], "pw", True),
    "no-commands": (["on", ">pw", "~*", "-@all"], "pw", False),
    "wrong-password": (["on", ">pw", "~*", "+@all"], "wrong", False),
    "disabled-user": (["off", ">pw", "~*", "+@all"], "pw", False),
}


@pytest.mark.parametrize("case", list(ACL_CASES))
def test_acl_user_without_permission(rserver, admin, case):
    """NOPERM (a command or a key the user may not use) and a failed AUTH: every call is StoreUnavailable."""
    rules, password, pings = ACL_CASES[case]
    admin.execute_command("ACL", "SETUSER", "limited", *rules)
    try:

        async def main():
            store = make_store(f"redis://limited:{password}@127.0.0.1:{rserver.port}/0")
            try:
                await assert_unavailable(store, STORE_OPS, "s1")
                assert await store.ping() is pings
                await assert_quotas_fall_back(store)
            finally:
                await store.close()

        run(main())
        assert admin.dbsize() == 0  # nothing was written
    finally:
        admin.acl_deluser("limited")
    assert b"limited" not in admin.acl_users()


@pytest.mark.parametrize("when", ["after-use", "before-first-call"])
def test_server_down(when):
    """A server that is gone (killed after the store was used, or never reachable): ConnectionError."""
    server = RedisServer()

    async def main():
        store = make_store(server.url)
        try:
            if when == "after-use":
                await store.save("s1", b"state", "k:bob")
                token = await store.acquire("s1")
                assert await store.count() == 1
            else:
                token = "0123456789abcdef"
            server.stop()
            await assert_unavailable(store, STORE_OPS, "s1", token)
            assert await store.ping() is False
            await assert_quotas_fall_back(store)
        finally:
            await store.close()

    try:
        if when == "before-first-call":
            server.stop()
        run(main())
    finally:
        server.stop()


# ---------------------------------------------------------------- atomic eviction
@pytest.mark.parametrize("per_worker", ["many-at-once", "one-at-a-time"])
def test_concurrent_saves_evict_exactly_the_surplus(rserver, admin, per_worker):
    """20 saves at once from 4 workers (4 clients) over a full store of 10. ``many-at-once``: all 20 in one
    ``gather``, so each worker has 5 saves in flight (several connections each); ``one-at-a-time``: each worker
    saves its 5 in turn, the 4 workers at once."""
    prefix = _prefix()
    old = [f"old{i:02d}" for i in range(10)]
    new = [f"new{i:02d}" for i in range(20)]

    async def worker(store, sids):
        for sid in sids:
            await store.save(sid, b"new")

    async def main():
        stores = [make_store(rserver.url, prefix, max_sessions=10) for _ in range(4)]
        try:
            for sid in old:
                await stores[0].save(sid, b"old")
            assert await stores[0].count() == 10
            assert stores[0].evicted == 0
            await asyncio.sleep(0.005)  # every old session strictly older than every new one
            if per_worker == "many-at-once":
                await asyncio.gather(*(stores[i % 4].save(sid, b"new") for i, sid in enumerate(new)))
            else:
                await asyncio.gather(*(worker(s, new[i::4]) for i, s in enumerate(stores)))
            assert await stores[1].count() == 10
            # the sorted set and the session hashes agree
            members = sorted(m.decode() for m in admin.zrange(f"{prefix}lru", 0, -1))
            keys = sorted(k.decode()[len(f"{prefix}sess:") :] for k in admin.keys(f"{prefix}sess:*"))
            assert members == keys
            assert len(keys) == 10
            assert set(keys) <= set(new)  # the 10 oldest went first
            assert [await stores[2].load(sid) for sid in old] == [None] * 10
            assert sum([await stores[3].load(sid) == b"new" for sid in new]) == 10
            # Redis evicted exactly 20 (above); each store's counter must add up to that
            assert sum(s.evicted for s in stores) == 20, [s.evicted for s in stores]
        finally:
            for s in stores:
                await s.close()

    run(main())


def test_prefixes_separate_deployments(rserver, admin):
    async def main():
        d1 = make_store(rserver.url, "d1:", max_sessions=2)
        d2 = make_store(rserver.url, "d2:", max_sessions=2)
        try:
            for sid in ("x0", "x1"):
                await d2.save(sid, b"d2-" + sid.encode())  # d2's are the oldest in the database
                await asyncio.sleep(0.003)
            for i in range(5):
                await d1.save(f"s{i}", b"d1")
                await asyncio.sleep(0.003)
            assert await d1.count() == 2
            assert d1.evicted == 3
            assert await d2.count() == 2
            assert d2.evicted == 0
            assert await d2.load("x0") == b"d2-x0"
            assert await d2.load("x1") == b"d2-x1"
            assert await d1.load("x0") is None
            assert await d2.load("s4") is None
            assert [await d1.load(f"s{i}") for i in range(5)] == [None, None, None, b"d1", b"d1"]
        finally:
            await d1.close()
            await d2.close()

    run(main())
