"""The one check before any patch is installed: the dependencies are the ones the patches were verified on.

Every patch in this package reaches into private code of BentoML, uvicorn or CPython's asyncio, whose shape can
change in any release. Each patch names what it relies on (``NEEDS``); ``check()`` compares that with what is
installed and, outside the verified range, stops the server with one line that names the patches, the versions
and the setting that switches them off (``RNNTEXT_PATCHES_OFF``). It runs when the service module is imported,
in ``bentoml serve``'s main process too, so the server refuses to start before any worker does.

To upgrade BentoML or uvicorn: run ``tests/serving/test_patches.py`` (it fails when an internal a patch uses has
changed shape) and the serving tests against the new version, then widen ``VERIFIED`` here and the same ranges in
pyproject.toml's ``serve`` extra (a test keeps the two equal).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
from asyncio import selector_events

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion

# the releases the patches were verified on (tests/serving/test_patches.py and the serving tests, with the locked
# bentoml 1.4.40 and uvicorn 0.54.0); the same ranges as pyproject.toml's serve extra
VERIFIED = {
    "bentoml": ">=1.4.40,<1.5",
    "uvicorn": ">=0.54,<0.55",
}
LOOP = "event-loop"  # the accept patch needs asyncio's selector loop, not uvloop
NEEDS = {
    "timeout": ("bentoml",),
    "api_callers": ("bentoml",),
    "tracing": ("bentoml",),
    "dispatcher": ("bentoml",),
    # BentoML's worker builds the uvicorn server whose Config.load and HTTP protocol the patch wraps
    "connections": ("bentoml", "uvicorn"),
    # BentoML leaves uvicorn's loop at "auto", which picks the loop the patch works on
    "accept": ("bentoml", "uvicorn", LOOP),
    # BentoML's worker runs uvicorn's Server, whose signal handler the patch wraps
    "drain": ("bentoml", "uvicorn"),
}
# the parameters of asyncio's private method that the accept patch wraps (CPython 3.11, as verified here)
ACCEPT_PARAMS = ("self", "protocol_factory", "sock", "sslcontext", "server", "backlog")


class Refused(SystemExit):
    """The server does not start: a patch would run on code it was not verified on."""


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def in_range(version: str | None, spec: str) -> bool:
    try:
        return version is not None and SpecifierSet(spec).contains(version, prereleases=True)
    except InvalidVersion:
        return False


def event_loop_class() -> type:
    """The event loop class uvicorn will run a BentoML worker on. BentoML 1.4's worker
    (``_bentoml_impl/worker/service.py``) leaves uvicorn's ``loop`` at ``"auto"`` (it sets ``"asyncio"`` only on
    Windows), and uvicorn's ``auto`` is uvloop whenever uvloop can be imported, else asyncio's selector loop."""
    import uvicorn

    factory = uvicorn.Config(app=None, log_config=None, workers=1).get_loop_factory()
    if factory is None:
        factory = asyncio.new_event_loop
    if isinstance(factory, type):
        return factory
    loop = factory()
    try:
        return type(loop)
    finally:
        loop.close()


def loop_problem() -> str | None:
    """Why the accept patch cannot work on the loop uvicorn will use, or None."""
    try:
        cls = event_loop_class()
    except Exception as exc:  # uvicorn's Config or loop factory changed shape
        return f"the event loop uvicorn will use could not be determined ({type(exc).__name__}: {exc})"
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not issubclass(cls, selector_events.BaseSelectorEventLoop):
        return f"it patches asyncio's selector event loop, but uvicorn will run {name} (uvloop is installed?)"
    params = tuple(inspect.signature(selector_events.BaseSelectorEventLoop._accept_connection).parameters)
    if params[: len(ACCEPT_PARAMS)] != ACCEPT_PARAMS:
        return f"asyncio's BaseSelectorEventLoop._accept_connection{params} is not the verified {ACCEPT_PARAMS}"
    return None


def problems(names: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(what is wrong, patch) for every patch in ``names`` that would run on unverified code."""
    out = []
    loop = loop_problem() if any(LOOP in NEEDS[n] for n in names) else None
    for name in names:
        for need in NEEDS[name]:
            if need == LOOP:
                if loop:
                    out.append((loop, name))
                continue
            version = installed_version(need)
            if not in_range(version, VERIFIED[need]):
                out.append((f"verified on {need}{VERIFIED[need]}, installed: {need} {version or 'none'}", name))
    return out


def refusal(found: list[tuple[str, str]]) -> str:
    """One line: each problem with the patches it concerns, then what to do."""
    by_problem: dict[str, list[str]] = {}
    for problem, name in found:
        by_problem.setdefault(problem, []).append(name)
    names = list(dict.fromkeys(name for _, name in found))
    parts = [
        f"{'patches' if len(ps) > 1 else 'patch'} {', '.join(ps)}: {problem}" for problem, ps in by_problem.items()
    ]
    return (
        f"rnntext refuses to start: {'; '.join(parts)}. Check them with tests/serving/test_patches.py and widen "
        f"serving/patches/guard.py, or set RNNTEXT_PATCHES_OFF={','.join(names)} to start without "
        f'{"them" if len(names) > 1 else "it"} (docs/serving.md, "Patches of dependencies")'
    )


def check(names: list[str] | tuple[str, ...]) -> None:
    """Raise ``Refused`` (one line) when any of the patches ``names`` would run on unverified code."""
    found = problems(names)
    if found:
        raise Refused(refusal(found))
