"""Generation-session stores, one interface: SQLite (default), Redis (when configured), memory (tests).

A store keeps opaque bytes per session id (``encode_state`` / ``decode_state`` turn a generator state into them),
with an idle TTL (renewed on every save) and a cap of ``max_sessions`` above which the least recently *saved*
session is evicted. Loading does not count as use: every request that keeps its session ends with a save, so
renewing on load as well would only turn each read into a write.

A request takes a session with ``acquire``, which returns a lease token, and gives it back with ``release``;
a second request meanwhile gets ``SessionBusy`` (answered 409), so two requests never interleave on one state.
The lease expires after ``lease_s`` (``LOCK_TTL_S``; a stream ``refresh``-es it every third of that), so a
worker killed mid-stream (SIGKILL, OOM) holds its session for at most ``lease_s``, not forever; only the
token's holder can release or refresh it.

- ``SqliteStore`` (serving/sqlite_store.py): the default, one file shared by the workers of one machine.
- ``RedisStore`` (serving/redis_store.py): sessions shared across machines (several replicas), when
  RNNTEXT_REDIS_URL is set.
- ``MemoryStore``: one process's sessions; for unit tests and a single worker.

Every session has an owner (the client that made it, serving/clients.py): ``load(sid, owner)`` finds only the
owner's, and ``save(..., owner, owner_max)`` keeps each owner to its quota by evicting the owner's own least
recently saved idle sessions. Neither an owner's quota nor the global cap ever evicts a leased (streaming) session.

Session ids are ``secrets.token_urlsafe(24)``: 192 random bits.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

ID_BYTES = 24


class SessionBusy(Exception):
    """Another request is using this session right now."""


class StoreUnavailable(Exception):
    """The session store cannot be used (Redis down, the SQLite file locked past the timeout or unreadable)."""


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
            kwargs[name] = np.frombuffer(data[offset : offset + size], dtype=np.dtype(dtype)).reshape(shape).copy()
        else:
            kwargs[name] = spec["json"]
    return cls(**kwargs)


# ---------------------------------------------------------------- stores
LEASE_S = 30.0  # how long a SIGKILLed worker can keep its session busy; streams refresh every third of it


class MemoryStore:
    """One process's sessions. An OrderedDict in least-recently-saved order doubles as the expiry queue:
    with one TTL for all, the least recently saved session is also the first to expire."""

    kind = "memory"

    def __init__(self, ttl_s: float, max_sessions: int, lease_s: float = LEASE_S, clock=time.monotonic):
        self.ttl_s, self.max_sessions, self.clock = ttl_s, max_sessions, clock
        self.LOCK_TTL_S = lease_s
        self._data: OrderedDict[str, tuple[bytes, float, str]] = OrderedDict()  # sid -> (blob, expires, owner)
        self._leases: dict[str, tuple[str, float]] = {}  # sid -> (token, expires)
        self._flags: dict[str, float] = {}  # name -> expires
        self.evicted = 0

    def _purge(self) -> None:
        now = self.clock()
        while self._data:
            sid, (_, expires, _) = next(iter(self._data.items()))
            if expires > now:
                break
            del self._data[sid]

    async def load(self, sid: str, owner: str | None = None) -> bytes | None:
        self._purge()
        item = self._data.get(sid)
        return None if item is None or (owner is not None and item[2] != owner) else item[0]

    async def owner_of(self, sid: str) -> str | None:
        self._purge()
        item = self._data.get(sid)
        return None if item is None else item[2]

    async def save(self, sid: str, blob: bytes, owner: str = "", owner_max: int = 0) -> None:
        """Keeps ``blob`` as ``owner``'s; above ``owner_max`` of the owner's (0: no cap) or ``max_sessions`` in
        all, the least recently saved idle sessions go (the owner's own first), never a leased one."""
        self._purge()
        self._data[sid] = (blob, self.clock() + self.ttl_s, owner)
        self._data.move_to_end(sid)
        if owner_max:
            self._evict(sum(1 for v in self._data.values() if v[2] == owner) - owner_max, sid, owner)
        self._evict(len(self._data) - self.max_sessions, sid)

    def _evict(self, surplus: int, keep: str, owner: str | None = None) -> None:
        now = self.clock()
        for sid in [s for s, v in self._data.items() if owner is None or v[2] == owner]:
            if surplus <= 0:
                return
            lease = self._leases.get(sid)
            if sid != keep and not (lease is not None and lease[1] > now):
                del self._data[sid]
                self.evicted += 1
                surplus -= 1

    async def delete(self, sid: str) -> bool:
        self._purge()
        return self._data.pop(sid, None) is not None

    async def count(self, owner: str | None = None) -> int:
        self._purge()
        return len(self._data) if owner is None else sum(1 for v in self._data.values() if v[2] == owner)

    async def acquire(self, sid: str) -> str:
        now = self.clock()
        held = self._leases.get(sid)
        if held is not None and held[1] > now:
            raise SessionBusy(sid)
        token = secrets.token_hex(8)
        self._leases[sid] = (token, now + self.LOCK_TTL_S)
        return token

    async def refresh(self, sid: str, token: str) -> bool:
        """Extends the lease; False when it is no longer this token's (expired, or taken since)."""
        now = self.clock()
        held = self._leases.get(sid)
        if held is None or held[0] != token or held[1] <= now:
            return False
        self._leases[sid] = (token, now + self.LOCK_TTL_S)
        return True

    async def release(self, sid: str, token: str) -> None:
        held = self._leases.get(sid)
        if held is not None and held[0] == token:
            del self._leases[sid]

    async def set_flag(self, name: str, ttl_s: float) -> None:
        """Raise a flag for ``ttl_s`` seconds (a stop request for a stream that takes it)."""
        now = self.clock()
        if len(self._flags) > 10_000:  # flags nobody took: forget the lapsed ones
            self._flags = {k: v for k, v in self._flags.items() if v > now}
        self._flags[name] = now + ttl_s

    async def take_flag(self, name: str) -> bool:
        """Whether the flag is raised, lowering it."""
        expires = self._flags.pop(name, None)
        return expires is not None and expires > self.clock()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
        self._leases.clear()


def make_store(
    redis_url: str,
    sqlite_path: str | Path | None,
    ttl_s: float,
    max_sessions: int,
    lease_s: float = LEASE_S,
    redis_prefix: str = "rnntext:",
):
    """Redis when a URL is configured, else the SQLite file when a path is given, else this process's memory."""
    if redis_url:
        from .redis_store import RedisStore

        return RedisStore(redis_url, ttl_s, max_sessions, prefix=redis_prefix, lease_s=lease_s)
    if sqlite_path:
        from .sqlite_store import SqliteStore

        return SqliteStore(sqlite_path, ttl_s, max_sessions, lease_s=lease_s)
    return MemoryStore(ttl_s, max_sessions, lease_s=lease_s)


def __getattr__(name: str):
    """``SqliteStore`` and ``RedisStore`` live in their own modules (serving/sqlite_store.py, redis_store.py)."""
    if name == "SqliteStore":
        from .sqlite_store import SqliteStore

        return SqliteStore
    if name == "RedisStore":
        from .redis_store import RedisStore

        return RedisStore
    raise AttributeError(name)
