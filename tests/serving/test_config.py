"""Settings from RNNTEXT_* variables: the defaults of the request deadlines, the connection cap and tracing, and
one clear error for a value the service cannot use."""
from __future__ import annotations

import pytest

from serving.config import ConfigError, Settings


def test_defaults():
    s = Settings.from_env({})
    assert (s.read_timeout_s, s.max_connections, s.tracing, s.warmup) == (30.0, 1000, False, True)
    assert s.public()["read_timeout_s"] == 30.0 and "api_key" not in s.public()


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("off", False)])
def test_tracing_switch(value, expected):
    assert Settings.from_env({"RNNTEXT_TRACING": value}).tracing is expected


@pytest.mark.parametrize("env, message", [
    ({"RNNTEXT_READ_TIMEOUT_S": "0"}, "RNNTEXT_READ_TIMEOUT_S=0.0: must be a positive number"),
    ({"RNNTEXT_READ_TIMEOUT_S": "soon"}, "RNNTEXT_READ_TIMEOUT_S='soon': expected a number"),
    ({"RNNTEXT_MAX_CONNECTIONS": "0"}, "RNNTEXT_MAX_CONNECTIONS=0: must be at least 1"),
    ({"RNNTEXT_MAX_CONNECTIONS": "1.5"}, "RNNTEXT_MAX_CONNECTIONS='1.5': expected an integer"),
])
def test_bad_values(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message
