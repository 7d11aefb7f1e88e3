"""The "batching off" baseline for the HTTP benchmark: the service's own ClassifierRuntime behind a
non-batchable BentoML endpoint, so each request runs its own model call (concurrently, in BentoML's thread pool).

Used because the service has no setting that turns adaptive batching off: BentoML rejects
``max_batch_size=1`` ("'max_batch_size' must be > 1"), so RNNTEXT_MAX_BATCH_SIZE=1 does not start.
Same models folder, provider and intra-op threads as the service (RNNTEXT_MODELS / RNNTEXT_PROVIDER /
RNNTEXT_THREADS via serving.config), same request and reply format. Serve it with
``bentoml serve loadtests.bench.nobatch:NoBatch`` (loadtests.bench does). No torch.
"""
from __future__ import annotations

import bentoml

from runtime.manifest import model_dir
from serving.config import Settings

SETTINGS = Settings.from_env()


@bentoml.service(name="rnntext-nobatch", workers=1, traffic={"timeout": 300})
class NoBatch:
    def __init__(self) -> None:
        from runtime.classifier import ClassifierRuntime

        self.runtime = ClassifierRuntime(model_dir(SETTINGS.models, "classifier"), SETTINGS.provider,
                                         SETTINGS.threads)
        self.runtime.predict_proba(["warm up the session " * 50, "a short one"])

    @bentoml.api
    def classify(self, texts: list[str]) -> list[dict]:
        return self.runtime.classify(texts)
