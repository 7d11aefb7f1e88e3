"""What the workers of one server tell each other: their open connections and whether they are busy.

One small file per server start (in ``RNNTEXT_RUN_DIR``, made by the main process before the workers start), mapped
by every worker: two int32 slots per worker. Advisory only: each worker writes its own slots, reads the others'
without locks, and a stale value (a worker killed with SIGKILL keeps its last counts until its replacement
starts) only makes the others a little more careful.

* ``connections``: serving/patches/accept.py lets a worker that holds more connections than another leave new
  connections to the others, so keep-alive clients spread evenly.
* ``busy``: streams stepping plus classifier batches running. A lone stream on an otherwise idle CPU steps with
  a session that uses every core (serving/stepper.py): 2.1x faster here, identical numbers; with any other
  work on the machine it would fight it, so it steps with one thread again.
"""

from __future__ import annotations

import mmap
import os
import struct


class WorkerBoard:
    def __init__(self, path: str | os.PathLike, workers: int, index: int):
        size = 8 * workers
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:  # never shrink: another worker may have mapped it
                os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.workers, self.index = workers, index
        self.set_connections(0)  # a restarted worker starts with none
        self.set_busy(0)

    def _all(self, field: int) -> tuple[int, ...]:
        return struct.unpack_from(f"{self.workers}i", self._mm, 4 * self.workers * field)

    def _set(self, field: int, value: int) -> None:
        struct.pack_into("i", self._mm, 4 * (self.workers * field + self.index), value)

    def set_connections(self, count: int) -> None:
        self._set(0, count)

    def set_busy(self, count: int) -> None:
        self._set(1, count)

    def connections_ahead(self) -> bool:
        """This worker holds more connections than the least loaded other one."""
        counts = self._all(0)
        others = [c for i, c in enumerate(counts) if i != self.index]
        return bool(others) and counts[self.index] > min(others)

    def others_busy(self) -> bool:
        return any(b > 0 for i, b in enumerate(self._all(1)) if i != self.index)
