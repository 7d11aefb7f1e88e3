"""The exported-models folder: manifests and sha256 checks.

This folder is the only thing that crosses from training to serving. Layout (see docs/export_format.md):

    exported_models/classifier/manifest.json  + model.onnx, model.ts               (+ model.int8.onnx)
    exported_models/generator/manifest.json   + step.onnx, prefill.onnx, step.ts, prefill.ts
                                                (+ step.int8.onnx, prefill.int8.onnx)

The manifest's optional ``precisions`` entry lists the graphs of each precision; ``select_precision`` is the one
rule both runtimes use to pick one.

Standard library only: the export commands write manifests with it, serving and the evaluation
commands verify them with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ArtifactError(Exception):
    """The exported folder is missing, incomplete or does not match its manifest."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` with the sha256 of every other file in ``folder``."""
    folder = Path(folder)
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    doc = {"format_version": FORMAT_VERSION, **manifest, "files": files}
    path = folder / MANIFEST
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


def model_id(manifest: dict[str, Any]) -> str:
    """The model's name for clients (``/v1/models``): the manifest's ``id``, else ``rnntext-<kind>``."""
    return str(manifest.get("id") or f"rnntext-{manifest['kind']}")


def load_manifest(folder: str | os.PathLike, kind: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Read and (by default) verify a model folder's manifest; raise ArtifactError naming the problem."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"model directory not found: {folder}")
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {folder}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if kind is not None and doc.get("kind") != kind:
        raise ArtifactError(f"{path}: expected a {kind!r} manifest, found {doc.get('kind')!r}")
    if verify:
        verify_files(folder, doc)
    return doc


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files") or {}
    if not files:
        raise ArtifactError(f"{folder / MANIFEST}: lists no files")
    for name, expected in files.items():
        p = folder / name
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in the manifest but missing")
        actual = sha256_file(p)
        if actual != expected:
            raise ArtifactError(f"{p}: sha256 {actual[:12]}… does not match the manifest ({expected[:12]}…)")


def model_dir(models: str | os.PathLike, kind: str) -> Path:
    """Accept either the exported_models root or the model's own folder."""
    models = Path(models)
    return models if (models / MANIFEST).is_file() else models / kind


# ------------------------------------------------------------------ precisions (docs/export_format.md)
PRECISIONS = ("fp32", "int8")
# the graphs of each kind, by role; an export without a "precisions" entry has only these
FP32_FILES = {"classifier": {"model": "model.onnx"}, "generator": {"step": "step.onnx", "prefill": "prefill.onnx"}}


def precision_variants(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``manifest["precisions"]`` with the fp32 entry always present (older exports have only fp32)."""
    variants = dict(manifest.get("precisions") or {})
    variants.setdefault("fp32", {"files": dict(FP32_FILES[manifest["kind"]])})
    return variants


def select_precision(manifest: dict[str, Any], provider: str, wanted: str = "auto") -> tuple[str, dict[str, str]]:
    """The precision to run and its ``{role: filename}``, for a resolved ``provider`` ("cpu" or "cuda").

    wanted ``auto``: int8 on CPU when the manifest has an int8 variant that passed its quality bar
    (``accepted``), else fp32; on CUDA always fp32 (the dynamic-quantization ops are CPU kernels).
    ``fp32``: fp32. ``int8``: the int8 variant even if it missed its bar (then a warning says so);
    ArtifactError when the folder has none.
    """
    if wanted not in ("auto", *PRECISIONS):
        raise ArtifactError(f"unknown precision {wanted!r} (auto | {' | '.join(PRECISIONS)})")
    variants = precision_variants(manifest)
    int8 = variants.get("int8")
    if wanted == "auto":
        wanted = "int8" if provider == "cpu" and int8 and int8.get("accepted") is True else "fp32"
    elif wanted == "int8":
        if not int8:
            raise ArtifactError(
                f"precision 'int8' asked for, but the {manifest.get('kind')} export has no int8 "
                "variant (python -m training quantize adds one)"
            )
        if int8.get("accepted") is not True:
            log.warning(
                "int8 %s variant runs although it missed its quality bar: %s",
                manifest.get("kind"),
                int8.get("verdict", "no verdict recorded"),
            )
        if provider != "cpu":
            log.warning("int8 on %s: the dynamic-quantization ops run on CPU kernels", provider)
    files = dict(variants[wanted]["files"])
    unlisted = sorted(f for f in files.values() if f not in (manifest.get("files") or {}))
    if unlisted:  # every graph that runs must be covered by the sha256 check
        raise ArtifactError(f"precision {wanted!r} names file(s) the manifest does not list: {unlisted}")
    return wanted, files
