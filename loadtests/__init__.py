"""Load tests and benchmarks for the serving stack. Two sides, sharing the clients' texts and the server harness:

Load tests (promises under traffic: no failures, latency objectives, flat memory)
    python -m loadtests.run     # = make loadtest: locust headless against a started server (locustfile.py)
    python -m loadtests.soak    # = make soak: 100,000 mixed requests, RSS per request

Benchmarks (``loadtests/bench/``: speed against a ceiling measured in the same run)
    python -m loadtests.bench   # = make bench: ORT vs TorchScript vs eager, batching, generation, sessions

Shared: ``texts`` (what the clients send), ``sse`` (the event-stream parser), ``server`` (``bentoml serve`` as a
subprocess). Nothing here imports torch except the model benchmarks that time TorchScript and eager PyTorch.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
