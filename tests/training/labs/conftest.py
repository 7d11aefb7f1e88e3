"""The lab tests run their models as the lab command does: torch and BLAS on one thread (training/labs/common.py)."""

from __future__ import annotations

import pytest

from training.labs.common import cpu_threads


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads(1):
        yield
