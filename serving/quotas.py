"""Per-client request rates and stream slots, shared by every worker of a server (and every replica on Redis).

* **Rate**: a token bucket per client (``rate`` tokens per second, at most ``burst``); each API request takes
  one token before its body is read (serving/gate.py). An empty bucket is a 429 ``rate_limited`` with
  ``Retry-After`` = the seconds until the next token, rounded up.
* **Streams**: a client's running generation streams, each a row (or sorted-set member) with a lease that the
  stream renews as sessions do (``lease_s``, renewed every third of it), so a worker killed mid-stream frees its
  client's slot after one lease at most. Over the quota: 429 ``quota_exceeded`` before any prefill.

Backends: ``SqliteQuotas`` (a file in the server's run folder, shared by its workers, on the event loop like
the session store), ``RedisQuotas`` (the sessions' Redis, so replicas share them; Lua scripts with Redis' own
clock, so replicas' clocks do not matter) and ``MemoryQuotas`` (one process). ``Quotas`` wraps a shared backend
with a local one: when the shared store fails, each worker enforces the same limits on its own (a client can
then get up to one quota per worker) instead of failing requests that do not need the store (/classify).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from .redis_store import redis_call
from .sessions import StoreUnavailable
from .sqlite_store import SqliteFile, _immediate

log = logging.getLogger(__name__)


class MemoryQuotas:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._streams: dict[str, dict[str, float]] = {}  # client -> {stream id: lease expiry}

    async def take(self, client: str, rate: float, burst: int) -> float:
        now = self.clock()
        tokens, at = self._buckets.get(client, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1:
            return (1 - tokens) / rate
        if len(self._buckets) > 100_000:  # full buckets carry no information: forget them all at once
            self._buckets.clear()
        self._buckets[client] = (tokens - 1, now)
        return 0.0

    async def open_stream(self, client: str, sid: str, limit: int, lease_s: float) -> bool:
        now = self.clock()
        held = {k: v for k, v in self._streams.get(client, {}).items() if v > now}
        if len(held) >= limit:
            self._streams[client] = held
            return False
        held[sid] = now + lease_s
        self._streams[client] = held
        return True

    async def refresh_stream(self, client: str, sid: str, lease_s: float) -> None:
        held = self._streams.get(client)
        if held is not None and sid in held:
            held[sid] = self.clock() + lease_s

    async def close_stream(self, client: str, sid: str) -> None:
        held = self._streams.get(client)
        if held is not None:
            held.pop(sid, None)
            if not held:
                del self._streams[client]

    async def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (client TEXT PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS streams (id TEXT PRIMARY KEY, client TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS streams_by_client ON streams (client, expires);
"""
# one statement, so one write transaction: two workers cannot both spend the last token
_TAKE = """INSERT INTO buckets (client, tokens, at) VALUES (:c, :burst - 1, :now)
ON CONFLICT (client) DO UPDATE SET tokens = min(:burst, tokens + (:now - at) * :rate) - 1, at = :now
WHERE min(:burst, tokens + (:now - at) * :rate) >= 1"""


class SqliteQuotas(SqliteFile):
    """The buckets and stream leases in one SQLite file (its own, not the sessions': nothing here needs to
    survive a crash, so ``synchronous=OFF``, and session saves never wait for a rate check's write lock)."""

    kind = "sqlite"
    SCHEMA = _SCHEMA
    SYNCHRONOUS = "OFF"
    NAME = "quota store"

    def __init__(self, path: str | Path, clock=time.time, busy_timeout_s: float = 5.0):
        super().__init__(path, clock=clock, busy_timeout_s=busy_timeout_s)
        self._takes = 0

    def _take(self, db: sqlite3.Connection, client: str, rate: float, burst: int) -> float:
        now = self.clock()
        args = {"c": client, "burst": burst, "rate": rate, "now": now}
        if db.execute(_TAKE, args).rowcount:
            return 0.0
        tokens, at = db.execute("SELECT tokens, at FROM buckets WHERE client = ?", (client,)).fetchone()
        return (1 - min(burst, tokens + (now - at) * rate)) / rate

    async def take(self, client: str, rate: float, burst: int) -> float:
        self._takes += 1
        if self._takes % 4096 == 0:  # buckets idle long enough to be full again carry no information
            await self._run(lambda db: db.execute("DELETE FROM buckets WHERE at < ?", (self.clock() - 3600,)))
        return await self._run(self._take, client, rate, burst)

    def _open(self, db: sqlite3.Connection, client: str, sid: str, limit: int, lease_s: float) -> bool:
        now = self.clock()
        with _immediate(db):
            db.execute("DELETE FROM streams WHERE client = ? AND expires <= ?", (client, now))
            if db.execute("SELECT count(*) FROM streams WHERE client = ?", (client,)).fetchone()[0] >= limit:
                return False
            db.execute(
                "INSERT OR REPLACE INTO streams (id, client, expires) VALUES (?, ?, ?)", (sid, client, now + lease_s)
            )
        return True

    async def open_stream(self, client: str, sid: str, limit: int, lease_s: float) -> bool:
        return await self._run(self._open, client, sid, limit, lease_s)

    async def refresh_stream(self, client: str, sid: str, lease_s: float) -> None:
        await self._run(
            lambda db: db.execute("UPDATE streams SET expires = ? WHERE id = ?", (self.clock() + lease_s, sid))
        )

    async def close_stream(self, client: str, sid: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM streams WHERE id = ?", (sid,)))


# Redis' own clock (TIME, in ms): every replica sees one time. Replies are strings (Lua numbers become integers).
_NOW = "local t = redis.call('time') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
_TAKE_LUA = (
    _NOW
    + """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('hmget', KEYS[1], 't', 'at')
local tokens = burst
if b[1] then tokens = math.min(burst, tonumber(b[1]) + (now - tonumber(b[2])) * rate / 1000) end
if tokens < 1 then return tostring((1 - tokens) / rate) end
redis.call('hset', KEYS[1], 't', tostring(tokens - 1), 'at', now)
redis.call('pexpire', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return '0'"""
)
_OPEN_LUA = (
    _NOW
    + """
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('pexpire', KEYS[1], tonumber(ARGV[3]))
return 1"""
)
_REFRESH_LUA = (
    _NOW
    + """
redis.call('zadd', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('pexpire', KEYS[1], tonumber(ARGV[2]))
return 1"""
)


class RedisQuotas:
    kind = "redis"

    def __init__(self, redis, prefix: str):
        self._redis, self.prefix = redis, prefix
        self._take = redis.register_script(_TAKE_LUA)
        self._open = redis.register_script(_OPEN_LUA)
        self._refresh = redis.register_script(_REFRESH_LUA)

    async def take(self, client: str, rate: float, burst: int) -> float:
        return float(await redis_call(self._take(keys=[f"{self.prefix}rate:{client}"], args=[rate, burst])))

    async def open_stream(self, client: str, sid: str, limit: int, lease_s: float) -> bool:
        return bool(
            await redis_call(
                self._open(keys=[f"{self.prefix}streams:{client}"], args=[sid, limit, int(lease_s * 1000)])
            )
        )

    async def refresh_stream(self, client: str, sid: str, lease_s: float) -> None:
        await redis_call(self._refresh(keys=[f"{self.prefix}streams:{client}"], args=[sid, int(lease_s * 1000)]))

    async def close_stream(self, client: str, sid: str) -> None:
        await redis_call(self._redis.zrem(f"{self.prefix}streams:{client}", sid))

    async def close(self) -> None:
        pass  # the client is the session store's, closed with it


class Quotas:
    """A shared backend, with each worker's own as the fallback while the shared one is unavailable."""

    def __init__(self, shared, lease_s: float):
        self.shared, self.lease_s = shared, lease_s
        self.local = MemoryQuotas()
        self.kind = shared.kind if shared is not None else "memory"
        self.fallbacks = 0  # checks made locally because the shared store failed

    async def _either(self, op: str, *args):
        if self.shared is not None:
            try:
                return await getattr(self.shared, op)(*args)
            except StoreUnavailable as exc:
                self.fallbacks += 1
                if self.fallbacks in (1, 10, 100) or self.fallbacks % 1000 == 0:
                    log.warning(
                        "quota store unavailable (%s); enforcing quotas per worker (%d times)", exc, self.fallbacks
                    )
        return await getattr(self.local, op)(*args)

    async def take(self, client: str, rate: float, burst: int) -> float:
        """0 when the request may go on, else the seconds until it could (``rate`` 0: never limited)."""
        if rate <= 0:
            return 0.0
        return await self._either("take", client, rate, burst)

    async def open_stream(self, client: str, sid: str, limit: int) -> bool:
        return await self._either("open_stream", client, sid, limit, self.lease_s)

    async def refresh_stream(self, client: str, sid: str) -> None:
        await self._either("refresh_stream", client, sid, self.lease_s)

    async def close_stream(self, client: str, sid: str) -> None:
        # both: a stream opened locally during an outage is closed there (a no-op where it is not)
        await self.local.close_stream(client, sid)
        if self.shared is not None:
            try:
                await self.shared.close_stream(client, sid)
            except StoreUnavailable:  # its lease lapses by itself
                pass

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def make_quotas(store, lease_s: float) -> Quotas:
    """Beside the session store: Redis' when sessions are in Redis, else a file in the server's run folder (made
    by the main process for its workers), else this process's memory."""
    if store is not None and store.kind == "redis":
        return Quotas(RedisQuotas(store.redis, store.prefix), lease_s)
    run_dir = os.environ.get("RNNTEXT_RUN_DIR")
    if run_dir:
        return Quotas(SqliteQuotas(Path(run_dir) / "quotas.db"), lease_s)
    return Quotas(None, lease_s)
