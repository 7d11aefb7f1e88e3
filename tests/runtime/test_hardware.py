"""runtime.hardware: usable cores, the CPU model and the GPUs, on this machine and on faked ones (a cgroup quota, a
/proc/cpuinfo, an nvidia-smi), and that the service and the benchmarks take their figures from it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import runtime.providers
from runtime import hardware

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "CGROUP_CPU_MAX", str(tmp_path / "absent"))


@pytest.fixture
def fake_smi(monkeypatch, tmp_path):
    """Put an ``nvidia-smi`` that prints ``out`` and exits with ``rc`` first on PATH."""

    def make(out: str, rc: int = 0) -> None:
        exe = tmp_path / "nvidia-smi"
        exe.write_text(f"#!/bin/sh\nprintf '{out}'\nexit {rc}\n")
        exe.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")

    return make


def test_usable_cores_of_this_process_are_its_affinity_without_a_quota(no_quota):
    cores = len(os.sched_getaffinity(0))
    assert cores >= 1
    assert hardware.affinity_cores() == cores
    assert hardware.usable_cores() == cores


def test_usable_cores_with_the_real_cgroup_file_are_at_most_the_affinity():
    assert 1 <= hardware.usable_cores() <= len(os.sched_getaffinity(0))


def test_usable_cores_respects_a_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(hardware, "CGROUP_CPU_MAX", str(cpu_max))
    cpu_max.write_text("250000 100000\n")  # 2.5 CPUs -> 3 workers
    assert hardware.usable_cores() == 3
    cpu_max.write_text("max 100000\n")
    assert hardware.usable_cores() == 6
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one
    assert hardware.usable_cores() == 1
    cpu_max.write_text("garbage\n")  # unreadable: the affinity mask alone
    assert hardware.usable_cores() == 6
    assert hardware.affinity_cores() == 6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo is Linux's")
def test_cpu_model_of_this_machine():
    model = hardware.cpu_model()
    assert isinstance(model, str) and model.strip() == model and model
    names = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    assert model == (names[0] if names else platform.processor() or "CPU")


def test_cpu_model_from_a_cpuinfo_and_without_one(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Fake Xeon @ 2.10GHz \n\n"
        "processor\t: 1\nmodel name\t: Fake Xeon @ 2.10GHz\n"
    )
    monkeypatch.setattr(hardware, "CPUINFO", str(info))
    assert hardware.cpu_model() == "Fake Xeon @ 2.10GHz"
    monkeypatch.setattr(hardware, "CPUINFO", str(tmp_path / "absent"))
    assert hardware.cpu_model() == (platform.processor() or "CPU")


def test_gpus_from_nvidia_smi(fake_smi):
    fake_smi("NVIDIA H200\\nNVIDIA H100 80GB HBM3\\n")
    assert hardware.gpu_names() == ["NVIDIA H200", "NVIDIA H100 80GB HBM3"]
    assert hardware.gpu_count() == 2
    assert hardware.device_name(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "NVIDIA H200"
    assert hardware.describe()["gpu"] == "NVIDIA H200"


def test_a_failing_nvidia_smi_means_no_gpu(fake_smi):
    fake_smi("NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.\\n", rc=9)
    assert hardware.gpu_names() == [] and hardware.gpu_count() == 0
    assert hardware.device_name(["CUDAExecutionProvider"]) == "CUDA GPU"
    assert hardware.describe()["gpu"] is None


def test_no_nvidia_smi_means_no_gpu(monkeypatch):
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    assert hardware.gpu_names() == [] and hardware.gpu_count() == 0
    assert hardware.cuda_available() is False
    assert hardware.device_name(["CPUExecutionProvider"]) == hardware.cpu_model()


def test_gpus_of_this_machine():
    """The real nvidia-smi where there is one (its own count of GPUs), none where there is not."""
    names = hardware.gpu_names()
    exe = hardware.shutil.which("nvidia-smi")
    if exe is None:
        assert names == []
    else:
        listed = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
        assert len(names) == sum(line.startswith("GPU ") for line in listed.splitlines())
        assert all(name and name in listed for name in names)
    import onnxruntime

    assert hardware.available_providers() == onnxruntime.get_available_providers()
    assert hardware.cuda_available() == (
        "CUDAExecutionProvider" in onnxruntime.get_available_providers() and len(names) > 0
    )


def test_cuda_needs_both_the_provider_and_a_gpu(monkeypatch):
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    for providers, gpus, expected in ((cuda, 1, True), (cuda, 0, False), (["CPUExecutionProvider"], 2, False)):
        monkeypatch.setattr(hardware, "available_providers", lambda p=providers: p)
        monkeypatch.setattr(hardware, "gpu_count", lambda n=gpus: n)
        assert hardware.cuda_available() is expected


def test_describe_is_the_functions(no_quota):
    d = hardware.describe()
    assert d == {
        "cpu": hardware.cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "usable_cores": len(os.sched_getaffinity(0)),
        "gpu": (hardware.gpu_names() or [None])[0],
    }


def test_the_service_and_the_runtime_probe_through_this_module():
    """/info's device and the worker and thread defaults (serving), and the runtime's provider check."""
    from serving import app_state, config

    assert app_state.device_name is hardware.device_name  # AppState.device, /info "device"
    assert app_state.usable_cores is hardware.usable_cores  # the generator's wide session
    assert app_state.available_providers is hardware.available_providers  # preflight's CUDA check
    assert config.usable_cores is hardware.usable_cores  # RNNTEXT_WORKERS / RNNTEXT_THREADS defaults
    assert config.gpu_count is hardware.gpu_count
    assert config.cuda_available is hardware.cuda_available
    assert runtime.providers.available_providers is hardware.available_providers


def test_the_benchmarks_machine_comes_from_this_module(monkeypatch, no_quota):
    import onnxruntime

    from loadtests.bench import ceiling, run

    assert ceiling.usable_cores is hardware.usable_cores  # one ceiling process per usable core
    m = run.machine()
    assert {k: m[k] for k in ("cpu", "cores", "usable_cores", "gpu")} == hardware.describe()
    assert m["cores"] == m["usable_cores"] == len(os.sched_getaffinity(0))
    assert m["onnxruntime"] == onnxruntime.__version__ and m["python"] == platform.python_version()
    monkeypatch.setattr(hardware, "cpu_model", lambda: "Fake CPU")
    monkeypatch.setattr(hardware, "gpu_names", lambda: ["Fake GPU", "Other GPU"])
    monkeypatch.setattr(hardware, "usable_cores", lambda: 3)
    m = run.machine()
    assert (m["cpu"], m["gpu"], m["usable_cores"]) == ("Fake CPU", "Fake GPU", 3)


def test_importing_it_loads_neither_onnxruntime_nor_torch():
    code = "import sys, runtime.hardware\nprint(' '.join(m for m in ('onnxruntime', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
