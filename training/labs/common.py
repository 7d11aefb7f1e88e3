"""What every lab shares: its run context (folder, size, device, seed, progress bars) and its result."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LabContext:
    name: str
    out: Path            # runs/labs/NAME/: config.json, metrics.json, *.png
    quick: bool          # the test size: seconds, not minutes
    device: Any          # torch.device
    seed: int
    progress: bool = True

    def path(self, filename: str) -> Path:
        return self.out / filename

    def bar(self, iterable: Iterable | None = None, **kwargs):
        """A tqdm bar on stderr, off with --no-progress; ``total=``/``desc=`` as for tqdm."""
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=not self.progress, leave=False, dynamic_ncols=True, **kwargs)


@dataclass
class LabResult:
    headline: dict[str, Any]                 # the last stdout line: a handful of figures
    metrics: dict[str, Any] = field(default_factory=dict)   # everything else, into metrics.json
    plots: list[str] = field(default_factory=list)          # PNG file names written under ctx.out


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default
