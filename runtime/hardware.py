"""What the machine offers: usable CPU cores, the CPU model, NVIDIA GPUs and ONNX Runtime's providers.

One place for the service (worker and thread defaults, /info's ``device``), the runtime and the benchmarks
(bench.json's ``machine``). Standard library only (onnxruntime for its provider list, imported when asked);
nothing is probed at import, and nothing is cached, so every call sees the machine as it is now.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
from pathlib import Path

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CPUINFO = "/proc/cpuinfo"


def affinity_cores() -> int:
    """CPU cores this process may be scheduled on (its affinity mask; all cores where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cores = affinity_cores()
    try:
        quota, period = Path(CGROUP_CPU_MAX).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows, else "CPU"."""
    try:
        for line in Path(CPUINFO).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def gpu_names() -> list[str]:
    """The NVIDIA GPUs ``nvidia-smi`` lists, by name ([] without the tool or a working driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:  # e.g. "couldn't communicate with the NVIDIA driver", on stdout
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def gpu_count() -> int:
    """GPUs that ``nvidia-smi`` lists (0 without the tool or a driver)."""
    return len(gpu_names())


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers in this install (CUDAExecutionProvider with onnxruntime-gpu)."""
    import onnxruntime as ort

    return ort.get_available_providers()


def cuda_available() -> bool:
    """onnxruntime can run on CUDA and the machine has an NVIDIA GPU."""
    return "CUDAExecutionProvider" in available_providers() and gpu_count() > 0


def device_name(providers: list[str]) -> str:
    """What a session on ``providers`` (its ``get_providers()``) runs on: the GPU's name on CUDA, else the CPU's."""
    if providers and providers[0] == "CUDAExecutionProvider":
        names = gpu_names()
        return names[0] if names else "CUDA GPU"
    return cpu_model()


def describe() -> dict:
    """The machine in one dict: CPU model, cores (affinity), usable cores (with the cgroup quota), first GPU."""
    names = gpu_names()
    return {
        "cpu": cpu_model(),
        "cores": affinity_cores(),
        "usable_cores": usable_cores(),
        "gpu": names[0] if names else None,
    }
