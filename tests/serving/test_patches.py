"""serving/patches/: each patch's test fails when the private code it relies on changes shape (run this file first
when upgrading BentoML or uvicorn), and the guard refuses unverified versions and uvloop with one line, unless
RNNTEXT_PATCHES_OFF switches the patch off. What each patch does is tested in test_upstream.py (timeout),
test_batching.py (dispatcher), test_connections.py (connections) and the server tests (accept: test_service_workers)."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import re
import signal
import socket
import sys
import tomllib
import types
import warnings
from asyncio import selector_events

import pytest
import uvicorn
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from serving_helpers import ROOT, Server

from serving import patches
from serving.config import ConfigError, Settings
from serving.patches import accept, api_callers, connections, dispatcher, drain, guard, timeout, tracing

BENTOML_PATCHES = ("timeout", "api_callers", "tracing", "dispatcher")


def src(obj) -> str:
    return inspect.getsource(obj)


def params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


# --- each patch: the upstream code it relies on ------------------------------------------------------------------


def test_timeout_bentomls_middleware_still_leaks_and_is_the_one_bentoml_uses():
    from bentoml._internal.server.base_app import BaseAppFactory
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    timeout.install()
    original = timeout.ORIGINAL["call"]
    assert params(original) == ["self", "scope", "receive", "send"]
    # the defect the patch is for is still there (once upstream cancels its timer, drop this patch)
    assert timeout._leaks(original) and "loop.call_later(self.timeout" in src(original)
    middleware = TimeoutMiddleware(app=None, timeout=7)
    assert (middleware.app, middleware.timeout) == (None, 7)  # what the replacement reads
    assert "Middleware(TimeoutMiddleware, timeout=self.timeout)" in src(BaseAppFactory.middlewares.fget)
    assert hasattr(asyncio.Task, "uncancel")  # the replacement turns its cancel into the 504


def test_api_callers_local_call_takes_only_the_instance_and_is_called_per_lookup():
    import bentoml
    from _bentoml_sdk.method import APIMethod

    original = api_callers.ORIGINAL.get("local_call", APIMethod._local_call)
    assert params(original) == ["self", "instance"]
    assert "local_caller = self._local_call(instance)" in src(APIMethod.__get__)
    # the caller depends on the method and the instance only
    assert "return self.func(instance, *args, **kwargs)" in src(original)
    api_callers.install()

    class Svc:
        @bentoml.api
        def echo(self, text: str) -> str:
            return text

    svc = Svc()
    assert svc.echo is svc.echo and svc.echo("x") == "x"  # built once, still calls the method
    assert list(svc.__dict__[api_callers.CACHE]) == ["echo"]
    assert api_callers.install() is None and APIMethod._local_call is not original  # idempotent


def test_tracing_bentomls_middlewares_property_adds_the_opentelemetry_middleware():
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.middleware import Middleware

    prop = tracing.ORIGINAL.get("middlewares", inspect.getattr_static(ServiceAppFactory, "middlewares"))
    assert isinstance(prop, property) and params(prop.fget) == ["self"]
    code = src(prop.fget)
    assert "from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware" in code
    assert re.search(r"middlewares\.append\(\s*Middleware\(\s*OpenTelemetryMiddleware,", code)
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    assert Middleware(OpenTelemetryMiddleware).cls is OpenTelemetryMiddleware  # what the patch filters on


def test_dispatcher_cork_dispatcher_keeps_the_private_state_the_subclass_uses():
    import attr
    from _bentoml_impl.server import app
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, Job

    assert issubclass(dispatcher.ContinuousDispatcher, CorkDispatcher)
    assert "CorkDispatcher(" in src(app.ServiceAppFactory.__init__)  # built from the module global swapped
    assert {"enqueue_time", "future"} <= {f.name for f in attr.fields(Job)}

    async def main():
        d = CorkDispatcher(100, 8, fallback=lambda: None, get_batch_size=len)
        assert isinstance(d._queue, collections.deque) and d.max_latency == 0.1
        assert not d._sema.is_locked() and callable(d._sema.acquire) and callable(d._sema.release)
        assert isinstance(d._wake_event, asyncio.Condition) and d._loop is asyncio.get_running_loop()

    asyncio.run(main())
    assert params(CorkDispatcher.outbound_call) == ["self", "inputs_info", "training"]
    assert params(CorkDispatcher._get_inputs)[0] == "self" and "controller" in vars(CorkDispatcher)
    assert "self._wake_event.notify_all()" in src(CorkDispatcher.inbound_call)  # wakes the controller
    assert "self._sema.release()" in src(CorkDispatcher.outbound_call)  # frees the model
    dispatcher.install()
    assert app.CorkDispatcher is dispatcher.ContinuousDispatcher
    assert dispatcher.ORIGINAL["CorkDispatcher"] is CorkDispatcher


@pytest.mark.parametrize("protocol", ["h11", "httptools"])
def test_connections_uvicorn_protocols_keep_what_the_guard_subclass_uses(protocol):
    from uvicorn.protocols.http import h11_impl, httptools_impl

    impl = {"h11": h11_impl, "httptools": httptools_impl}[protocol]
    cls = impl.H11Protocol if protocol == "h11" else impl.HttpToolsProtocol
    assert params(cls.connection_made) == ["self", "transport"]
    assert params(cls.connection_lost) == ["self", "exc"]
    assert params(cls.on_response_complete) == ["self"]
    init, made = src(cls.__init__), src(cls.connection_made)
    assert "self.connections = server_state.connections" in init and "self.loop = " in init
    assert "self.cycle: RequestResponseCycle = None" in init
    assert "self.connections.add(self)" in made and "self.transport = transport" in made
    assert "self.response_complete = False" in src(impl.RequestResponseCycle.__init__)
    # Config.load picks the class the patch wraps; Server loads its config before serving
    config = uvicorn.Config(app=None, http=protocol, log_config=None)
    connections.ORIGINAL.get("load", uvicorn.Config.load)(config)
    assert config.http_protocol_class is cls
    assert "config.load()" in src(uvicorn.Server._serve)


def test_connections_bentomls_worker_builds_its_server_through_uvicorn_config():
    from _bentoml_impl.worker import service as worker

    code = src(worker)
    assert "config = uvicorn.Config(" in code and "uvicorn.Server(config).run(sockets=[socket])" in code
    # no uvicorn limits passed (the reason for the patch), and the loop left at "auto" outside Windows (accept)
    config_call = code[code.index("config = uvicorn.Config(") : code.index("socket = socket.socket(fileno=fd)")]
    assert "limit_concurrency" not in config_call and "loop" not in config_call
    assert code.count('uvicorn_extra_options["loop"]') == 1 and "if psutil.WINDOWS:" in code


def test_connections_install_wraps_the_protocol_config_load_picks(monkeypatch):
    # uvicorn's own load, even when an earlier test in this process imported the service (which installed it)
    original = connections.ORIGINAL.get("load", uvicorn.Config.load)
    monkeypatch.setattr(uvicorn.Config, "load", original)  # put back after the test
    monkeypatch.setattr(connections, "ORIGINAL", {})
    monkeypatch.setattr(connections, "_installed", {})
    counts = []
    connections.install(10, 1.5, 3, None, count=counts.append)
    config = uvicorn.Config(app=None, http="h11", log_config=None)
    config.load()
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert config.http_protocol_class.__name__ == "GuardedH11Protocol"
    assert issubclass(config.http_protocol_class, H11Protocol)
    connections._count(4)
    assert counts == [4]


def test_accept_selector_loops_accept_connection_keeps_its_shape():
    loop_cls = selector_events.BaseSelectorEventLoop
    original = accept.ORIGINAL.get("accept", loop_cls._accept_connection)
    assert tuple(params(original)[:6]) == guard.ACCEPT_PARAMS
    code = src(original)
    assert "for _ in range(backlog):" in code and "conn, addr = sock.accept()" in code
    assert "self._add_reader(sock.fileno(), self._accept_connection," in src(loop_cls._start_serving)
    assert all(callable(getattr(loop_cls, m)) for m in ("_add_reader", "_remove_reader", "call_later"))
    assert issubclass(guard.event_loop_class(), loop_cls)  # the loop uvicorn runs here: asyncio's


def test_accept_takes_one_connection_per_turn_and_waits_while_ahead(monkeypatch):
    calls = []
    monkeypatch.setattr(
        selector_events.BaseSelectorEventLoop, "_accept_connection", lambda self, *args: calls.append(args)
    )
    monkeypatch.setattr(accept, "ORIGINAL", {})
    monkeypatch.setattr(accept, "_installed", {})
    accept.install(board=None)
    patched = selector_events.BaseSelectorEventLoop._accept_connection
    loop = types.SimpleNamespace(removed=[], later=[])
    loop._remove_reader = loop.removed.append
    loop.call_later = lambda delay, callback: loop.later.append(delay)
    with socket.socket() as sock:
        patched(loop, "factory", sock, None, None, 2048, 60.0, 30.0)
        assert calls == [("factory", sock, None, None, 1, 60.0, 30.0)]  # one per turn, not 2048
        accept._installed["board"] = types.SimpleNamespace(connections_ahead=lambda: True)
        assert patched(loop, "factory", sock, None, None, 2048) is None
        assert len(calls) == 1 and loop.removed == [sock.fileno()] and loop.later == [accept.DEFER_S]


def test_drain_uvicorns_signal_handler_is_the_method_it_installs_and_sets_should_exit():
    original = drain.ORIGINAL.get("handle_exit", uvicorn.Server.handle_exit)
    assert params(original) == ["self", "sig", "frame"]
    assert "self.should_exit = True" in src(original) and "self.force_exit = True" in src(original)
    # the handler is looked up on the instance when the server starts, so a patched class method is the one used
    assert "signal.signal(sig, self.handle_exit)" in src(uvicorn.Server.capture_signals)
    assert "signal.raise_signal(captured_signal)" in src(uvicorn.Server.capture_signals)
    assert "while not should_exit:" in src(uvicorn.Server.main_loop) and "self.should_exit" in src(
        uvicorn.Server.on_tick
    )
    assert "graceful_timeout=86400" in src(__import__("bentoml.serving", fromlist=["x"]).create_watcher)


def test_drain_first_signal_drains_more_sigterms_wait_and_ctrl_c_hurries(monkeypatch):
    monkeypatch.setattr(drain, "ORIGINAL", {})
    monkeypatch.setattr(drain, "HOOK", {})
    monkeypatch.setattr(uvicorn.Server, "handle_exit", uvicorn.Server.handle_exit)  # restored after the test
    drain.install()
    server = uvicorn.Server(uvicorn.Config(app=None))
    seen = []

    async def hook(hurry):
        seen.append("drain")
        await hurry.wait()  # the drain runs until a second Ctrl-C (or its time limit, in the service)
        seen.append("hurried")

    async def main():
        server.handle_exit(signal.SIGTERM, None)  # no hook yet: uvicorn's own behaviour
        assert server.should_exit and seen == [] and server._captured_signals == [signal.SIGTERM]
        server.should_exit, server._captured_signals = False, []
        drain.register(hook)
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.sleep(0.01)
        server.handle_exit(signal.SIGTERM, None)  # bentoml serve forwards the one it got: nothing more happens
        await asyncio.sleep(0.01)
        assert seen == ["drain"] and not server.should_exit and server._captured_signals == []
        server.handle_exit(signal.SIGINT, None)  # Ctrl-C again: stop the running streams now
        await asyncio.sleep(0.01)
        assert seen == ["drain", "hurried"] and server.should_exit and not server.force_exit
        server.handle_exit(signal.SIGINT, None)  # then uvicorn's own: a forced exit
        assert server.force_exit

    asyncio.run(main())


# --- the guard and the setting ------------------------------------------------------------------------------------


def versions(monkeypatch, **installed: str | None) -> None:
    real = guard.installed_version
    monkeypatch.setattr(guard, "installed_version", lambda dist: installed[dist] if dist in installed else real(dist))


def test_every_patch_is_verified_on_what_is_installed_here():
    assert guard.problems(patches.NAMES) == []
    assert set(guard.NEEDS) == set(patches.NAMES) == set(patches.INSTALL)


def test_pyproject_serve_extra_states_the_verified_ranges():
    serve = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    reqs = {r.name: r.specifier for r in map(Requirement, serve)}
    assert {name: reqs[name] for name in guard.VERIFIED} == {n: SpecifierSet(s) for n, s in guard.VERIFIED.items()}


def test_bentoml_out_of_range_refuses_with_one_line(monkeypatch):
    versions(monkeypatch, bentoml="1.5.0")
    with pytest.raises(guard.Refused) as refused:
        guard.check(patches.NAMES)
    assert str(refused.value) == (
        "rnntext refuses to start: patches timeout, api_callers, tracing, dispatcher, connections, accept, drain: "
        "verified on bentoml>=1.4.40,<1.5, installed: bentoml 1.5.0. Check them with tests/serving/test_patches.py "
        "and widen serving/patches/guard.py, or set RNNTEXT_PATCHES_OFF=timeout,api_callers,tracing,dispatcher,"
        'connections,accept,drain to start without them (docs/serving.md, "Patches of dependencies")'
    )
    assert isinstance(refused.value, SystemExit) and refused.value.code == str(refused.value)


def test_uvicorn_out_of_range_or_missing_names_only_its_patches(monkeypatch):
    versions(monkeypatch, uvicorn="0.55.0")
    with pytest.raises(guard.Refused) as refused:
        guard.check(["timeout", "connections"])
    assert str(refused.value).startswith(
        "rnntext refuses to start: patch connections: verified on uvicorn>=0.54,<0.55, installed: uvicorn 0.55.0. "
    )
    assert "RNNTEXT_PATCHES_OFF=connections to start without it" in str(refused.value)
    versions(monkeypatch, uvicorn=None, bentoml="1.4.40")
    assert guard.problems(["connections"]) == [
        ("verified on uvicorn>=0.54,<0.55, installed: uvicorn none", "connections")
    ]
    assert guard.problems(BENTOML_PATCHES) == []
    versions(monkeypatch, uvicorn="0.54.3", bentoml="1.4.99")
    assert guard.problems(patches.NAMES) == []


def test_uvloop_is_refused_for_the_accept_patch_only(monkeypatch):
    Loop = type("Loop", (), {"__module__": "uvloop", "close": lambda self: None})
    monkeypatch.setitem(sys.modules, "uvloop", types.SimpleNamespace(new_event_loop=Loop, Loop=Loop))
    try:
        assert guard.event_loop_class() is Loop  # uvicorn's loop="auto" takes uvloop when importable
        with pytest.raises(guard.Refused) as refused:
            guard.check(["connections", "accept"])
    finally:
        sys.modules.pop("uvicorn.loops.uvloop", None)  # imported by uvicorn with the stand-in
    assert str(refused.value) == (
        "rnntext refuses to start: patch accept: it patches asyncio's selector event loop, but uvicorn will run "
        "uvloop.Loop (uvloop is installed?). Check them with tests/serving/test_patches.py and widen "
        "serving/patches/guard.py, or set RNNTEXT_PATCHES_OFF=accept to start without it (docs/serving.md, "
        '"Patches of dependencies")'
    )


def test_the_setting_switches_patches_off():
    s = Settings.from_env({"RNNTEXT_PATCHES_OFF": " accept, timeout ,accept", "RNNTEXT_WORKERS": "2"})
    assert s.patches_off == ("accept", "timeout") and s.public()["patches_off"] == ["accept", "timeout"]
    assert patches.wanted(s) == ["api_callers", "tracing", "dispatcher", "connections", "drain"]
    assert Settings.from_env({}).patches_off == ()
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"RNNTEXT_PATCHES_OFF": "timeout,uvloop"})
    assert str(err.value) == (
        "RNNTEXT_PATCHES_OFF='timeout,uvloop': Value error, unknown patch 'uvloop' "
        "(the patches: timeout, api_callers, tracing, dispatcher, connections, accept, drain)"
    )


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"RNNTEXT_WORKERS": "2"}, list(patches.NAMES)),
        ({"RNNTEXT_WORKERS": "1"}, ["timeout", "api_callers", "tracing", "dispatcher", "connections", "drain"]),
        (
            {"RNNTEXT_WORKERS": "2", "RNNTEXT_TRACING": "1"},
            ["timeout", "api_callers", "dispatcher", "connections", "accept", "drain"],
        ),
    ],
)
def test_which_patches_a_server_uses(env, expected):
    assert patches.wanted(Settings.from_env(env)) == expected


@pytest.fixture
def recorded(monkeypatch):
    """patches.install with every patch module replaced by a recorder."""
    calls = []

    def module(name):
        return types.SimpleNamespace(install=lambda *args, **kw: calls.append((name, args, kw)))

    monkeypatch.setattr(patches, "_module", module)
    return calls


def test_install_checks_then_installs_what_the_settings_ask_for(recorded, caplog):
    s = Settings.from_env({"RNNTEXT_WORKERS": "2", "RNNTEXT_PATCHES_OFF": "dispatcher"})
    board = types.SimpleNamespace(set_connections=lambda n: None)
    with caplog.at_level(logging.WARNING, "rnntext.patches"):
        assert patches.install(s, board=board) == [
            "timeout",
            "api_callers",
            "tracing",
            "connections",
            "accept",
            "drain",
        ]
    assert [name for name, _, _ in recorded] == ["timeout", "api_callers", "tracing", "connections", "accept", "drain"]
    assert recorded[3][1] == (s.max_connections, s.read_timeout_s, s.client_max_connections, s.directory)
    assert recorded[3][2] == {"count": board.set_connections} and recorded[4][1] == (board,)
    assert "patches switched off by RNNTEXT_PATCHES_OFF: dispatcher" in caplog.text
    recorded.clear()
    patches.install(s)  # bentoml serve's main process: no board, nothing to accept, nothing to count
    assert [name for name, _, _ in recorded] == ["timeout", "api_callers", "tracing", "connections", "drain"]
    assert recorded[3][2] == {"count": None}


def test_install_refuses_before_installing_anything(recorded, monkeypatch):
    versions(monkeypatch, bentoml="2.0.0")
    with pytest.raises(guard.Refused, match=r"^rnntext refuses to start: patches timeout, api_callers, tracing, "):
        patches.install(Settings.from_env({"RNNTEXT_WORKERS": "1"}))
    assert recorded == []
    # switched off, the patches that need bentoml are not checked, and the server starts without them
    off = ",".join(BENTOML_PATCHES + ("connections", "drain"))
    s = Settings.from_env({"RNNTEXT_WORKERS": "1", "RNNTEXT_PATCHES_OFF": off})
    assert patches.install(s) == [] and recorded == []


def test_the_bentos_pack_the_patches():
    """bentofile.yaml's ``include`` decides what a Bento holds; without serving/patches/ its service cannot start."""
    from bentoml._internal.bento.build_config import BentoBuildConfig
    from pathspec import PathSpec

    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "serving" / "patches").glob("*.py"))
    assert "serving/patches/__init__.py" in files
    for name in ("bentofile.yaml", "bentofile-cuda.yaml"):
        with warnings.catch_warnings():  # BentoML's own matcher: pathspec's deprecated "gitwildmatch"
            warnings.simplefilter("ignore", DeprecationWarning)
            include = PathSpec.from_lines("gitwildmatch", BentoBuildConfig.from_file(str(ROOT / name)).include)
        assert [f for f in files if not include.match_file(f)] == [], f'{name}: add "serving/patches/*.py" to include'


@pytest.mark.slow
def test_bentoml_serve_refuses_to_start_on_an_unverified_uvicorn(tmp_path):
    """The real start-up path: the main process imports the service, the guard stops it with its one line."""
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.metadata as m\n_version = m.version\n"
        "m.version = lambda name: '0.99.0' if name == 'uvicorn' else _version(name)\n"
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    srv = Server(env={"PYTHONPATH": path, "RNNTEXT_WORKERS": "2"})
    try:
        assert srv.proc.wait(timeout=120) != 0
    finally:
        srv.stop()
    assert (
        "rnntext refuses to start: patches connections, accept, drain: verified on uvicorn>=0.54,<0.55, installed: "
        "uvicorn 0.99.0. Check them with tests/serving/test_patches.py and widen serving/patches/guard.py, or "
        "set RNNTEXT_PATCHES_OFF=connections,accept,drain to start without them"
    ) in srv.output()
