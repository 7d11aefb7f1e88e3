"""The service under test as a subprocess: ``bentoml serve`` on a free port, ready-wait, RSS of its process tree.

Shared by the locust load test, the soak, the benchmarks, the HTTP tests and the local cluster (deploy/cluster.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loadtests import ROOT

# The load tests, the soak and the benchmarks send a whole server's load from one address, which the service sees
# as one client and would hold to one client's share (docs/serving.md "Clients, quotas and limits"). They measure
# the server, not the quotas, so they lift the per-client limits, and print that they do (announce()).
ONE_CLIENT_LIMITS = {
    "RNNTEXT_CLIENT_RATE": "0",
    "RNNTEXT_CLIENT_MAX_STREAMS": "1000000",
    "RNNTEXT_CLIENT_MAX_SESSIONS": "1000000",
    "RNNTEXT_CLIENT_MAX_CONNECTIONS": "1000000",
}


def announce(env: dict[str, str]) -> str:
    """The line the load commands print about the per-client limits they run with."""
    lifted = {k: v for k, v in ONE_CLIENT_LIMITS.items() if env.get(k) == v}
    if not lifted:
        return "per-client limits: the service's defaults"
    return "per-client limits lifted (all load comes from one address): " + " ".join(
        f"{k}={'0 (no limit)' if v == '0' else v}" for k, v in lifted.items()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list:
    """The process and all its descendants (psutil); empty once it is gone. A ``bentoml serve``'s workers are not
    in its process group: circus starts each in a session of its own (os.setsid in circus/process.py), so a signal
    to the group reaches the main process only, and its workers would live on, still serving on the inherited
    socket. What must reach them all goes through this list."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to a process and every descendant at once (a machine or a pod lost), then reap them."""
    procs = process_tree(proc.pid)
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    proc.wait(10)
    for p in procs[1:]:
        with contextlib.suppress(Exception):
            p.wait(10)


def wait_ready(
    url: str, proc: subprocess.Popen, timeout: float, name: str = "server", log_path=None, period: float = 0.5
) -> float:
    """Seconds until ``url``/readyz answers 200 (asked every ``period`` s); RuntimeError when ``proc`` exits
    first, TimeoutError after ``timeout`` seconds."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with code {proc.returncode} before it was ready"
                + (f" (log: {log_path})" if log_path else "")
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        time.sleep(period)
    raise TimeoutError(f"{name} not ready after {timeout:.0f} s" + (f" (log: {log_path})" if log_path else ""))


def tree_total(pid: int, value) -> float:
    """``value(process)`` summed over a process and all its descendants (psutil); 0 once it is gone. A process
    that ends meanwhile counts 0."""
    import psutil

    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += value(p)
    return total


def stop_group(proc: subprocess.Popen, log=subprocess.DEVNULL, timeout: float = 20) -> None:
    """SIGTERM to a server's process group (a supervisor and its workers share it), SIGKILL to its whole tree after
    ``timeout`` s (the group would miss workers that left it), then close its log file."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
    if log is not subprocess.DEVNULL:
        log.close()


class Server:
    """A ``bentoml serve`` subprocess in its own process group; ``rss()`` sums its whole process tree."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        port: int | None = None,
        service: str | None = None,
        log_path: Path | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            *([service] if service else []),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        # own BENTOML_HOME: a starting `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir, which
        # would wipe the metrics of any other server on this host (see docs/serving.md)
        self._home = tempfile.TemporaryDirectory(prefix="rnntext-loadtest-bentoml-")
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": self._home.name, **(env or {})}
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 180.0) -> float:
        return wait_ready(self.url, self.proc, timeout, log_path=self.log_path)

    def rss(self) -> int:
        return int(tree_total(self.proc.pid, lambda p: p.memory_info().rss))

    def stop(self) -> None:
        stop_group(self.proc, self._log)
        self._home.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RssSampler(threading.Thread):
    def __init__(self, server: Server, period: float = 1.0):
        super().__init__(daemon=True)
        self.server, self.period = server, period
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self._halt.is_set():
            self.samples.append((time.perf_counter() - self.t0, self.server.rss()))
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join()
