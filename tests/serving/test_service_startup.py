"""Start-up and packaging: a model file that does not match its manifest stops ``bentoml serve`` with a clear
message; ``bentoml build`` packs the service, the runtime and the models, and no training code (the
no-torch rule itself: tests/test_architecture.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tiny_models
from serving_helpers import ROOT, Server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("damage", ["classifier/model.onnx", "generator/step.onnx"])
def test_refuses_to_start_on_sha256_mismatch(tmp_path, damage):
    models = tiny_models.build(tmp_path / "models")
    with open(models / damage, "ab") as f:
        f.write(b"\0")
    srv = Server(env={"RNNTEXT_MODELS": str(models)})
    try:
        assert srv.proc.wait(timeout=120) != 0
    finally:
        srv.stop()
    out = srv.output()
    assert f"rnntext refuses to start: {models / damage}: sha256 " in out
    assert "does not match the manifest" in out


def test_refuses_to_start_without_models(tmp_path):
    srv = Server(env={"RNNTEXT_MODELS": str(tmp_path / "nowhere")})
    try:
        assert srv.proc.wait(timeout=120) != 0
    finally:
        srv.stop()
    assert f"rnntext refuses to start: model directory not found: {tmp_path / 'nowhere' / 'classifier'}" in srv.output()


def test_refuses_to_start_with_cuda_but_no_cuda(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the setting is valid here")
    srv = Server(env={"RNNTEXT_MODELS": str(tiny_models.build(tmp_path / "models")), "RNNTEXT_PROVIDER": "cuda"})
    try:
        assert srv.proc.wait(timeout=120) != 0
    finally:
        srv.stop()
    assert (
        "rnntext refuses to start: RNNTEXT_PROVIDER=cuda, but onnxruntime has no CUDAExecutionProvider" in srv.output()
    )


def test_bentoml_build_accepts_bentofile(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("rnntext:"), out.stdout
    bento = tmp_path / "bentoml" / "bentos" / "rnntext" / tag.split(":")[1] / "src"
    for rel in (
        "serving/service.py",
        "serving/model_store.py",
        "runtime/classifier.py",
        "runtime/generator.py",
        "runtime/manifest.py",
        "runtime/providers.py",
    ):
        assert (bento / rel).is_file(), rel
    # the models travel as BentoML models, not as source files (tests/serving/test_model_store.py)
    assert not (bento / "training").exists() and not (bento / "exported_models").exists()
    reqs = (bento.parent / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in reqs and "torch" not in reqs
