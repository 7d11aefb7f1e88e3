"""bench-generator: per-shape training (fp32 vs bf16) and served int8 speed, side by side."""

from __future__ import annotations

import json

from tests.conftest import training_cli as cli


def test_bench_reports_every_shape_relative_to_the_first():
    r = cli(
        "bench-generator",
        "--shapes",
        "1x32,2x48",
        "--train-steps",
        "1",
        "--serve-steps",
        "50",
        "--batch-size",
        "4",
        "--bptt",
        "8",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert [s["shape"] for s in doc["shapes"]] == ["1x32", "2x48"]
    first, second = doc["shapes"]
    assert first["vs_first"] == {"train_bf16": 1.0, "served_2_threads": 1.0}
    assert second["params_m"] > first["params_m"] > 0
    for s in doc["shapes"]:
        assert min(s["train_chars_per_s"].values()) > 0 and min(s["int8_steps_per_s"].values()) > 0
        rate = s["train_chars_per_s"]
        assert abs(s["bf16_speedup"] - rate["bf16"] / rate["fp32"]) < 1e-9


def test_bench_rejects_a_bad_shape():
    r = cli("bench-generator", "--shapes", "big")
    assert r.returncode == 2 and "error: --shapes wants LAYERSxHIDDEN" in r.stderr
