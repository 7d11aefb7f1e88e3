"""serving/model_store.py: the exported models registered in BentoML's model store, the service's model
declarations and the folder each runtime loads; and ``bentoml build`` packing them as models.

In-process tests use the tiny models (tests/tiny_models.py) and a model store of their own (never ~/bentoml);
the build test builds the project with the committed models and its own BENTOML_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny_models
import yaml

from runtime.manifest import ArtifactError, load_manifest, sha256_file
from serving import model_store
from serving.model_store import EXPORTED, KINDS, NAMES, ExportedModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """BentoML's model store pointed at a fresh folder for this test, and no usage tracking (which would write
    into ~/bentoml and call home on every model saved)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore
    from bentoml._internal.utils.analytics import usage_stats

    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    usage_stats.do_not_track.cache_clear()
    folder = tmp_path / "store"
    folder.mkdir()
    BentoMLContainer.model_store.set(ModelStore(folder))
    yield folder
    BentoMLContainer.model_store.reset()
    usage_stats.do_not_track.cache_clear()


@pytest.fixture
def tiny(tmp_path) -> Path:
    return tiny_models.build(tmp_path / "tiny")


def versions(store: Path, kind: str) -> list[str]:
    return sorted(p.name for p in (store / NAMES[kind]).iterdir() if p.is_dir())


def test_register_twice_gives_one_tag(store, tiny):
    first = model_store.register(tiny)
    assert first == {kind: model_store.tag_of(tiny / kind, kind) for kind in KINDS}
    assert model_store.register(tiny) == first
    assert model_store.register_folder(tiny / "classifier", "classifier") == (first["classifier"], False)
    for kind in KINDS:
        assert versions(store, kind) == [first[kind].split(":")[1]]
        assert first[kind].startswith(f"{NAMES[kind]}:")
        assert len(first[kind].split(":")[1]) == model_store.VERSION_CHARS


def test_a_changed_export_gets_a_new_tag(store, tiny, tmp_path):
    old = model_store.register(tiny)["classifier"]
    tiny_models.classifier(tmp_path / "retrained" / "classifier", seed=1)
    new = model_store.register(tmp_path / "retrained", kinds=("classifier",))["classifier"]
    assert new != old
    assert versions(store, "classifier") == sorted([old.split(":")[1], new.split(":")[1]])


def test_labels_and_metadata_carry_the_manifest(store, tiny):
    import bentoml

    tags = model_store.register(tiny)
    for kind in KINDS:
        manifest = json.loads((tiny / kind / "manifest.json").read_text())
        info = bentoml.models.get(tags[kind]).info
        assert info.labels["kind"] == kind and info.labels["project"] == "rnntext"
        assert info.labels["created"] == manifest["created"]
        assert info.labels["precisions"] == "fp32"
        assert info.metadata["files"] == manifest["files"]
        assert info.metadata["metrics"] == manifest["metrics"]
        assert info.metadata["manifest_sha256"].startswith(tags[kind].split(":")[1])
    assert bentoml.models.get(tags["classifier"]).info.labels["test_accuracy"] == "0.2"
    assert bentoml.models.get(tags["generator"]).info.labels["val_bpc"] == "9.9"


def test_labels_of_the_committed_manifests():
    """The metrics a user filters by: accuracy of the classifier, bits per character of the generator."""
    for kind, metric in (("classifier", "test_accuracy"), ("generator", "val_bits_per_char")):
        manifest = load_manifest(EXPORTED / kind, kind=kind, verify=False)
        labels, metadata = model_store.labels_and_metadata(manifest)
        assert float(labels[metric]) == pytest.approx(manifest["metrics"][metric], abs=1e-4)
        assert metadata["files"] == manifest["files"] and metadata["versions"] == manifest["versions"]


def test_the_stored_files_match_the_manifest(store, tiny):
    import bentoml

    tags = model_store.register(tiny)
    for kind in KINDS:
        folder = Path(bentoml.models.get(tags[kind]).path)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert (folder / "manifest.json").read_bytes() == (tiny / kind / "manifest.json").read_bytes()
        assert manifest["files"]
        for name, sha in manifest["files"].items():
            assert sha256_file(folder / name) == sha, name
        assert sorted(p.name for p in folder.iterdir()) == sorted([*manifest["files"], "manifest.json", "model.yaml"])


def test_a_damaged_export_is_not_registered(store, tiny):
    with open(tiny / "generator" / "step.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="step.onnx: sha256 .* does not match the manifest"):
        model_store.register(tiny)
    assert not (store / NAMES["generator"]).exists() or versions(store, "generator") == []


def test_another_folder_is_served_as_it_is(tiny):
    """RNNTEXT_MODELS pointing elsewhere: no declared models (BentoML resolves nothing), the folder itself."""
    assert model_store.declared_models(tiny) == {}
    assert model_store.resolve(tiny, {}) == {kind: tiny / kind for kind in KINDS}
    assert not model_store.uses_store(tiny)
    assert model_store.uses_store(ROOT / "exported_models" / ".." / "exported_models")


def test_the_default_folder_declares_the_manifests_tags():
    import bentoml

    declared = model_store.declared_models(EXPORTED)
    assert sorted(declared) == sorted(KINDS)
    for kind, model in declared.items():
        assert isinstance(model, bentoml.models.BentoModel)
        assert str(model.tag) == model_store.tag_of(EXPORTED / kind, kind)
        assert model.source == EXPORTED / kind


def test_resolve_registers_on_first_use_and_gives_the_store_folder(store, tiny):
    declared = {
        kind: ExportedModel(model_store.tag_of(tiny / kind, kind), kind=kind, source=tiny / kind) for kind in KINDS
    }
    dirs = model_store.resolve(EXPORTED, declared)
    for kind in KINDS:
        assert dirs[kind].parent.parent == store and dirs[kind].parent.name == NAMES[kind]
        load_manifest(dirs[kind], kind=kind)  # complete, every sha256 matches
    assert model_store.resolve(EXPORTED, declared) == dirs
    assert declared["classifier"].to_info().tag == declared["classifier"].tag  # what `bentoml build` records


def test_in_a_bento_latest_means_the_version_it_was_built_with(store, tiny, tmp_path):
    import bentoml

    built = model_store.register(tiny)
    tiny_models.classifier(tmp_path / "newer" / "classifier", seed=1)
    tiny_models.generator(tmp_path / "newer" / "generator", seed=1)
    newer = model_store.register(tmp_path / "newer")  # now the store's latest
    declared = {kind: ExportedModel(f"{NAMES[kind]}:latest", kind=kind) for kind in KINDS}
    bento = SimpleNamespace(
        info=SimpleNamespace(all_models=[SimpleNamespace(tag=bentoml.Tag.from_taglike(t)) for t in built.values()])
    )
    in_bento = model_store.resolve(EXPORTED, declared, bento=bento)
    local = model_store.resolve(EXPORTED, declared)
    for kind in KINDS:
        assert in_bento[kind].name == built[kind].split(":")[1]
        assert local[kind].name == newer[kind].split(":")[1]


def test_an_unregistered_model_without_a_folder_is_one_line(store):
    with pytest.raises(SystemExit) as exc:
        model_store.resolve(EXPORTED, {"classifier": ExportedModel("rnntext-classifier:latest", kind="classifier")})
    msg = str(exc.value)
    assert msg.startswith(
        f"rnntext refuses to start: model rnntext-classifier:latest is not in the BentoML model store ({store})"
    )
    assert "make register" in msg and "\n" not in msg
    with pytest.raises(SystemExit, match="^rnntext: cannot build: model rnntext-generator:latest is not in"):
        ExportedModel("rnntext-generator:latest", kind="generator").to_info()


def test_a_damaged_export_stops_the_server_with_one_line(store, tiny):
    with open(tiny / "classifier" / "model.onnx", "ab") as f:
        f.write(b"\0")
    model = ExportedModel(
        model_store.tag_of(tiny / "classifier", "classifier"), kind="classifier", source=tiny / "classifier"
    )
    with pytest.raises(SystemExit, match=f"^rnntext refuses to start: {tiny / 'classifier' / 'model.onnx'}: sha256 "):
        model.resolve()
    with pytest.raises(SystemExit, match="^rnntext: cannot build: "):
        model.to_info()


def test_command_line(tmp_path, tiny):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "serving.model_store", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = cli("register", "--help")
    assert out.returncode == 0 and "--models" in out.stdout
    assert not (tmp_path / "home" / "models").exists()  # importing and --help do no work
    first = cli("register", "--models", str(tiny))
    assert first.returncode == 0, first.stderr
    assert [line.split()[1] for line in first.stdout.splitlines()] == ["registered", "registered"]
    again = cli("register", "--models", str(tiny))
    assert [line.split()[0] for line in again.stdout.splitlines()] == [
        line.split()[0] for line in first.stdout.splitlines()
    ]
    assert "already registered" in again.stdout
    missing = cli("register", "--models", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: model directory not found: {tmp_path / 'nowhere' / 'classifier'}"


@pytest.mark.slow
def test_bentoml_build_packs_both_models(tmp_path):
    """A fresh BENTOML_HOME, as in a new clone: the build registers the committed models and packs them as
    models (Model Size > 0), with no model files and no training code in the Bento's source."""
    home = tmp_path / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}

    def bentoml_cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "bentoml", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    tag = bentoml_cli("build", "--output", "tag").strip().splitlines()[-1].removeprefix("__tag__:")
    expected = {model_store.tag_of(EXPORTED / kind, kind) for kind in KINDS}

    bento_dir = home / "bentos" / "rnntext" / tag.split(":")[1]
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert {m["tag"] for s in info["services"] for m in s["models"]} == expected

    listed = {b["tag"]: b for b in json.loads(bentoml_cli("list", "-o", "json"))}
    size, unit = listed[tag]["model_size"].split()
    assert float(size) > 0 and unit == "MiB", listed[tag]
    models = {m["tag"] for m in json.loads(bentoml_cli("models", "list", "-o", "json"))}
    assert expected <= models

    src = bento_dir / "src"
    assert (src / "serving" / "model_store.py").is_file() and (src / "runtime" / "manifest.py").is_file()
    assert not (src / "exported_models").exists() and not (src / "training").exists()
    assert not [p for p in bento_dir.rglob("*") if p.suffix in (".onnx", ".ts")]
