"""The lock files (``make lock``): requirements/serve.lock (the serving set, Python 3.11 and 3.12) and
requirements/dev.lock (everything ``make setup`` installs, Python 3.11 on Linux x86_64) agree with each other,
with the ranges in pyproject.toml and with the running environment, and every install path reads them."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
SERVE_LOCK = ROOT / "requirements" / "serve.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
# the environment dev.lock is resolved for (uv pip compile --python-version 3.11 --python-platform x86_64 Linux)
DEV_ENV = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
}


def read_lock(path: Path) -> dict[str, tuple[Version, Marker | None]]:
    """name -> (pinned version, environment marker) for every requirement line; fails on anything not ==-pinned."""
    pins: dict[str, tuple[Version, Marker | None]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith(("#", " ", "-")):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: not pinned exactly: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = (Version(specs[0].version), req.marker)
    assert pins, f"{path.name} pins nothing"
    return pins


@pytest.fixture(scope="module")
def serve() -> dict[str, tuple[Version, Marker | None]]:
    return read_lock(SERVE_LOCK)


@pytest.fixture(scope="module")
def dev() -> dict[str, tuple[Version, Marker | None]]:
    return read_lock(DEV_LOCK)


def test_serve_lock_agrees_with_dev_lock(serve, dev):
    for name, (version, marker) in serve.items():
        if name in dev:
            assert dev[name][0] == version, f"{name}: serve.lock {version}, dev.lock {dev[name][0]}"
        else:  # only packages for other platforms or interpreters (colorama on Windows, cffi on PyPy) may be missing
            assert marker is not None and not marker.evaluate(DEV_ENV), f"{name} is in serve.lock but not dev.lock"
    assert all(marker is None for _, marker in dev.values()), "dev.lock is for one platform: no markers expected"


def test_locked_versions_satisfy_pyproject_ranges(serve, dev):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    for group, reqs in groups.items():
        for line in reqs:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            locks = [("dev.lock", dev)] + ([("serve.lock", serve)] if group in ("base", "serve") else [])
            for lock_name, pins in locks:
                assert name in pins, f"{lock_name} lacks {name} (pyproject {group})"
                version = pins[name][0]
                assert req.specifier.contains(version, prereleases=True), (
                    f"{lock_name}: {name}=={version} is outside pyproject's {req.specifier}"
                )


def test_no_cuda_packages_and_torch_is_the_cpu_wheel(serve, dev):
    for lock_name, pins in (("serve.lock", serve), ("dev.lock", dev)):
        # nvidia-ml-py is BentoML's NVML binding (pure Python, no CUDA libraries): the one nvidia-* allowed
        cuda = [
            n
            for n in pins
            if (n.startswith("nvidia-") and n != "nvidia-ml-py") or n.startswith("triton") or "cuda" in n
        ]
        assert not cuda, f"{lock_name} has CUDA packages: {cuda}"
    assert "torch" not in serve, "the serving lock must not contain torch"
    torch = dev["torch"][0]
    assert torch.public == "2.13.0" and torch.local == "cpu", f"dev.lock pins torch=={torch}, not 2.13.0+cpu"


def test_install_paths_read_the_locks():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements/serve.lock" in dockerfile and "requirements/serve.lock >" in dockerfile
    assert "pip install --no-cache-dir -r " in dockerfile
    bento_python = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]
    assert bento_python["requirements_txt"] == "requirements/serve.lock"
    assert bento_python.get("lock_packages") is False and "packages" not in bento_python
    makefile = (ROOT / "Makefile").read_text()
    assert "$(VENV)/.installed: requirements/dev.lock pyproject.toml" in makefile
    assert "pip install -r requirements/dev.lock" in makefile


def test_installed_bentoml_is_the_locked_one(serve):
    installed = Version(importlib.metadata.version("bentoml"))
    assert installed == serve["bentoml"][0], (
        f"bentoml {installed} is installed but {serve['bentoml'][0]} is locked: run make setup"
    )
