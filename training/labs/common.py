"""What every lab shares: its run context (folder, size, device, seed, progress bars) and its result."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LabContext:
    name: str
    out: Path  # runs/labs/NAME/: config.json, metrics.json, *.png
    quick: bool  # the test size: seconds, not minutes
    device: Any  # torch.device
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
    headline: dict[str, Any]  # the last stdout line: a handful of figures
    metrics: dict[str, Any] = field(default_factory=dict)  # everything else, into metrics.json
    plots: list[str] = field(default_factory=list)  # PNG file names written under ctx.out


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch and NumPy's BLAS on ``n`` threads, restored afterwards. The labs' matrices are small: on two busy
    cores, two threads spin-waited (a step measured 5-10x slower than on one), and with one thread the floats do
    not depend on the machine's core count."""
    import torch
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
