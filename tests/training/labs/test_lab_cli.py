"""The lab command itself: every lab is listed with --help, and a run writes its folder and ends with its headline."""

from __future__ import annotations

import pytest

from tests.conftest import run_lab, training_cli
from training.common.files import read_json
from training.labs import LABS


def test_every_lab_is_a_sub_command_with_help():
    r = training_cli("lab", "--help")
    assert r.returncode == 0, r.stderr
    for name in LABS:
        assert name in r.stdout
    for name in LABS:
        r = training_cli("lab", name, "--help")
        assert r.returncode == 0, (name, r.stderr)
        assert "--quick" in r.stdout and "--device" in r.stdout and "--seed" in r.stdout, name


def test_a_run_writes_config_metrics_and_ends_with_its_headline(tmp_path):
    headline = run_lab("shapes", tmp_path, "--seed", "3")
    assert headline["seconds"] >= 0
    folder = tmp_path / "shapes"
    config, metrics = read_json(folder / "config.json"), read_json(folder / "metrics.json")
    assert config["lab"] == "shapes" and config["seed"] == 3 and config["quick"] is True
    assert metrics["quick"] is True and metrics["device"] == "cpu" and "torch" in metrics["versions"]
    assert {k: v for k, v in headline.items() if k not in ("lab", "seconds")} == metrics["headline"]


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = training_cli("lab", "shapes", "--device", "cuda", "--out", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --device cuda asked for, but CUDA is not available"
