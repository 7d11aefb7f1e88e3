"""The SQLite session store: one file shared by every worker process of one machine (the default).

The service runs one worker process per core, and a session must be resumable in whichever worker the next
request lands on; a file on local disk shared by all of them needs no server to run. WAL journal mode lets
readers go on while one process writes, and with synchronous=NORMAL a commit is a write into the WAL without
fsync (a power cut may lose the last sessions, never corrupt the file). One machine only: SQLite locks do not
work over network filesystems.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
import time
from pathlib import Path

from .sessions import LEASE_S, SessionBusy, StoreUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (sid TEXT PRIMARY KEY, blob BLOB NOT NULL, used REAL NOT NULL,
                                     owner TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions (used);
CREATE TABLE IF NOT EXISTS leases (sid TEXT PRIMARY KEY, token TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, expires REAL NOT NULL);
"""

# One statement, so one write transaction: SQLite takes the write lock before it looks for the row, and two
# processes cannot both see the lease as free. A row left by a killed holder is taken over once it has expired,
# or when it ends more than two leases from now: written before the wall clock was set back by more than a
# lease, it would otherwise keep the session busy for as long as the clock jumped (small steps back, as NTP
# makes them, leave live leases alone).
_ACQUIRE = """INSERT INTO leases (sid, token, expires) VALUES (:sid, :token, :now + :lease)
ON CONFLICT (sid) DO UPDATE SET token = excluded.token, expires = excluded.expires
WHERE leases.expires <= :now OR leases.expires > :now + 2 * :lease"""


# the n least recently saved sessions (of one owner, or anyone's) that no stream holds, other than :sid
_EVICT = """DELETE FROM sessions WHERE rowid IN (SELECT rowid FROM sessions WHERE {where} sid != :sid
AND sid NOT IN (SELECT sid FROM leases) ORDER BY used, rowid LIMIT :n)"""


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection):
    # IMMEDIATE takes the write lock up front, or fails at once with SQLITE_BUSY (retried by _run); a deferred
    # transaction that read first would fail at its first write if another process had written in between
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    finally:
        if db.in_transaction:  # a failed statement or COMMIT: left open, every later BEGIN would fail
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11; the message on 3.10
    return code & 0xFF == 5 if code is not None else str(exc).startswith("database is locked")  # SQLITE_BUSY


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


class SqliteFile:
    """One SQLite file shared by the worker processes of this machine, used from the event loop: the connection
    (re-opened after a fork), its set-up (``SCHEMA``, WAL, ``SYNCHRONOUS``) and ``_run``, which retries a
    statement while another process holds the write lock. ``SqliteStore`` keeps sessions in it, and
    serving/quotas.py's ``SqliteQuotas`` the per-client counters."""

    SCHEMA = _SCHEMA
    SYNCHRONOUS = "NORMAL"
    NAME = "session store"

    def __init__(self, path: str | Path, clock=time.time, busy_timeout_s: float = 5.0):
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._forked: list[sqlite3.Connection] = []
        try:
            self._connect()  # a bad path fails the worker's start, not its first request
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreUnavailable(f"{self.NAME} {self.path}: {exc}") from None

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
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.SYNCHRONOUS}")
                db.executescript(self.SCHEMA)
                self._migrate(db)
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

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Brings a file written by an older version up to ``SCHEMA`` (a no-op by default)."""

    async def _run(self, op, *args):
        """``op(connection, *args)``, retried while another process holds the write lock."""
        busy = _BusyRetry(self.busy_timeout_s, 0.0005, 0.01)
        while True:
            try:
                return op(self._connect(), *args)
            except sqlite3.ProgrammingError:  # misuse (a bug here), not a store problem
                raise
            except sqlite3.OperationalError as exc:
                if not busy.retry(exc):
                    raise StoreUnavailable(f"{self.NAME} {self.path}: {exc}") from None
            except (sqlite3.DatabaseError, OSError) as exc:  # disk I/O, not a database, ...
                raise StoreUnavailable(f"{self.NAME} {self.path}: {exc}") from None
            await asyncio.sleep(busy.pause())

    async def ping(self) -> bool:
        try:
            await self._run(lambda db: db.execute("SELECT 1").fetchone())
            return True
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None


class SqliteStore(SqliteFile):
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

    def __init__(
        self,
        path: str | Path,
        ttl_s: float,
        max_sessions: int,
        lease_s: float = LEASE_S,
        clock=time.time,
        busy_timeout_s: float = 5.0,
    ):
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self.LOCK_TTL_S = lease_s
        self.evicted = 0
        super().__init__(path, clock=clock, busy_timeout_s=busy_timeout_s)

    def _migrate(self, db: sqlite3.Connection) -> None:
        # a file kept (RNNTEXT_SESSION_DB) from before sessions had owners: theirs is '' (nobody's)
        if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(sessions)")}:
            with _immediate(db):
                if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(sessions)")}:
                    db.execute("ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        db.execute("CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (owner, used)")

    # Each op reads the clock inside the function given to _run: a retried op must not use a time from before
    # its wait.
    async def load(self, sid: str, owner: str | None = None) -> bytes | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT blob, owner FROM sessions WHERE sid = ? AND used > ?", (sid, self.clock() - self.ttl_s)
            ).fetchone()
        )
        return None if row is None or (owner is not None and row[1] != owner) else row[0]

    async def owner_of(self, sid: str) -> str | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT owner FROM sessions WHERE sid = ? AND used > ?", (sid, self.clock() - self.ttl_s)
            ).fetchone()
        )
        return None if row is None else row[0]

    def _save(self, db: sqlite3.Connection, sid: str, blob: bytes, owner: str, owner_max: int) -> int:
        now = self.clock()
        evicted = 0
        with _immediate(db):
            db.execute("DELETE FROM sessions WHERE used <= ?", (now - self.ttl_s,))
            db.execute("DELETE FROM leases WHERE expires <= ?", (now,))  # left by killed workers
            # REPLACE gives the row a new, highest rowid: the LRU order's tie-break when two saves share a time
            db.execute(
                "INSERT OR REPLACE INTO sessions (sid, blob, used, owner) VALUES (?, ?, ?, ?)", (sid, blob, now, owner)
            )
            # the owner's own least recently saved idle sessions first, then anyone's above the global cap;
            # never a leased (streaming) one, never the one just saved. One transaction: exactly the surplus.
            if owner_max:
                over = db.execute("SELECT count(*) FROM sessions WHERE owner = ?", (owner,)).fetchone()[0] - owner_max
                if over > 0:
                    evicted += db.execute(
                        _EVICT.format(where="owner = :owner AND"), {"owner": owner, "sid": sid, "n": over}
                    ).rowcount
            over = db.execute("SELECT count(*) FROM sessions").fetchone()[0] - self.max_sessions
            if over > 0:
                evicted += db.execute(_EVICT.format(where=""), {"sid": sid, "n": over}).rowcount
        return evicted

    async def save(self, sid: str, blob: bytes, owner: str = "", owner_max: int = 0) -> None:
        """Keeps ``blob`` as ``owner``'s; above ``owner_max`` of the owner's (0: no cap) or ``max_sessions`` in
        all, the least recently saved idle sessions go (the owner's own first)."""
        evicted = await self._run(self._save, sid, blob, owner, owner_max)
        self.evicted += evicted  # after the await (a retried save may wait): concurrent saves add up

    async def delete(self, sid: str) -> bool:
        cur = await self._run(
            lambda db: db.execute("DELETE FROM sessions WHERE sid = ? AND used > ?", (sid, self.clock() - self.ttl_s))
        )
        return cur.rowcount > 0

    async def count(self, owner: str | None = None) -> int:
        mine = "" if owner is None else " AND owner = :owner"
        row = await self._run(
            lambda db: db.execute(
                "SELECT count(*) FROM sessions WHERE used > :t" + mine, {"t": self.clock() - self.ttl_s, "owner": owner}
            ).fetchone()
        )
        return row[0]

    async def acquire(self, sid: str) -> str:
        token = secrets.token_hex(8)
        cur = await self._run(
            lambda db: db.execute(_ACQUIRE, {"sid": sid, "token": token, "now": self.clock(), "lease": self.LOCK_TTL_S})
        )
        if cur.rowcount == 0:
            raise SessionBusy(sid)
        return token

    async def refresh(self, sid: str, token: str) -> bool:
        """Extends the lease; False when it is no longer this token's (expired, or taken since)."""
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE leases SET expires = :now + :lease WHERE sid = :sid AND token = :token AND expires > :now",
                {"sid": sid, "token": token, "now": self.clock(), "lease": self.LOCK_TTL_S},
            )
        )
        return cur.rowcount > 0

    async def release(self, sid: str, token: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM leases WHERE sid = ? AND token = ?", (sid, token)))

    async def set_flag(self, name: str, ttl_s: float) -> None:
        """Raise a flag for ``ttl_s`` seconds (another worker takes it: a stop request for its stream)."""
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO flags (name, expires) VALUES (?, ?)", (name, self.clock() + ttl_s)
            )
        )

    async def take_flag(self, name: str) -> bool:
        """Whether the flag is raised, lowering it. A read first: polled often, and mostly there is none."""

        def take(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM flags WHERE name = ?", (name,)).fetchone() is None:
                return False
            return db.execute("DELETE FROM flags WHERE name = ? AND expires > ?", (name, self.clock())).rowcount > 0

        return await self._run(take)
