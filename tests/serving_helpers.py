"""Subprocesses for the serving tests: a real ``bentoml serve`` and a real ``redis-server``, each on a free port
and in its own process group, plus module-scoped server/client fixtures and an SSE parser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from loadtests import server as loadtest_server

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class Server(loadtest_server.Server):
    """``bentoml serve`` from the project root (bentofile.yaml), as ``make serve`` runs it, with its own
    BENTOML_HOME (see loadtests.server.Server), one ONNX Runtime thread, and its output kept in a log file."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None):
        fd, log = tempfile.mkstemp(prefix="rnntext-serve-", suffix=".log")
        os.close(fd)
        super().__init__(
            env={"ORT_INTRA_OP_THREADS": "1", "RNNTEXT_THREADS": "1", **(env or {})}, port=port, log_path=Path(log)
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> float:
        try:
            return super().wait_ready(timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{exc}\n{self.output()[-4000:]}") from None


class RedisServer:
    def __init__(self, port: int | None = None):
        self.port = port or loadtest_server.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="rnntext-redis-")
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
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
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # nothing to keep: the store is thrown away
            self.proc.wait(10)
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
    with httpx.Client(base_url=server.url, timeout=120, headers=getattr(request.module, "CLIENT_HEADERS", None)) as c:
        yield c


def sse_events(resp: httpx.Response) -> list[dict]:
    """Parse a whole text/event-stream body, asserting the framing: every event is one ``data: <JSON>`` line
    followed by a blank line."""
    body = resp.text
    assert body.endswith("\n\n"), repr(body[-50:])
    events = []
    for block in body[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, repr(block)
        events.append(json.loads(block[len("data: ") :]))
    return events


def read_all(s: socket.socket) -> bytes:
    """Everything a raw socket receives until the server closes the connection."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """A raw HTTP/1.1 response: status line, headers (lower-case names), body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


def generated_text(events: list[dict]) -> str:
    return "".join(e.get("text", "") for e in events)
