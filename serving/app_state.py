"""Everything one service worker holds: the two runtimes, the session store, the step batcher, the metrics.

Built in the worker by the service's ``__init__``. Loading the runtimes verifies every artifact's sha256
against its manifest (runtime.manifest.load_manifest); a mismatch raises ArtifactError and the worker does
not start. ``warm_up`` then runs a few dummy requests through the service's own /classify path (BentoML's
in-process client) before /readyz says ready. ``preflight`` runs once in the main process, before the workers.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.hardware import available_providers, device_name, usable_cores
from runtime.manifest import model_id

from .config import Settings
from .generation import Generation
from .metrics import Metrics
from .quotas import make_quotas
from .sessions import make_store
from .stepper import Stepper

log = logging.getLogger("rnntext.service")

# the whole /classify path (validation, dispatcher, thread pool, serialization) once alone and in bursts, so
# that the first clients do not pay for first-call set-up; serving/patches/dispatcher.py needs no training phase
WARM_SEQUENTIAL = 3
WARM_BURSTS = (4, 16)


def preflight(settings: Settings, model_dirs: dict[str, Path] | None = None) -> None:
    """What would make every worker fail: artifacts that do not match their manifests, no CUDA for 'cuda'."""
    from runtime.manifest import ArtifactError, load_manifest

    try:
        for kind, folder in (model_dirs or default_dirs(settings)).items():
            load_manifest(folder, kind=kind)  # checks every file's sha256
        if settings.provider == "cuda" and "CUDAExecutionProvider" not in available_providers():
            raise ArtifactError(
                "RNNTEXT_PROVIDER=cuda, but onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu, or use auto or cpu)"
            )
    except ArtifactError as exc:
        raise SystemExit(f"rnntext refuses to start: {exc}") from None
    # a folder per server start, shared by its workers (they inherit the environment) and removed when the
    # server exits: the workers' connection counts (serving/patches/connections.py) and, unless Redis or a file of one's
    # own is configured, the SQLite session store (sessions then last as long as the server, as in memory)
    folder = tempfile.mkdtemp(prefix="rnntext-run-")
    atexit.register(shutil.rmtree, folder, True)
    os.environ["RNNTEXT_RUN_DIR"] = folder
    if not settings.redis_url and not settings.session_db:
        os.environ["RNNTEXT_SESSION_DB"] = str(Path(folder) / "sessions.db")


def default_dirs(settings: Settings) -> dict[str, Path]:
    from runtime.manifest import model_dir

    return {kind: model_dir(settings.models, kind) for kind in ("classifier", "generator")}


def _timestamp(iso: str | None) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except (TypeError, ValueError):
        return 0


def model_tag(manifest: dict, files: dict[str, str]) -> str:
    """Identifies the weights in use (the files of the precision loaded): a session saved by another model
    version or precision is not resumed, since its state would not continue the same text."""
    used = {name: manifest["files"][name] for name in sorted(files.values())}
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]


class AppState:
    def __init__(
        self,
        settings: Settings,
        worker: int | None = None,
        model_dirs: dict[str, Path] | None = None,
        board: Any = None,
    ):
        from runtime.classifier import ClassifierRuntime
        from runtime.generator import GeneratorRuntime

        # BentoML's logging config leaves the root logger at WARNING: say what is in use at start
        for name in ("rnntext", "runtime"):
            logging.getLogger(name).setLevel(logging.INFO)
        self.settings = s = settings
        self.worker = worker
        self.model_dirs = model_dirs or default_dirs(s)
        self.classifier = ClassifierRuntime(self.model_dirs["classifier"], s.provider, s.threads, precision=s.precision)
        self.generator = GeneratorRuntime(
            self.model_dirs["generator"], s.provider, s.threads, precision=s.precision, wide_threads=usable_cores()
        )
        self.providers = {
            "classifier": self.classifier.session.get_providers(),
            "generator": self.generator.step_session.get_providers(),
        }
        self.precision = {"classifier": self.classifier.precision, "generator": self.generator.precision}
        # the generator's name and date for OpenAI's clients (GET /v1/models, the "model" field)
        self.model_id = model_id(self.generator.manifest)
        self.model_created = _timestamp(self.generator.manifest.get("created"))
        self.device = device_name(self.providers["classifier"])
        log.info(
            "worker %s of %d: ONNX Runtime providers %s on %s, precision %s (setting %r), %d intra-op "
            "thread(s) per session",
            worker,
            s.workers,
            self.providers,
            self.device,
            self.precision,
            s.precision,
            s.threads,
        )
        self.metrics = Metrics(s.max_batch_size, s.max_streams)
        # the workers read RNNTEXT_SESSION_DB with their settings; preflight set it for them (none: one process)
        if not s.redis_url and not s.session_db and s.workers > 1:
            raise RuntimeError("no RNNTEXT_SESSION_DB: the workers would not share their sessions")
        self.store = make_store(
            s.redis_url,
            s.session_db or None,
            s.session_ttl_s,
            s.max_sessions,
            lease_s=s.session_lease_s,
            redis_prefix=s.redis_prefix,
        )
        # the clients' rates and stream slots, beside the sessions (serving/quotas.py); the gate reads them too
        self.quotas = make_quotas(self.store, s.session_lease_s)
        self.directory = s.directory
        # what this worker is doing, for the other workers (serving/board.py) and for the choice of step session
        self.board = board
        self._busy_lock = threading.Lock()
        self._classifying = self._stepping = 0
        self.stepper = Stepper(
            self.generator, s.max_streams, on_tick=self._on_tick, wide=self._wide, busy=lambda: self._classifying > 0
        )
        self.generation = Generation(
            self.generator,
            self.store,
            self.stepper,
            model_tag(self.generator.manifest, self.generator.files),
            self.metrics,
            quotas=self.quotas,
        )
        # ONNX Runtime's first runs of each shape allocate and pick kernels: do them before the first client
        self._warm_texts = self._make_warm_texts()
        self.classifier.predict_proba(self._warm_texts)
        state = self.generator.start("The ", None, 0)
        for b in (1, 4, 16):
            self.generator.advance([copy.deepcopy(state) for _ in range(b)], [0] * b)
            if self.generator.fused:  # the decode graph at the tick sizes the stepper uses (a new stream's ramp)
                for k in {1, 2, 4, 8, 16, self.stepper.steps_for(b)}:
                    self.generator.decode_steps([state] * b, [None] * b, [(0.0, None, None)] * b, k)
                    self.generator.decode_steps([state] * b, [None] * b, [(0.0, None, None)] * b, k, wide=True)
        self._ready = self.batcher_warm = False
        self._gauge_task: asyncio.Task | None = None
        self._warm_task: asyncio.Task | None = None

    def classify(self, texts: list[str]) -> list[dict]:
        self.metrics.on_batch(len(texts))
        self._busy(classifying=1)
        try:
            return self.classifier.classify(texts)
        finally:
            self._busy(classifying=-1)

    def _busy(self, classifying: int = 0, stepping: int | None = None) -> None:
        with self._busy_lock:
            self._classifying += classifying
            if stepping is not None:
                self._stepping = stepping
            if self.board is not None:
                self.board.set_busy(self._classifying + self._stepping)

    def _on_tick(self, streams: int, chars: int) -> None:
        if streams:
            self.metrics.on_tick(streams, chars)
        if streams != self._stepping:
            self._busy(stepping=streams)

    def _wide(self, streams: int) -> bool:
        """Step a lone stream with every core when nothing else runs, here or in another worker."""
        return streams == 1 and self._classifying == 0 and not (self.board is not None and self.board.others_busy())

    def _make_warm_texts(self) -> list[str]:
        """Texts from the classifier's own vocabulary, from a headline's length to past ``max_len`` tokens."""
        vocab = [w for w in self.classifier.manifest["vocab"][2:200] if w.isalpha()] or ["news"]
        rng = random.Random(0)
        lengths = [8, 32, 128, 400, max(self.classifier.max_len, 8) + 50]
        limit = self.settings.max_text_chars  # warm-up requests pass the same gate as clients' requests
        return [" ".join(rng.choice(vocab) for _ in range(n))[:limit].strip() or "news" for n in lengths]

    def start_warm_up(self, get_proxy: Callable[[], Any]) -> None:
        self._warm_task = asyncio.get_running_loop().create_task(self.warm_up(get_proxy))

    async def warm_up(self, get_proxy: Callable[[], Any]) -> None:
        try:
            if self.settings.warmup:
                await self._warm_batcher(get_proxy)
        except Exception:  # a cold batcher only risks early 503s: serve anyway, but say so
            log.exception("batcher warm-up failed; serving without it")
        self._ready = True
        self._gauge_task = asyncio.get_running_loop().create_task(self._refresh_gauges())
        log.info("rnntext ready")

    async def _warm_batcher(self, get_proxy: Callable[[], Any]) -> None:
        while get_proxy() is None:
            await asyncio.sleep(0.05)
        from .gate import INTERNAL_HEADER, INTERNAL_TOKEN

        client = get_proxy().to_async
        # the in-process client passes the gate as this worker itself (no key, no client quota); its connection
        # is opened on the first call with these (shared, mutable) default headers
        client.default_headers[INTERNAL_HEADER.decode()] = INTERNAL_TOKEN.decode()
        texts = self._warm_texts
        for i in range(WARM_SEQUENTIAL):
            await client.classify(texts=[texts[i % len(texts)]])
        for n in WARM_BURSTS:
            await asyncio.gather(
                *(client.classify(texts=texts[: min(1 + i % 3, self.settings.max_texts)]) for i in range(n))
            )
        self.batcher_warm = True
        log.info("/classify path warmed up with %d requests", WARM_SEQUENTIAL + sum(WARM_BURSTS))

    async def _refresh_gauges(self) -> None:
        """Sessions also end by expiry, which no request sees: re-count them now and then. Nothing that the
        store does may end this task (update_session_gauge swallows store faults; anything else is logged)."""
        while True:
            try:
                await self.generation.update_session_gauge()
            except Exception:
                log.exception("session gauge update failed")
            await asyncio.sleep(5)

    async def ready(self) -> bool:
        """Ready to classify: warmed up. The session store is not asked (/readyz/sessions is): a load balancer
        must not stop sending /classify, which needs no store, because Redis is down."""
        return self._ready and not self.generation.draining

    async def drain(self, hurry: asyncio.Event | None = None) -> None:
        """SIGTERM (serving/patches/drain.py): readiness 503 and no new streams from now on; running streams
        finish within RNNTEXT_DRAIN_S, or are stopped then with their sessions saved."""
        stopped = await self.generation.drain(self.settings.drain_s, hurry)
        log.info("worker %s drained (%d stream(s) stopped at the limit)", self.worker, stopped)

    async def sessions_ready(self) -> bool:
        return self._ready and await self.store.ping()

    async def info(self, client: str = "") -> dict:
        def model(kind: str, m: dict) -> dict:
            keys = (
                "created",
                "metrics",
                "cv",
                "calibration",
                "versions",
                "config",
                "corpus_fingerprint",
                "parity",
                "files",
                "ensemble",
            )
            rt = self.classifier if kind == "classifier" else self.generator
            return {
                **{k: m.get(k) for k in keys},
                "folder": str(self.model_dirs[kind]),
                "loaded": rt.files,
                "precisions": {
                    p: {k: v for k, v in d.items() if k in ("accepted", "quality")}
                    for p, d in (m.get("precisions") or {}).items()
                },
            }

        try:
            sessions = await self.store.count()
            store_ok = True
        except Exception:
            sessions, store_ok = None, False
        caller = self.directory.lookup(client) if client else None
        s = self.settings
        return {
            "ready": await self.ready(),
            "draining": self.generation.draining,
            "replica": s.replica,
            "server_pid": os.getppid() if self.worker else os.getpid(),
            "batcher_warm": self.batcher_warm,
            "worker": self.worker,
            "pid": os.getpid(),
            "workers": self.settings.workers,
            "device": self.device,
            "providers": self.providers,
            "precision": self.precision,
            "models": {
                "classifier": {**model("classifier", self.classifier.manifest), "labels": self.classifier.labels},
                "generator": model("generator", self.generator.manifest),
            },
            "sessions": {
                "store": self.store.kind,
                "available": store_ok,
                "active": sessions,
                "evicted": self.store.evicted,
                "ttl_s": s.session_ttl_s,
                "max": s.max_sessions,
            },
            "client": None
            if caller is None
            else {
                "name": caller.name,
                "identified_by": "api_key" if caller.keyed else "address",
                "limits": {
                    "rate": caller.limits.rate,
                    "burst": caller.limits.burst,
                    "streams": caller.limits.streams,
                    "sessions": caller.limits.sessions,
                },
                "sessions": await self._count_own(caller.tag),
            },
            "clients": {
                "keyed": self.directory.keyed,
                "keys": len(self.directory.names()),
                "trusted_proxies": s.trusted_proxies or None,
                "quota_store": self.quotas.kind,
                "max_connections_per_address": s.client_max_connections,
            },
            "streams": {"active": self.stepper.active, "max": self.stepper.max_streams, "ticks": self.stepper.ticks},
            "settings": self.settings.public(),
        }

    async def _count_own(self, tag: str) -> int | None:
        try:
            return await self.store.count(tag)
        except Exception:
            return None

    async def aclose(self) -> None:
        for task in (self._warm_task, self._gauge_task):  # a server stopped while warming up, too
            if task is not None:
                task.cancel()
        await self.stepper.aclose()
        await self.quotas.close()
        await self.store.close()
