"""Command-line plumbing: the one error type commands raise for bad input, data paths and run folders."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

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


def make_run_dir(root: str | os.PathLike | None, prefix: str) -> Path:
    """A fresh folder ``<root>/<prefix>-<UTC timestamp>`` (root defaults to ./runs)."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    path = Path(root or "runs") / f"{prefix}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path
