"""The board the workers of one server share (serving/board.py): two slots each in a mapped file; a worker is
"ahead" when it holds more connections than the least loaded other one, and sees whether the others are busy."""

from __future__ import annotations

from serving.board import WorkerBoard


def test_connection_counts_and_ahead(tmp_path):
    path = tmp_path / "workers.bin"
    a, b, c = (WorkerBoard(path, 3, i) for i in range(3))
    assert (a.connections_ahead(), b.connections_ahead(), c.connections_ahead()) == (False, False, False)
    a.set_connections(2)
    b.set_connections(1)
    assert (a.connections_ahead(), b.connections_ahead(), c.connections_ahead()) == (True, True, False)
    c.set_connections(1)
    assert (a.connections_ahead(), b.connections_ahead(), c.connections_ahead()) == (True, False, False)
    again = WorkerBoard(path, 3, 0)  # a restarted worker 0 starts with none, the others keep theirs
    assert (again.connections_ahead(), b.connections_ahead()) == (False, True)
    assert path.stat().st_size == 24


def test_busy_is_seen_by_the_others_only(tmp_path):
    a, b = (WorkerBoard(tmp_path / "workers.bin", 2, i) for i in range(2))
    a.set_busy(3)
    assert (a.others_busy(), b.others_busy()) == (False, True)
    a.set_busy(0)
    assert b.others_busy() is False
    assert WorkerBoard(tmp_path / "one.bin", 1, 0).connections_ahead() is False  # a lone worker is never ahead
