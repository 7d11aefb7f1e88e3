"""The exported-models folder: manifests and sha256 checks.

This folder is the only thing that crosses from training to serving. Layout (see docs/export_format.md):

    exported_models/classifier/manifest.json  + model.onnx, model.ts
    exported_models/generator/manifest.json   + step.onnx, prefill.onnx, step.ts, prefill.ts

Standard library only: the export commands write manifests with it, serving and the evaluation
commands verify them with it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

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
