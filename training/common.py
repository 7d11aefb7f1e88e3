"""Small shared helpers: errors, decoding, seeding, devices, run folders, JSON."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "DATA_DIR"


class UserError(Exception):
    """A problem with what the user gave us (paths, files, flags): printed as one line, exit code 2."""


def data_path(explicit: str | os.PathLike | None, sub: str) -> Path:
    """Resolve a data path: an explicit flag wins, else ``$DATA_DIR/<sub>``."""
    if explicit:
        return Path(explicit)
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        raise UserError(f"no data path given: pass it as a flag or set ${DATA_DIR_ENV} (expects {sub} below it)")
    return Path(root) / sub


def read_text(path: str | os.PathLike) -> str:
    """Read a text file as UTF-8, falling back to Latin-1 with a warning naming the file."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        warnings.warn(f"{path}: not valid UTF-8, decoded as Latin-1", stacklevel=2)
        return raw.decode("latin-1")


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


def make_run_dir(root: str | os.PathLike | None, prefix: str) -> Path:
    """A fresh folder ``<root>/<prefix>-<UTC timestamp>`` (root defaults to ./runs)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = Path(root or "runs") / f"{prefix}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)!r}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=to_jsonable, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "numpy", "onnx", "onnxruntime", "optuna", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
