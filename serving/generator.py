"""Character generation with the exported ONNX generator (numpy + onnxruntime only, no torch).

The BentoML service and the ``generate`` command share these numerics. A stream's whole state is a
``GenState``: recurrent state (h, c), the logits of the next character and the RNG state. Invariant: after
N characters have been emitted, every one of them has been fed to the model, so a stream can be stopped
and resumed anywhere (``start("", state)``) and produces exactly what an uninterrupted run would.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.artifacts import load_manifest, make_session, model_dir


def sample_next(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, rng: np.random.Generator | None = None) -> int:
    """One character id from next-char logits (V,): temperature 0 = argmax; else top-k, then top-p nucleus."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs an rng")
    z = logits / temperature
    order = np.argsort(-z, kind="stable")  # most likely first; stable so ties are deterministic
    z = z[order]
    if top_k is not None and 0 < top_k < len(z):
        z = z[:top_k]
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and 0 < top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1  # smallest prefix with mass >= top_p
        p = p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(p), p=p)])
