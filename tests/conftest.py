"""Shared fixtures. Real-data tests read $DATA_DIR (the Makefile and .ci/run point it at ../shared/data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import texts

ROOT = Path(__file__).resolve().parents[1]
EXPORTED = ROOT / "exported_models"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = texts.data_dir()  # the same $DATA_DIR rule the load tests and benchmarks read by
    # real-data tests must run in CI: a missing corpus is a failure, not a skip
    assert (d / "bbc").is_dir() and (d / "sherlock" / "canon.txt").is_file(), f"corpus not found under {d}"
    return d


@pytest.fixture(scope="session")
def bbc_dir(data_dir: Path) -> Path:
    return data_dir / "bbc"


@pytest.fixture(scope="session")
def canon_path(data_dir: Path) -> Path:
    return data_dir / "sherlock" / "canon.txt"


@pytest.fixture(scope="session")
def exported() -> Path:
    return EXPORTED


def training_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m training ARGS`` from the project root, output captured (``env`` added to this process's)."""
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env} if env else None,
    )


def run_lab(name: str, out: Path, *args: str, data_dir: Path | None = None) -> dict:
    """``python -m training lab NAME --quick --out OUT --no-progress ARGS``: its headline, the last stdout line."""
    r = training_cli(
        "lab",
        name,
        "--quick",
        "--out",
        str(out),
        "--no-progress",
        *args,
        env={"DATA_DIR": str(data_dir)} if data_dir else None,
    )
    assert r.returncode == 0, r.stderr
    headline = json.loads(r.stdout.strip().splitlines()[-1])
    assert headline["lab"] == name
    return headline


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on a free port, for one test module."""
    from serving_helpers import RedisServer

    server = RedisServer()
    yield server
    server.stop()
