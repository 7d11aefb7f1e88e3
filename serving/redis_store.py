"""The Redis session store: sessions shared by every worker and replica, surviving restarts (RNNTEXT_REDIS_URL).

Keys, all under ``prefix`` (RNNTEXT_REDIS_PREFIX, so deployments can share one database):

* ``<prefix>sess:<id>``: a hash ``{b: state, o: owner}`` with the idle TTL (PX, renewed on every save);
* ``<prefix>lru`` and ``<prefix>own:<owner>``: sorted sets of ids scored by their last save (ms), for the global
  cap and each owner's quota;
* ``<prefix>lock:<id>``: the lease, with its own TTL (``lease_s``), so a crashed worker cannot hold it forever.

Saving and evicting are one Lua script, so workers saving at the same moment evict exactly the surplus, and never a
leased session. The scripts name keys they compute from ``prefix`` (a single Redis or a primary with replicas, not
Redis Cluster). Every Redis error (connection, timeout, OOM at maxmemory, READONLY after a failover, NOPERM from an
ACL, ...) is ``StoreUnavailable``: a 503, never a 500.
"""

from __future__ import annotations

import secrets
import time

from .sessions import LEASE_S, SessionBusy, StoreUnavailable


async def redis_call(awaitable):
    """Awaits a Redis call; any Redis error becomes StoreUnavailable."""
    import redis.exceptions

    try:
        return await awaitable
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None


# compare-and-delete / compare-and-expire: only the holder of the lock may release or extend it
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"

# KEYS: session, lru, owner's set. ARGV: id, state, owner, ttl ms, max sessions, owner's max (0: none), prefix
_SAVE = """
local sid, owner, ttl, prefix = ARGV[1], ARGV[3], tonumber(ARGV[4]), ARGV[7]
local t = redis.call('time') local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('hset', KEYS[1], 'b', ARGV[2], 'o', owner)
redis.call('pexpire', KEYS[1], ttl)
for _, z in ipairs({KEYS[2], KEYS[3]}) do
  redis.call('zadd', z, now, sid)
  redis.call('zremrangebyscore', z, '-inf', now - ttl)
end
redis.call('pexpire', KEYS[3], ttl)
local evicted = 0
local function evict(z, surplus)
  local start = 0
  while surplus > 0 do
    local ids = redis.call('zrange', z, start, start + surplus + 15)
    if #ids == 0 then return end
    for _, id in ipairs(ids) do
      if surplus > 0 and id ~= sid and redis.call('exists', prefix .. 'lock:' .. id) == 0 then
        local o = redis.call('hget', prefix .. 'sess:' .. id, 'o')
        redis.call('del', prefix .. 'sess:' .. id)
        redis.call('zrem', KEYS[2], id)
        if o then redis.call('zrem', prefix .. 'own:' .. o, id) end
        if z ~= KEYS[2] then redis.call('zrem', z, id) end
        evicted = evicted + 1
        surplus = surplus - 1
      else
        start = start + 1
      end
    end
  end
end
if tonumber(ARGV[6]) > 0 then evict(KEYS[3], redis.call('zcard', KEYS[3]) - tonumber(ARGV[6])) end
evict(KEYS[2], redis.call('zcard', KEYS[2]) - tonumber(ARGV[5]))
return evicted"""

# KEYS: session, lru. ARGV: id, prefix
_DELETE = """
local o = redis.call('hget', KEYS[1], 'o')
local n = redis.call('del', KEYS[1])
redis.call('zrem', KEYS[2], ARGV[1])
if o then redis.call('zrem', ARGV[2] .. 'own:' .. o, ARGV[1]) end
return n"""


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, ttl_s: float, max_sessions: int, prefix: str = "rnntext:", lease_s: float = LEASE_S):
        import redis.asyncio as aioredis  # only when configured: the other stores need no client

        self.redis = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl_ms = int(ttl_s * 1000)
        self.max_sessions, self.prefix = max_sessions, prefix
        self.LOCK_TTL_S = lease_s
        self.evicted = 0
        self._release = self.redis.register_script(_RELEASE)
        self._extend = self.redis.register_script(_EXTEND)
        self._save = self.redis.register_script(_SAVE)
        self._delete = self.redis.register_script(_DELETE)

    def _key(self, sid: str) -> str:
        return f"{self.prefix}sess:{sid}"

    def _lock(self, sid: str) -> str:
        return f"{self.prefix}lock:{sid}"

    async def load(self, sid: str, owner: str | None = None) -> bytes | None:
        blob, who = await redis_call(self.redis.hmget(self._key(sid), "b", "o"))
        if blob is None or (owner is not None and (who or b"").decode() != owner):
            return None
        return blob

    async def owner_of(self, sid: str) -> str | None:
        who = await redis_call(self.redis.hget(self._key(sid), "o"))
        return None if who is None else who.decode()

    async def save(self, sid: str, blob: bytes, owner: str = "", owner_max: int = 0) -> None:
        keys = [self._key(sid), self.prefix + "lru", f"{self.prefix}own:{owner}"]
        args = [sid, blob, owner, self.ttl_ms, self.max_sessions, owner_max, self.prefix]
        evicted = int(await redis_call(self._save(keys=keys, args=args)))
        self.evicted += evicted  # after the await: saves in flight together must not overwrite each other's count

    async def delete(self, sid: str) -> bool:
        return bool(await redis_call(self._delete(keys=[self._key(sid), self.prefix + "lru"], args=[sid, self.prefix])))

    async def count(self, owner: str | None = None) -> int:
        z = self.prefix + ("lru" if owner is None else f"own:{owner}")
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(z, "-inf", int(time.time() * 1000) - self.ttl_ms)
        pipe.zcard(z)
        _, size = await redis_call(pipe.execute())
        return int(size)

    async def acquire(self, sid: str) -> str:
        token = secrets.token_hex(8)
        ok = await redis_call(self.redis.set(self._lock(sid), token, nx=True, px=int(self.LOCK_TTL_S * 1000)))
        if not ok:
            raise SessionBusy(sid)
        return token

    async def refresh(self, sid: str, token: str) -> bool:
        """Extends the lease; False when it is no longer this token's (expired, or taken since)."""
        return bool(await redis_call(self._extend(keys=[self._lock(sid)], args=[token, int(self.LOCK_TTL_S * 1000)])))

    async def release(self, sid: str, token: str) -> None:
        await redis_call(self._release(keys=[self._lock(sid)], args=[token]))

    async def set_flag(self, name: str, ttl_s: float) -> None:
        """Raise a flag for ``ttl_s`` seconds (another worker or replica takes it: a stop request)."""
        await redis_call(self.redis.set(f"{self.prefix}flag:{name}", b"1", px=max(1, int(ttl_s * 1000))))

    async def take_flag(self, name: str) -> bool:
        """Whether the flag is raised, lowering it."""
        return bool(await redis_call(self.redis.delete(f"{self.prefix}flag:{name}")))

    async def ping(self) -> bool:
        try:
            return bool(await redis_call(self.redis.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self.redis.aclose()
