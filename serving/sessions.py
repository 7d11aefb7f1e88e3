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

- ``SqliteStore``: the default. The service runs one worker process per core, and a session must be
  resumable in whichever worker the next request lands on; a file on local disk shared by all of them needs no
  server to run. WAL journal mode lets readers go on while one process writes, and with synchronous=NORMAL a
  commit is a write into the WAL without fsync (a power cut may lose the last sessions, never corrupt the file).
  One machine only: SQLite locks do not work over network filesystems.
- ``RedisStore``: sessions shared across machines (several replicas), when RNNTEXT_REDIS_URL is set.
- ``MemoryStore``: one process's sessions; for unit tests and a single worker.

Session ids are ``secrets.token_urlsafe(24)``: 192 random bits.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import sqlite3
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
            kwargs[name] = np.frombuffer(data[offset:offset + size], dtype=np.dtype(dtype)).reshape(shape).copy()
        else:
            kwargs[name] = spec["json"]
    return cls(**kwargs)


# ---------------------------------------------------------------- stores
LEASE_S = 30.0      # how long a SIGKILLed worker can keep its session busy; streams refresh every third of it


class MemoryStore:
    """One process's sessions. An OrderedDict in least-recently-saved order doubles as the expiry queue:
    with one TTL for all, the least recently saved session is also the first to expire."""

    kind = "memory"

    def __init__(self, ttl_s: float, max_sessions: int, lease_s: float = LEASE_S, clock=time.monotonic):
        self.ttl_s, self.max_sessions, self.clock = ttl_s, max_sessions, clock
        self.LOCK_TTL_S = lease_s
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._leases: dict[str, tuple[str, float]] = {}     # sid -> (token, expires)
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
        self._purge()
        return self._data.pop(sid, None) is not None

    async def count(self) -> int:
        self._purge()
        return len(self._data)

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

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
        self._leases.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (sid TEXT PRIMARY KEY, blob BLOB NOT NULL, used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions (used);
CREATE TABLE IF NOT EXISTS leases (sid TEXT PRIMARY KEY, token TEXT NOT NULL, expires REAL NOT NULL);
"""

# One statement, so one write transaction: SQLite takes the write lock before it looks for the row, and two
# processes cannot both see the lease as free. A row left by a killed holder is taken over once it has expired,
# or when it ends more than two leases from now: written before the wall clock was set back by more than a
# lease, it would otherwise keep the session busy for as long as the clock jumped (small steps back, as NTP
# makes them, leave live leases alone).
_ACQUIRE = """INSERT INTO leases (sid, token, expires) VALUES (:sid, :token, :now + :lease)
ON CONFLICT (sid) DO UPDATE SET token = excluded.token, expires = excluded.expires
WHERE leases.expires <= :now OR leases.expires > :now + 2 * :lease"""


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection):
    # IMMEDIATE takes the write lock up front, or fails at once with SQLITE_BUSY (retried by _run); a deferred
    # transaction that read first would fail at its first write if another process had written in between
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    finally:
        if db.in_transaction:   # a failed statement or COMMIT: left open, every later BEGIN would fail
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)       # Python >= 3.11; the message on 3.10
    return code & 0xFF == 5 if code is not None else str(exc).startswith("database is locked")   # SQLITE_BUSY


class _BusyRetry:
    """Tries of one operation that found the database locked: ``retry(exc)`` whether to try again (SQLITE_BUSY,
    and ``timeout_s`` not yet over), ``pause()`` the wait before it, doubling from ``first`` up to ``cap``."""

    def __init__(self, timeout_s: float, first: float, cap: float):
        self.deadline, self.next_pause, self.cap = time.monotonic() + timeout_s, first, cap

    def retry(self, exc: sqlite3.OperationalError) -> bool:
        return _is_busy(exc) and time.monotonic() <= self.deadline

    def pause(self) -> float:
        pause, self.next_pause = self.next_pause, min(self.next_pause * 2, self.cap)
        return pause


class SqliteStore:
    """Sessions in one SQLite file shared by every worker process on this machine, surviving restarts.

    ``sessions.used`` (the last save, in ``clock`` seconds; wall time, the same in every process) gives both
    the idle expiry (``used + ttl_s``) and the LRU order; ``leases`` holds the busy flags with their expiry.
    Expired rows are deleted by every save, the only thing that makes the file grow. ``evicted`` counts this
    process's evictions only.

    The statements run on the event loop, not in a thread: a call takes 10 us (load, acquire, release) to
    30 us (save, median), where the hop through ``asyncio.to_thread`` alone adds ~70 us, and with nothing
    awaited inside a call a cancelled request cannot lose a lease it has just taken. What would block the
    loop is SQLite's own busy handler, which sleeps 1, 2, 5, 10... ms while another process holds the write
    lock (up to 33 ms seen with two processes writing flat out): so SQLite's busy timeout is 0 after setup,
    and ``_run`` waits for the lock with ``asyncio.sleep`` instead, up to ``busy_timeout_s``.

    Measured (2 shared cores, ext4, 8.8 kB states, 2000 sessions in the file), acquire+load+save+release:
    one process 10,800 cycles/s (43,000 ops/s); two processes on one file ~9,000 cycles/s together; the
    same through ``asyncio.to_thread`` 2,100 cycles/s for one process, ~2,400 for two. On the loop, save's p99
    is 2.4 ms: the WAL checkpoint SQLite runs every ~1000 pages (~250 saves), the only fsync.
    """

    kind = "sqlite"

    def __init__(self, path: str | Path, ttl_s: float, max_sessions: int, lease_s: float = LEASE_S,
                 clock=time.time, busy_timeout_s: float = 5.0):
        self.path = Path(path)
        self.ttl_s, self.max_sessions, self.clock = ttl_s, max_sessions, clock
        self.LOCK_TTL_S = lease_s
        self.busy_timeout_s = busy_timeout_s
        self.evicted = 0
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._forked: list[sqlite3.Connection] = []
        try:
            self._connect()     # a bad path fails the worker's start, not its first request
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreUnavailable(f"session store {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None and self._pid == os.getpid():
            return self._db
        if self._db is not None:
            # opened before a fork: closing it here could checkpoint or drop the parent's WAL; keep it unused
            self._forked.append(self._db)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Setup blocks (once, at start) while workers starting together all set up the same file. SQLite's busy
        # handler does not cover all of it: switching a new file to WAL, or two connections that both read
        # before writing, fail with SQLITE_BUSY at once (4 processes opening one new file: 18 of 200 rounds
        # failed so), so the whole setup is retried until busy_timeout_s. Autocommit (isolation_level None):
        # the transactions here are explicit. Any thread: the store may be built in another thread than the
        # event loop's that uses it.
        busy = _BusyRetry(self.busy_timeout_s, 0.001, 0.05)
        while True:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                db.execute("PRAGMA busy_timeout=0")
                break
            except sqlite3.OperationalError as exc:
                db.close()
                if not busy.retry(exc):
                    raise
            except BaseException:
                db.close()
                raise
            time.sleep(busy.pause())
        self._db, self._pid = db, os.getpid()
        return db

    async def _run(self, op, *args):
        """``op(connection, *args)``, retried while another process holds the write lock."""
        busy = _BusyRetry(self.busy_timeout_s, 0.0005, 0.01)
        while True:
            try:
                return op(self._connect(), *args)
            except sqlite3.ProgrammingError:    # misuse (a bug here), not a store problem
                raise
            except sqlite3.OperationalError as exc:
                if not busy.retry(exc):
                    raise StoreUnavailable(f"session store {self.path}: {exc}") from None
            except (sqlite3.DatabaseError, OSError) as exc:     # disk I/O, not a database, ...
                raise StoreUnavailable(f"session store {self.path}: {exc}") from None
            await asyncio.sleep(busy.pause())

    # Each op reads the clock inside the function given to _run: a retried op must not use a time from before
    # its wait.
    async def load(self, sid: str) -> bytes | None:
        row = await self._run(lambda db: db.execute("SELECT blob FROM sessions WHERE sid = ? AND used > ?",
                                                    (sid, self.clock() - self.ttl_s)).fetchone())
        return None if row is None else row[0]

    def _save(self, db: sqlite3.Connection, sid: str, blob: bytes) -> int:
        now = self.clock()
        with _immediate(db):
            db.execute("DELETE FROM sessions WHERE used <= ?", (now - self.ttl_s,))
            db.execute("DELETE FROM leases WHERE expires <= ?", (now,))     # left by killed workers
            # REPLACE gives the row a new, highest rowid: the LRU order's tie-break when two saves share a time
            db.execute("INSERT OR REPLACE INTO sessions (sid, blob, used) VALUES (?, ?, ?)", (sid, blob, now))
            over = db.execute("SELECT count(*) FROM sessions").fetchone()[0] - self.max_sessions
            if over > 0:
                db.execute("DELETE FROM sessions WHERE rowid IN "
                           "(SELECT rowid FROM sessions ORDER BY used, rowid LIMIT ?)", (over,))
        return max(over, 0)

    async def save(self, sid: str, blob: bytes) -> None:
        self.evicted += await self._run(self._save, sid, blob)

    async def delete(self, sid: str) -> bool:
        cur = await self._run(lambda db: db.execute("DELETE FROM sessions WHERE sid = ? AND used > ?",
                                                    (sid, self.clock() - self.ttl_s)))
        return cur.rowcount > 0

    async def count(self) -> int:
        row = await self._run(lambda db: db.execute("SELECT count(*) FROM sessions WHERE used > ?",
                                                    (self.clock() - self.ttl_s,)).fetchone())
        return row[0]

    async def acquire(self, sid: str) -> str:
        token = secrets.token_hex(8)
        cur = await self._run(lambda db: db.execute(_ACQUIRE, {"sid": sid, "token": token, "now": self.clock(),
                                                               "lease": self.LOCK_TTL_S}))
        if cur.rowcount == 0:
            raise SessionBusy(sid)
        return token

    async def refresh(self, sid: str, token: str) -> bool:
        """Extends the lease; False when it is no longer this token's (expired, or taken since)."""
        cur = await self._run(lambda db: db.execute(
            "UPDATE leases SET expires = :now + :lease WHERE sid = :sid AND token = :token AND expires > :now",
            {"sid": sid, "token": token, "now": self.clock(), "lease": self.LOCK_TTL_S}))
        return cur.rowcount > 0

    async def release(self, sid: str, token: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM leases WHERE sid = ? AND token = ?", (sid, token)))

    async def ping(self) -> bool:
        try:
            await self._run(lambda db: db.execute("SELECT count(*) FROM leases").fetchone())
            return True
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None


# compare-and-delete / compare-and-expire: only the holder of the lock may release or extend it
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


class RedisStore:
    """Sessions shared by every worker and replica, surviving restarts.

    ``<prefix>s:<id>`` holds the state with an idle TTL (PX, renewed on every save); the sorted set
    ``<prefix>lru`` scores ids by last save so that the oldest can be evicted above ``max_sessions``;
    ``<prefix>lock:<id>`` is the lease, with its own TTL (``lease_s``) so that a crashed worker cannot hold it
    forever.
    """

    kind = "redis"

    def __init__(self, url: str, ttl_s: float, max_sessions: int, prefix: str = "rnntext:",
                 lease_s: float = LEASE_S):
        import redis.asyncio as aioredis  # only when configured: the other stores need no client

        self._redis = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl_ms = int(ttl_s * 1000)
        self.max_sessions, self.prefix = max_sessions, prefix
        self.LOCK_TTL_S = lease_s
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

    async def refresh(self, sid: str, token: str) -> bool:
        """Extends the lease; False when it is no longer this token's (expired, or taken since)."""
        return bool(await self._call(self._extend(keys=[self._lock(sid)],
                                                  args=[token, int(self.LOCK_TTL_S * 1000)])))

    async def release(self, sid: str, token: str) -> None:
        await self._call(self._release(keys=[self._lock(sid)], args=[token]))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._redis.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def make_store(redis_url: str, sqlite_path: str | Path | None, ttl_s: float, max_sessions: int,
               lease_s: float = LEASE_S):
    """Redis when a URL is configured, else the SQLite file when a path is given, else this process's memory."""
    if redis_url:
        return RedisStore(redis_url, ttl_s, max_sessions, lease_s=lease_s)
    if sqlite_path:
        return SqliteStore(sqlite_path, ttl_s, max_sessions, lease_s=lease_s)
    return MemoryStore(ttl_s, max_sessions, lease_s=lease_s)
