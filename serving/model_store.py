"""The exported models in BentoML's model store: registration, the service's model declarations, and which
folder each runtime loads.

``exported_models/`` stays the hand-off from training (README "Architecture"); this module copies each of its
model folders into the BentoML model store (``$BENTOML_HOME/models``) as one BentoML model:

    rnntext-classifier:<version>    manifest.json, model.onnx, model.ts
    rnntext-generator:<version>     manifest.json, step/prefill/decode .onnx, step/prefill .ts, *.int8.onnx

``<version>`` is the first 16 hex digits of the sha256 of the manifest (canonical JSON); the manifest lists the
sha256 of every file, so the same export always gets the same tag and any change to it gets a new one. Labels
carry the kind, the creation time, the precisions and the headline metrics; metadata carries the manifest's file
hashes, versions and all its metrics (``bentoml models get rnntext-classifier:<version>``).

Which folder the service loads (``resolve``), by ``RNNTEXT_MODELS``:

* unset, or the project's ``exported_models/`` (the default): the model store. In a checkout, the tags are the
  ones of ``exported_models/<kind>/manifest.json``, registered on first use when the store lacks them (so
  ``bentoml serve`` and ``bentoml build`` work in a fresh clone); without that folder (in a Bento), the Bento's
  own models (``latest`` in a containerized Bento's store; the versions its ``bento.yaml`` records otherwise).
* any other folder (tests, custom models): that folder, exactly as before; the store is not consulted and the
  service declares no models, so BentoML resolves nothing.

A kind whose manifest cannot be read is not declared: ``resolve`` then gives its folder, and the service's
start-up check reports the problem in one line. Importing this module does no work; ``python -m
serving.model_store register`` (``make register``) registers from the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import bentoml
from bentoml.exceptions import BentoMLException, NotFound
from bentoml.models import BentoModel

from runtime.manifest import MANIFEST, ArtifactError, load_manifest, model_dir

from .config import ROOT

KINDS = ("classifier", "generator")
NAMES = {"classifier": "rnntext-classifier", "generator": "rnntext-generator"}
EXPORTED = ROOT / "exported_models"  # the default RNNTEXT_MODELS: served through the model store
VERSION_CHARS = 16
# manifest metrics that also become labels (rounded); all of them go into the metadata
LABEL_METRICS = ("test_accuracy", "test_macro_f1", "val_accuracy", "val_bits_per_char", "val_bpc")


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def tag_of(folder: str | Path, kind: str) -> str:
    """The tag ``register`` gives this model folder (its manifest is read, the files are not hashed)."""
    doc = load_manifest(folder, kind=kind, verify=False)
    return f"{NAMES[kind]}:{manifest_sha256(doc)[:VERSION_CHARS]}"


def labels_and_metadata(manifest: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    metrics = dict(manifest.get("metrics") or {})
    labels = {
        "project": "rnntext",
        "kind": str(manifest["kind"]),
        "created": str(manifest.get("created", "")),
        "precisions": ",".join(sorted({"fp32", *(manifest.get("precisions") or {})})),
    }
    for key in LABEL_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            labels[key] = str(round(float(value), 4))
    metadata = {
        "kind": manifest["kind"],
        "format_version": manifest.get("format_version"),
        "created": manifest.get("created"),
        "manifest_sha256": manifest_sha256(manifest),
        "files": dict(manifest["files"]),
        "versions": dict(manifest.get("versions") or {}),
        "metrics": metrics,
        "corpus_fingerprint": manifest.get("corpus_fingerprint"),
    }
    return labels, {k: v for k, v in metadata.items() if v is not None}


def register_folder(folder: str | Path, kind: str) -> tuple[str, bool]:
    """Register one exported model folder; returns (tag, created). Idempotent: a tag already in the store is
    reused as it is. A new one is stored only when every file matches the manifest's sha256 (ArtifactError)."""
    folder = Path(folder)
    doc = load_manifest(folder, kind=kind, verify=False)
    tag = f"{NAMES[kind]}:{manifest_sha256(doc)[:VERSION_CHARS]}"
    if _stored(tag) is not None:
        return tag, False
    load_manifest(folder, kind=kind)  # every file's sha256, before anything is stored
    labels, metadata = labels_and_metadata(doc)
    try:
        with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
            for name in (MANIFEST, *doc["files"]):
                target = Path(model.path_of(name))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / name, target)
    except BentoMLException:
        if _stored(tag) is None:
            raise
        return tag, False  # another process registered the same export meanwhile
    return tag, True


def register(models_root: str | Path = EXPORTED, kinds: tuple[str, ...] = KINDS) -> dict[str, str]:
    """Register ``<models_root>/<kind>/`` for each kind; returns kind -> tag. Raises ArtifactError."""
    return {kind: register_folder(Path(models_root) / kind, kind)[0] for kind in kinds}


def _stored(tag: str):
    try:
        return bentoml.models.get(tag)
    except NotFound:
        return None


def _store_path() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    store = BentoMLContainer.model_store.get()
    return str(getattr(store, "_path", None) or Path(BentoMLContainer.bentoml_home.get()) / "models")


@attrs.frozen
class ExportedModel(BentoModel):
    """A ``BentoModel`` that registers its exported folder when BentoML first needs it and the store lacks it:
    ``bentoml serve`` resolves every declared model before the service's start-up hooks run, and ``bentoml build``
    records each one's info. Without a folder (``source=None``) it is a plain BentoModel (which BentoML would pull
    from BentoCloud when logged in) whose absence stops the command with one line."""

    kind: str = attrs.field(default="", eq=False)
    source: Path | None = attrs.field(default=None, eq=False)

    def _register(self, doing: str) -> None:
        if self.source is not None and self.stored is None:
            try:
                register_folder(self.source, self.kind)
            except ArtifactError as exc:
                raise SystemExit(f"{doing}: {exc}") from None

    def _missing(self, doing: str) -> SystemExit:
        return SystemExit(
            f"{doing}: model {self.tag} is not in the BentoML model store ({_store_path()}) nor on "
            "BentoCloud; register one with `make register` (python -m serving.model_store register "
            "--models DIR), or point RNNTEXT_MODELS at an exported-models folder"
        )

    def to_info(self, alias: str | None = None):
        self._register("rnntext: cannot build")
        try:
            return super().to_info(alias)
        except BentoMLException:
            raise self._missing("rnntext: cannot build") from None

    def resolve(self, base_path=None, *args, **kwargs):
        self._register("rnntext refuses to start")
        try:
            return super().resolve(base_path, *args, **kwargs)
        except BentoMLException:
            raise self._missing("rnntext refuses to start") from None


def uses_store(models: str | Path) -> bool:
    """True when ``models`` (Settings.models) is the project's exported_models/, i.e. RNNTEXT_MODELS is unset."""
    return Path(models).resolve() == EXPORTED.resolve()


def declared_models(models: str | Path) -> dict[str, BentoModel]:
    """kind -> the BentoModel the service declares (a class attribute), for the kinds served from the store.

    Empty when ``models`` is another folder. Per kind: the manifest's tag when exported_models/<kind>/ is
    there (registered on first use); ``<name>:latest`` when it is not (in a Bento); nothing when its manifest
    is there but cannot be read (the start-up check then reports it)."""
    if not uses_store(models):
        return {}
    out: dict[str, BentoModel] = {}
    for kind in KINDS:
        folder = EXPORTED / kind
        if not (folder / MANIFEST).exists():
            out[kind] = ExportedModel(f"{NAMES[kind]}:latest", kind=kind)
            continue
        try:
            out[kind] = ExportedModel(tag_of(folder, kind), kind=kind, source=folder)
        except (ArtifactError, OSError):
            continue
    return out


def resolve(models: str | Path, declared: Mapping[str, BentoModel], bento: Any = None) -> dict[str, Path]:
    """kind -> the folder its runtime loads: the declared model's folder in the store (or in the Bento), else
    the kind's folder under ``models``. ``bento``: the Service's ``.bento`` when serving a Bento (then a
    ``latest`` tag means the version that Bento was built with, not the newest in the local store)."""
    pinned = {m.tag.name: m.tag for m in bento.info.all_models} if bento is not None else {}
    out: dict[str, Path] = {}
    for kind in KINDS:
        model = declared.get(kind)
        if model is None:
            out[kind] = model_dir(models, kind)
            continue
        if model.tag.version in (None, "latest") and model.tag.name in pinned:
            model = ExportedModel(pinned[model.tag.name], kind=kind)
        out[kind] = Path(model.resolve().path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m serving.model_store",
        description="The exported models in BentoML's model store ($BENTOML_HOME/models).",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    reg = sub.add_parser(
        "register",
        help="register each <models>/<kind>/ folder as a BentoML model (idempotent)",
        description="Register <models>/classifier/ and <models>/generator/ as the BentoML models "
        "rnntext-classifier and rnntext-generator, tagged by their manifests; "
        "an export already registered keeps its tag and is not copied again.",
    )
    reg.add_argument("--models", type=Path, default=EXPORTED, help="exported-models root (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        for kind in KINDS:
            tag, created = register_folder(args.models / kind, kind)
            print(f"{tag}  {'registered' if created else 'already registered'}  ({args.models / kind})")
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
