"""The connection counts that the workers of one server share (serving/connections.Share): one slot each in a
mapped file, and a worker is "ahead" when it holds more connections than the least loaded other one."""
from __future__ import annotations

from serving.connections import Share


def test_share_slots_and_ahead(tmp_path):
    path = str(tmp_path / "connections.bin")
    a, b, c = (Share(path, 3, i) for i in range(3))
    assert (a.ahead(), b.ahead(), c.ahead()) == (False, False, False)      # 0, 0, 0
    a.set(2)
    b.set(1)
    assert (a.ahead(), b.ahead(), c.ahead()) == (True, True, False)        # 2, 1, 0
    c.set(1)
    assert (a.ahead(), b.ahead(), c.ahead()) == (True, False, False)       # 2, 1, 1
    again = Share(path, 3, 0)           # a restarted worker 0 starts with none, the others keep theirs
    assert (again.ahead(), b.ahead()) == (False, True)
    assert (tmp_path / "connections.bin").stat().st_size == 12
