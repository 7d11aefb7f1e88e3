"""The layering rule of the README's "Architecture" section, checked on the import graph, and the docs' references
to files and modules, checked against the tree.

training -> exported_models/ -> runtime -> serving: ``serving`` never imports ``training``; ``runtime`` imports
only the standard library, numpy and onnxruntime; the two model packages do not import each other and
``training.common`` imports neither. Every import counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "runtime", "serving", "loadtests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse_imports(source: str, package: str = "") -> set[str]:
    """Every module ``source`` imports, absolute, at any depth (relative imports resolved against ``package``)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return out


def imports_of(path: Path) -> set[str]:
    here = module_name(path)
    return parse_imports(path.read_text(), here if path.name == "__init__.py" else here.rpartition(".")[0])


@functools.cache
def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(g: dict[str, set[str]], importer: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{mod} imports {dep}"
        for mod, deps in g.items()
        if _under(mod, importer)
        for dep in deps
        if any(_under(dep, f) for f in forbidden)
    )


def test_the_graph_covers_every_layer():
    g = graph()
    for mod in (
        "training.classifier.model",
        "training.classifier.pipeline",
        "training.generator.train",
        "training.common.study",
        "runtime.manifest",
        "runtime.providers",
        "runtime.hardware",
        "runtime.classifier",
        "runtime.generator",
        "serving.service",
        "serving.app_state",
        "loadtests.bench.run",
        "loadtests.server",
    ):
        assert mod in g, mod
    # the parser sees what the rule is about: the edges that must exist do
    assert "runtime.classifier" in g["serving.app_state"]
    assert "runtime.generator" in g["training.generator.generate"]  # an import inside a function
    assert "runtime.manifest" in g["runtime.providers"]
    assert "training.common.cli" in g["training.classifier.search"]
    # one pipeline behind train-, search- and cv-classifier; one hardware probe behind the service and the bench
    assert {"training.classifier.pipeline.fit", "training.classifier.pipeline.run_training"} <= g[
        "training.classifier.search"
    ]
    assert "training.classifier.pipeline.fit" in g["training.classifier.cv"]
    assert "training.classifier.pipeline" in g["training.classifier.cli"]
    assert "runtime.hardware" in g["serving.config"] and "runtime.hardware" in g["serving.app_state"]
    assert "runtime.hardware" in g["runtime.providers"] and "runtime.hardware" in g["loadtests.bench.run"]


def test_every_folder_of_code_is_a_regular_package():
    """A folder without __init__.py still imports from a checkout, but setuptools' find leaves it out of a wheel."""
    folders = {p.parent for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert len(folders) >= 8
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_serving_never_imports_training():
    assert violations(graph(), "serving", ("training",)) == []


def test_runtime_imports_only_numpy_onnxruntime_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "runtime", "__future__"}
    g = graph()
    bad = sorted(
        f"{mod} imports {dep}"
        for mod, deps in g.items()
        if _under(mod, "runtime")
        for dep in deps
        if dep.split(".")[0] not in allowed
    )
    assert bad == []
    assert violations(g, "runtime", ("torch", "bentoml", "training", "serving")) == []


def test_model_packages_are_independent_and_common_is_model_free():
    g = graph()
    assert violations(g, "training.classifier", ("training.generator",)) == []
    assert violations(g, "training.generator", ("training.classifier",)) == []
    assert violations(g, "training.common", ("training.classifier", "training.generator")) == []


def test_labs_sit_on_top_of_the_toolkit():
    """The labs use both models' code and the committed exports; nothing in the toolkit or the service uses them."""
    g = graph()
    assert "training.labs.cli" in g and "training.labs.common" in g
    users = sorted(
        f"{mod} imports {dep}"
        for mod, deps in g.items()
        for dep in deps
        if _under(dep, "training.labs") and not _under(mod, "training.labs")
    )
    assert users == []  # training/__main__.py names training.labs.cli as a string, imported on demand


def test_checker_catches_a_forbidden_import():
    """The rule fails when it should: imports inside functions and relative ones are seen and reported."""
    found = parse_imports(
        "def f():\n    from torch import nn\n    import bentoml.io\n    from .x import y\n", "serving"
    )
    assert {"torch", "torch.nn", "bentoml.io", "serving.x", "serving.x.y"} <= found
    g = {"serving.bad": {"json", "training.common.cli"}, "serving.good": {"runtime.manifest"}}
    assert violations(g, "serving", ("training",)) == ["serving.bad imports training.common.cli"]


def loaded_by(statements: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has in ``sys.modules`` after running ``statements``."""
    code = f"import sys\n{statements}\nprint(' '.join(sorted(m for m in {watched!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


RUNTIME = "import runtime.manifest, runtime.providers, runtime.hardware, runtime.classifier, runtime.generator"


def test_service_and_runtime_load_without_torch_or_training():
    """What the service process really loads, not only what the files say: no torch, no training code."""
    assert loaded_by(f"import serving.service, serving.app_state\n{RUNTIME}", ("torch", "training")) == []


def test_runtime_loads_without_bentoml():
    assert loaded_by(RUNTIME, ("torch", "bentoml", "serving", "training")) == []


def test_importing_the_labs_loads_no_torch():
    """``lab --help`` stays fast: the lab modules import torch, numpy and matplotlib only when they run."""
    labs = "import importlib, training.labs.cli\n[importlib.import_module(m) for m, _ in training.labs.LABS.values()]"
    assert loaded_by(labs, ("torch", "numpy", "matplotlib")) == []


# --- the docs' tables and references follow the code -------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # docs/upstream/ quotes other projects
PATH_RE = re.compile(r"`((?:training|runtime|serving|loadtests|tests)/[\w./-]*)`")
DOTTED_RE = re.compile(r"`((?:training|runtime|serving|loadtests)(?:\.\w+)+)(?::(\w+))?`")


def doc_refs(pattern: re.Pattern) -> list[tuple[str, tuple]]:
    return [(doc.name, m.groups()) for doc in DOCS for m in pattern.finditer(doc.read_text())]


RESOLVE = """
import importlib, json, sys
def resolve(dotted):  # the longest importable prefix, then attributes
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)
bad = []
for doc, dotted, attr in json.load(sys.stdin):
    try:
        obj = resolve(dotted)
        if attr:
            getattr(obj, attr)
    except Exception as exc:
        bad.append(f"{doc}: {dotted}{':' + attr if attr else ''} ({type(exc).__name__})")
print(json.dumps(bad))
"""


def test_docs_name_only_files_that_exist():
    refs = doc_refs(PATH_RE)
    assert len(refs) > 40  # the module tables of README, classifier, generator, serving and benchmarks docs
    missing = sorted(
        {f"{doc}: {path}" for doc, (path,) in refs if "*" not in path and not (ROOT / path.rstrip("/")).exists()}
    )
    assert missing == []


def test_docs_name_only_modules_and_objects_that_exist():
    """Resolved in a child process: importing serving.service patches BentoML and uvicorn for its workers."""
    refs = sorted({(doc, dotted, attr) for doc, (dotted, attr) in doc_refs(DOTTED_RE)})
    assert len(refs) > 5
    out = subprocess.run(
        [sys.executable, "-c", RESOLVE], cwd=ROOT, input=json.dumps(refs), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []
