"""ONNX Runtime sessions on the execution provider asked for (CUDA when present, CPU otherwise)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runtime.hardware import available_providers
from runtime.manifest import ArtifactError

log = logging.getLogger(__name__)


def resolve_provider(provider: str = "auto") -> str:
    """``auto`` -> "cuda" when onnxruntime has the CUDA provider, else "cpu"; "cuda" without it is an error."""
    avail = available_providers()
    if provider == "auto":
        return "cuda" if "CUDAExecutionProvider" in avail else "cpu"
    if provider == "cuda" and "CUDAExecutionProvider" not in avail:
        raise ArtifactError(
            "provider 'cuda' asked for, but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    if provider not in ("cuda", "cpu"):
        raise ArtifactError(f"unknown provider {provider!r} (auto | cuda | cpu)")
    return provider


def cuda_device_id() -> int:
    return int(os.environ.get("ORT_CUDA_DEVICE", "0"))


def make_session(
    path: str | os.PathLike, provider: str = "auto", intra_threads: int | None = None, inter_threads: int = 1
):
    """An ONNX Runtime InferenceSession.

    provider: ``auto`` (CUDA when available, else CPU), ``cuda`` (error if unavailable) or ``cpu``.
    intra_threads: threads per op; default ``$ORT_INTRA_OP_THREADS`` or 1. ONNX Runtime's own default
    spins one thread per core, which starves the web server and the other workers in the process.
    """
    import onnxruntime as ort

    if resolve_provider(provider) == "cuda":
        providers = [
            ("CUDAExecutionProvider", {"device_id": cuda_device_id(), "arena_extend_strategy": "kSameAsRequested"}),
            "CPUExecutionProvider",
        ]
    else:
        providers = ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_threads or int(os.environ.get("ORT_INTRA_OP_THREADS", "1"))
    opts.inter_op_num_threads = inter_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    log.info("%s: providers %s", Path(path).name, sess.get_providers())
    return sess
