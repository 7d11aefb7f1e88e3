"""Where and how reproducibly a run executes: seeds, the torch device, the library versions it ran with."""

from __future__ import annotations

import random
import sys

from training.common.cli import UserError


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto"):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but CUDA is not available")
    return torch.device(name)


def library_versions() -> dict[str, str]:
    """Recorded in manifests and run reports, so a result can be traced to the stack that produced it."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "numpy", "onnx", "onnxruntime", "optuna", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
