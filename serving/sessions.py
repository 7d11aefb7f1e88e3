"""Generation-session stores: in-process (LRU + idle TTL) and Redis (TTL keys + an LRU index), same interface.

A store keeps opaque bytes per session id (``encode_state`` / ``decode_state`` turn a generator state into them)
and a per-session busy flag: a request takes the session with ``acquire`` and gives it back with ``release``;
a second request meanwhile gets ``SessionBusy`` (answered 409), so two requests never interleave on one state.
Session ids are ``secrets.token_urlsafe(24)``: 192 random bits.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections import OrderedDict
from typing import Any

import numpy as np

ID_BYTES = 24


class SessionBusy(Exception):
    """Another request is using this session right now."""


class StoreUnavailable(Exception):
    """The session store cannot be reached (Redis down)."""


def new_session_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


# ---------------------------------------------------------------- state codec
def encode_state(state: Any, model_tag: str) -> bytes:
    """A dataclass of numpy arrays and JSON values -> one JSON header line + the raw array bytes.

    Not pickle: whoever can write to Redis must not be able to run code in the service.
    """
    header: dict[str, Any] = {"model": model_tag, "fields": {}}
    blobs, offset = [], 0
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, np.ndarray):
            raw = np.ascontiguousarray(value).tobytes()
            header["fields"][f.name] = {"nd": [value.dtype.str, list(value.shape), offset, len(raw)]}
            blobs.append(raw)
            offset += len(raw)
        else:
            header["fields"][f.name] = {"json": value}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(blobs)


def decode_state(blob: bytes, cls: type, model_tag: str) -> Any | None:
    """The state, or None when it was saved by another model version (it would not fit this one)."""
    head, _, data = blob.partition(b"\n")
    header = json.loads(head)
    if header.get("model") != model_tag:
        return None
    kwargs = {}
    for name, spec in header["fields"].items():
        if "nd" in spec:
            dtype, shape, offset, size = spec["nd"]
            kwargs[name] = np.frombuffer(data[offset:offset + size], dtype=np.dtype(dtype)).reshape(shape).copy()
        else:
            kwargs[name] = spec["json"]
    return cls(**kwargs)


# ---------------------------------------------------------------- stores
class MemoryStore:
    """One process's sessions. An OrderedDict in least-recently-used order doubles as the expiry queue:
    with one TTL for all, the least recently used session is also the first to expire."""

    kind = "memory"
    LOCK_TTL_S = 30.0       # unused here (the flag dies with its request); same attribute as RedisStore

    def __init__(self, ttl_s: float, max_sessions: int, clock=time.monotonic):
        self.ttl_s, self.max_sessions, self.clock = ttl_s, max_sessions, clock
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._busy: set[str] = set()
        self.evicted = 0

    def _purge(self) -> None:
        now = self.clock()
        while self._data:
            sid, (_, expires) = next(iter(self._data.items()))
            if expires > now:
                break
            del self._data[sid]

    async def load(self, sid: str) -> bytes | None:
        self._purge()
        item = self._data.get(sid)
        return None if item is None else item[0]

    async def save(self, sid: str, blob: bytes) -> None:
        self._purge()
        self._data[sid] = (blob, self.clock() + self.ttl_s)
        self._data.move_to_end(sid)
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)
            self.evicted += 1

    async def delete(self, sid: str) -> bool:
        return self._data.pop(sid, None) is not None

    async def count(self) -> int:
        self._purge()
        return len(self._data)

    async def acquire(self, sid: str) -> str:
        if sid in self._busy:
            raise SessionBusy(sid)
        self._busy.add(sid)
        return sid

    async def refresh(self, sid: str, token: str) -> None:
        """Nothing to do: an in-process flag cannot outlive its request."""

    async def release(self, sid: str, token: str) -> None:
        self._busy.discard(sid)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


# compare-and-delete / compare-and-expire: only the holder of the lock may release or extend it
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


class RedisStore:
    """Sessions shared by every worker and replica, surviving restarts.

    ``<prefix>s:<id>`` holds the state with an idle TTL (PX, renewed on every save); the sorted set
    ``<prefix>lru`` scores ids by last use so that the oldest can be evicted above ``max_sessions``;
    ``<prefix>lock:<id>`` is the busy flag, with its own TTL so that a crashed worker cannot hold it forever.
    """

    kind = "redis"
    LOCK_TTL_S = 30.0       # a stream extends its lock every LOCK_TTL_S / 3 (see generation.py)

    def __init__(self, url: str, ttl_s: float, max_sessions: int, prefix: str = "rnntext:"):
        import redis.asyncio as aioredis  # only when configured: the in-process store needs no client

        self._redis = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl_ms = int(ttl_s * 1000)
        self.max_sessions, self.prefix = max_sessions, prefix
        self.evicted = 0
        self._release = self._redis.register_script(_RELEASE)
        self._extend = self._redis.register_script(_EXTEND)

    def _key(self, sid: str) -> str:
        return f"{self.prefix}s:{sid}"

    def _lock(self, sid: str) -> str:
        return f"{self.prefix}lock:{sid}"

    async def _call(self, coro):
        import redis.exceptions

        try:
            return await coro
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from None

    async def load(self, sid: str) -> bytes | None:
        return await self._call(self._redis.get(self._key(sid)))

    async def save(self, sid: str, blob: bytes) -> None:
        now = int(time.time() * 1000)
        lru = self.prefix + "lru"
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._key(sid), blob, px=self.ttl_ms)
        pipe.zadd(lru, {sid: now})
        pipe.zremrangebyscore(lru, "-inf", now - self.ttl_ms)     # ids whose keys have expired
        pipe.zcard(lru)
        *_, size = await self._call(pipe.execute())
        if size > self.max_sessions:
            oldest = await self._call(self._redis.zpopmin(lru, size - self.max_sessions))
            ids = [m.decode() if isinstance(m, bytes) else m for m, _ in oldest]
            if ids:
                await self._call(self._redis.delete(*(self._key(i) for i in ids)))
                self.evicted += len(ids)

    async def delete(self, sid: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key(sid))
        pipe.zrem(self.prefix + "lru", sid)
        deleted, _ = await self._call(pipe.execute())
        return bool(deleted)

    async def count(self) -> int:
        now = int(time.time() * 1000)
        lru = self.prefix + "lru"
        pipe = self._redis.pipeline(transaction=True)
        pipe.zremrangebyscore(lru, "-inf", now - self.ttl_ms)
        pipe.zcard(lru)
        _, size = await self._call(pipe.execute())
        return int(size)

    async def acquire(self, sid: str) -> str:
        token = secrets.token_hex(8)
        ok = await self._call(self._redis.set(self._lock(sid), token, nx=True, px=int(self.LOCK_TTL_S * 1000)))
        if not ok:
            raise SessionBusy(sid)
        return token

    async def refresh(self, sid: str, token: str) -> None:
        await self._call(self._extend(keys=[self._lock(sid)], args=[token, int(self.LOCK_TTL_S * 1000)]))

    async def release(self, sid: str, token: str) -> None:
        await self._call(self._release(keys=[self._lock(sid)], args=[token]))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._redis.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def make_store(redis_url: str, ttl_s: float, max_sessions: int):
    if redis_url:
        return RedisStore(redis_url, ttl_s, max_sessions)
    return MemoryStore(ttl_s, max_sessions)
