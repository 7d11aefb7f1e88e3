"""The two Bentos: bentofile.yaml (CPU) and bentofile-cuda.yaml (onnxruntime-gpu on CUDA), parsed with BentoML's
own build-config loader; requirements/serve-gpu.lock against requirements/serve.lock; and (slow) the CUDA Bento
as ``bentoml build -f bentofile-cuda.yaml`` writes it. No GPU is needed: nothing here runs on CUDA."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bentoml._internal.bento.build_config import BentoBuildConfig

ROOT = Path(__file__).resolve().parents[1]
SERVE_LOCK = ROOT / "requirements" / "serve.lock"
GPU_LOCK = ROOT / "requirements" / "serve-gpu.lock"


def config(name: str) -> BentoBuildConfig:
    return BentoBuildConfig.from_file(str(ROOT / name))  # unknown keys, bad CUDA/distro values raise here


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", " ", "-")):
            name, _, rest = line.partition("==")
            out[name.strip()] = rest.strip()
    return out


def dockerfile_gpu_base() -> str:
    return re.search(r"^FROM (\S+) AS base-gpu$", (ROOT / "Dockerfile").read_text(), re.M).group(1)


def test_the_cuda_bentofile_is_the_same_bento_on_another_base():
    cpu, cuda = config("bentofile.yaml"), config("bentofile-cuda.yaml")
    assert cuda.service == cpu.service == "serving.service:RnnText"
    assert cuda.include == cpu.include and cuda.exclude == cpu.exclude
    assert cuda.name == "rnntext-cuda" and cpu.name == "rnntext"
    assert cuda.python.requirements_txt == "requirements/serve-gpu.lock" and cuda.python.lock_packages is False
    # the base of the Dockerfile's GPU variant: CUDA 13 + cuDNN 9, which the locked onnxruntime-gpu wheels need
    assert cuda.docker.base_image == dockerfile_gpu_base()
    assert re.fullmatch(r"nvidia/cuda:13\.[\d.]+-cudnn-runtime-ubuntu24\.04", cuda.docker.base_image)


def test_the_cpu_bentofile_packs_models_as_models():
    cpu = config("bentofile.yaml")
    assert not [p for p in cpu.include if "exported_models" in p]
    assert cpu.python.requirements_txt == "requirements/serve.lock"
    assert "RNNTEXT_MODELS" not in {e.name for e in cpu.envs}


def test_gpu_lock_is_the_serve_lock_with_onnxruntime_gpu():
    serve, gpu = pins(SERVE_LOCK), pins(GPU_LOCK)
    assert "onnxruntime" not in gpu
    assert gpu["onnxruntime-gpu"] == serve["onnxruntime"]
    assert {("onnxruntime" if k == "onnxruntime-gpu" else k): v for k, v in gpu.items()} == serve
    # exactly what `make lock` writes (and what the Dockerfile's GPU variant installs, by the same sed)
    body = re.sub(r"(?m)^onnxruntime==", "onnxruntime-gpu==", SERVE_LOCK.read_text())
    assert GPU_LOCK.read_text().split("\n", 1)[1] == body
    makefile = (ROOT / "Makefile").read_text()
    assert (
        "sed 's/^onnxruntime==/onnxruntime-gpu==/' requirements/serve.lock; } > requirements/serve-gpu.lock" in makefile
    )


@pytest.mark.slow
def test_the_cuda_bento_installs_onnxruntime_gpu_on_the_cuda_base(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentofile-cuda.yaml", "--output", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("rnntext-cuda:")
    bento = tmp_path / "bentoml" / "bentos" / "rnntext-cuda" / tag.split(":")[1]
    reqs = pins(bento / "env" / "python" / "requirements.txt")
    assert reqs["onnxruntime-gpu"] == pins(SERVE_LOCK)["onnxruntime"] and "onnxruntime" not in reqs
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert f"FROM {dockerfile_gpu_base()} AS base-container" in dockerfile
    # BentoML warns that python_version and system_packages are ignored next to base_image; its v2 image builder,
    # which this Bento uses, does apply them: pip for the uv bootstrap, and the image's own Python 3.12
    assert "python3-pip" in dockerfile and "uv venv --python 3.12 " in dockerfile
    assert "ENV PIP_BREAK_SYSTEM_PACKAGES=" in dockerfile
    assert not (bento / "src" / "exported_models").exists() and not (bento / "src" / "training").exists()
    # the Bento's API description is this service's OpenAPI 3.1 document (serving/openapi.py), plain YAML
    spec = yaml.safe_load((bento / "apis" / "openapi.yaml").read_text())
    assert spec["openapi"] == "3.1.0" and spec["components"]["schemas"]["Error"]["required"] == ["error", "kind"]
    assert set(spec["paths"]["/info"]) == {"get", "post"}
    # the pages the service serves travel with it
    assert sorted(p.name for p in (bento / "src" / "serving" / "web").iterdir()) == sorted(
        p.name for p in (ROOT / "serving" / "web").iterdir()
    )
