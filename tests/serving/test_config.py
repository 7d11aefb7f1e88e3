"""Settings from RNNTEXT_* variables (pydantic): defaults, the worker and thread defaults from the usable cores,
and one clear error naming the variable for a value the service cannot use."""

from __future__ import annotations

import pytest

from serving import config
from serving.config import ConfigError, Settings


def test_defaults():
    s = Settings.from_env({})
    assert (s.read_timeout_s, s.max_connections, s.tracing, s.warmup) == (30.0, 1000, False, True)
    assert (s.provider, s.precision, s.session_db, s.session_store) == ("auto", "auto", "", "sqlite")
    assert s.public()["read_timeout_s"] == 30.0 and "api_key" not in s.public()
    assert s.models == config.ROOT / "exported_models"


def test_workers_default_to_the_usable_cores_and_threads_fill_them(monkeypatch):
    monkeypatch.setattr(config, "usable_cores", lambda: 8)
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    assert (Settings.from_env({}).workers, Settings.from_env({}).threads) == (8, 1)
    s = Settings.from_env({"RNNTEXT_WORKERS": "2"})
    assert (s.workers, s.threads) == (2, 2)  # 8 cores / (2 models x 2 workers)
    assert Settings.from_env({"RNNTEXT_WORKERS": "1", "RNNTEXT_THREADS": "3"}).threads == 3


def test_one_worker_per_gpu_on_cuda(monkeypatch):
    monkeypatch.setattr(config, "usable_cores", lambda: 16)
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    monkeypatch.setattr(config, "gpu_count", lambda: 2)
    assert Settings.from_env({}).workers == 2
    assert Settings.from_env({"RNNTEXT_PROVIDER": "cpu"}).workers == 16


def test_usable_cores_respects_a_cgroup_quota(monkeypatch, tmp_path):
    """usable_cores is runtime.hardware's (tests/runtime/test_hardware.py tests it); the defaults follow it."""
    from runtime import hardware

    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(hardware, "CGROUP_CPU_MAX", str(tmp_path / "cpu.max"))
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs -> 3 workers
    assert config.usable_cores() == 3
    assert Settings.from_env({}).workers == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert config.usable_cores() == 6
    assert Settings.from_env({}).workers == 6


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("off", False)])
def test_tracing_switch(value, expected):
    assert Settings.from_env({"RNNTEXT_TRACING": value}).tracing is expected


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RNNTEXT_READ_TIMEOUT_S": "0"}, "RNNTEXT_READ_TIMEOUT_S='0': Input should be greater than 0"),
        (
            {"RNNTEXT_READ_TIMEOUT_S": "soon"},
            "RNNTEXT_READ_TIMEOUT_S='soon': Input should be a valid number, unable to parse string as a number",
        ),
        ({"RNNTEXT_SESSION_TTL_S": "inf"}, "RNNTEXT_SESSION_TTL_S='inf': Input should be a finite number"),
        ({"RNNTEXT_MAX_CONNECTIONS": "0"}, "RNNTEXT_MAX_CONNECTIONS='0': Input should be greater than or equal to 1"),
        (
            {"RNNTEXT_MAX_CONNECTIONS": "1.5"},
            "RNNTEXT_MAX_CONNECTIONS='1.5': Input should be a valid integer, unable to parse string as an integer",
        ),
        ({"RNNTEXT_MAX_BATCH_SIZE": "1"}, "RNNTEXT_MAX_BATCH_SIZE='1': Input should be greater than or equal to 2"),
        ({"RNNTEXT_PRECISION": "fp16"}, "RNNTEXT_PRECISION='fp16': Input should be 'auto', 'fp32' or 'int8'"),
        ({"RNNTEXT_PROVIDER": "gpu"}, "RNNTEXT_PROVIDER='gpu': Input should be 'auto', 'cuda' or 'cpu'"),
        ({"RNNTEXT_DEFAULT_CHARS": "3000"}, "Value error, RNNTEXT_DEFAULT_CHARS must not exceed RNNTEXT_MAX_CHARS"),
    ],
)
def test_bad_values(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message
