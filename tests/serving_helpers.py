"""Subprocesses for the serving tests: a real ``bentoml serve`` and a real ``redis-server``, each on a free port.

Both run in their own process group and are stopped (SIGTERM, then SIGKILL) by ``stop()``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Server:
    """``bentoml serve`` from the project root (bentofile.yaml), as ``make serve`` runs it."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # own BENTOML_HOME: each `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts,
        # which would wipe the metrics of any other server on this machine (other tests, other replicas)
        self.home = tempfile.mkdtemp(prefix="rnntext-bentoml-")
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": self.home,
                    "ORT_INTRA_OP_THREADS": "1", "RNNTEXT_THREADS": "1", **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="rnntext-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


class RedisServer:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="rnntext-redis-")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# Module-scoped fixtures: a test module imports them and may set SERVER_ENV / CLIENT_HEADERS at module level.
@pytest.fixture(scope="module")
def server(request):
    srv = Server(env=getattr(request.module, "SERVER_ENV", None))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server, request):
    with httpx.Client(base_url=server.url, timeout=120,
                      headers=getattr(request.module, "CLIENT_HEADERS", None)) as c:
        yield c


def sse_events(resp: httpx.Response) -> list[dict]:
    """Parse a whole text/event-stream body, asserting the framing: every event is one ``data: <JSON>`` line
    followed by a blank line."""
    body = resp.text
    assert body.endswith("\n\n"), repr(body[-50:])
    events = []
    for block in body[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, repr(block)
        events.append(json.loads(block[len("data: "):]))
    return events


def generated_text(events: list[dict]) -> str:
    return "".join(e.get("text", "") for e in events)
