"""``python -m deploy.cluster`` (= ``make cluster``): a local deployment from real parts, in the foreground.

    redis-server (deploy/redis/redis.conf: AOF on, maxmemory, noeviction)
    N x ``bentoml serve`` (replica-1..N, each its own port, default workers, all on that Redis)
    nginx (deploy/nginx/nginx.conf.template: least_conn, passive health checks, SSE unbuffered) on --port

Ctrl-C or SIGTERM stops everything it started: the replicas drain (SIGTERM: running streams finish, up to
RNNTEXT_DRAIN_S), then nginx and Redis stop. Everything it writes (logs, the AOF, nginx's files) is under
``--run-dir`` (a new temporary folder by default). The chaos tests (tests/deploy/test_chaos.py) and
``make loadtest-cluster`` drive the same ``Cluster`` class: kill or restart a replica, restart Redis, take a
replica out of nginx's upstream. Nothing here needs Docker or the network.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.server import free_port, kill_tree, wait_ready

ROOT = Path(__file__).resolve().parents[1]
REDIS_CONF = ROOT / "deploy" / "redis" / "redis.conf"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf.template"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PASSIVE_CHECK = "max_fails=1 fail_timeout=5s"  # per upstream server line (deploy/nginx/nginx.conf.template)


def wait_port(port: int, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


def render_nginx(prefix: Path, listen: str, upstreams: list[tuple[int, bool]]) -> str:
    """The template with its three values, as ``envsubst '${NGINX_PREFIX} ${NGINX_LISTEN} ${NGINX_UPSTREAMS}'``
    fills them (nginx's own $variables stay); ``upstreams``: (port, down) per replica."""
    lines = [f"server 127.0.0.1:{p} {PASSIVE_CHECK}{' down' if down else ''};" for p, down in upstreams]
    values = {"NGINX_PREFIX": str(prefix), "NGINX_LISTEN": listen, "NGINX_UPSTREAMS": "\n        ".join(lines)}
    text = NGINX_TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


class Proc:
    """A subprocess in a session of its own (a Ctrl-C in the terminal reaches only the cluster, which stops it in
    order), its output appended to a log file."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.cmd, self.log, self.env = cmd, log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Signal the main process and wait; its whole tree is killed if it has not exited by ``timeout``."""
        if self.proc is None:
            return None
        self.send(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL to the process and every descendant at once (a machine or a pod lost): nothing is drained or
        saved, no connection is closed cleanly. Not to the process group: it would miss BentoML's workers
        (loadtests/server.py process_tree)."""
        if self.proc is not None:
            kill_tree(self.proc)


class Cluster:
    def __init__(
        self,
        replicas: int = 3,
        port: int = 8080,
        run_dir: Path | None = None,
        env: dict[str, str] | None = None,
        models: Path | None = None,
    ):
        self.run = Path(run_dir or tempfile.mkdtemp(prefix="rnntext-cluster-"))
        self.run.mkdir(parents=True, exist_ok=True)
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.ports = [free_port() for _ in range(replicas)]
        self.names = [f"replica-{i + 1}" for i in range(replicas)]
        self.down: set[int] = set()  # replicas taken out of nginx's upstream (set_down)
        self.models = models
        (self.run / "redis").mkdir(exist_ok=True)
        self.redis = Proc(
            [REDIS_SERVER, str(REDIS_CONF), "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--dir", str(self.run / "redis")],
            self.run / "redis.log",
        )  # fmt: skip
        self.nginx_dir = self.run / "nginx"
        nginx_cmd = [NGINX, "-p", str(self.nginx_dir), "-c", "nginx.conf", "-g", "daemon off;"]
        self.nginx = Proc(nginx_cmd, self.run / "nginx.log")
        base = {
            **os.environ,
            "BENTOML_DO_NOT_TRACK": "True",
            "RNNTEXT_REDIS_URL": self.redis_url,
            "RNNTEXT_TRUSTED_PROXIES": "127.0.0.1/32",  # nginx: its X-Forwarded-For names the client
            **({"RNNTEXT_MODELS": str(models)} if models else {}),
            **(env or {}),
        }
        self.replicas = []
        for name, rport in zip(self.names, self.ports):
            home = self.run / name / "bentoml"  # one each: a starting server empties its prometheus folder
            cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(rport)]
            rep_env = {**base, "BENTOML_HOME": str(home), "RNNTEXT_REPLICA": name}
            self.replicas.append(Proc(cmd, self.run / f"{name}.log", rep_env))

    # ------------------------------------------------------------------ start and stop
    def start(self, timeout: float = 240.0, redis: bool = True) -> None:
        self._store()
        if redis:
            self.start_redis()
        for i in range(len(self.replicas)):
            self.replicas[i].start()
        self.write_nginx()
        self.nginx.start()
        wait_port(self.port, 10, lambda: self.nginx.alive)
        for i in range(len(self.replicas)):
            self.wait_ready(i, timeout)

    def _store(self) -> None:
        """The models registered once in a store the replicas share (read-only for them: each BENTOML_HOME links
        to it), instead of each copying them on first use."""
        store = self.run / "store"
        if not self.models and not (store / "models").exists():
            subprocess.run(
                [sys.executable, "-m", "serving.model_store", "register"],
                cwd=ROOT,
                env={**os.environ, "BENTOML_HOME": str(store), "BENTOML_DO_NOT_TRACK": "True"},
                check=True,
                stdout=subprocess.DEVNULL,
            )
        for name in self.names:
            home = self.run / name / "bentoml"
            home.mkdir(parents=True, exist_ok=True)
            link = home / "models"
            if not self.models and not link.exists():
                link.symlink_to(store / "models", target_is_directory=True)

    def stop(self) -> None:
        """Everything, in order: the replicas drain (in parallel), then nginx and Redis stop."""
        for rep in self.replicas:
            rep.send(signal.SIGTERM)
        for rep in self.replicas:
            rep.stop(timeout=120)
        self.nginx.stop(signal.SIGQUIT, timeout=10)  # nginx's graceful stop
        self.redis.stop(timeout=30)  # SIGTERM: Redis fsyncs the AOF and exits

    def __enter__(self) -> Cluster:
        """``with Cluster(...) as c``: started on entry (what had started is stopped if the start fails), stopped
        on exit."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ replicas
    def replica_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def wait_ready(self, i: int, timeout: float = 240.0) -> float:
        rep = self.replicas[i]
        # asked often: a rolling restart waits on this for every replica
        return wait_ready(self.replica_url(i), rep.proc, timeout, self.names[i], rep.log, period=0.2)

    def kill(self, i: int) -> None:
        self.replicas[i].kill()

    def start_replica(self, i: int, timeout: float = 240.0) -> float:
        self.replicas[i].start()
        return self.wait_ready(i, timeout)

    def drain(self, i: int, timeout: float = 120.0) -> int | None:
        """SIGTERM to the replica's ``bentoml serve`` (as Kubernetes sends it) and wait for it to exit: its code."""
        return self.replicas[i].stop(signal.SIGTERM, timeout)

    def set_down(self, i: int, down: bool = True) -> None:
        """Take the replica out of nginx's upstream (or put it back), as an endpoints controller does when a pod
        stops being ready: nginx reloads its configuration, new requests go to the others, and the requests in
        flight on it are not touched (old nginx workers finish them)."""
        (self.down.add if down else self.down.discard)(i)
        self.write_nginx()
        self.nginx.send(signal.SIGHUP)
        time.sleep(0.5)  # the new workers take over

    def rolling_restart(self, i: int, lead_s: float = 1.0, timeout: float = 240.0) -> dict:
        """One replica, as a rolling deploy restarts a pod: out of the load balancer, ``lead_s`` for requests on
        their way (Kubernetes' preStop), SIGTERM and wait (the drain), start again, wait until ready, back in."""
        t0 = time.monotonic()
        self.set_down(i)
        time.sleep(lead_s)
        code = self.drain(i)
        drained = time.monotonic() - t0
        self.start_replica(i, timeout)
        self.set_down(i, False)
        return {"replica": self.names[i], "exit_code": code, "drain_s": drained, "total_s": time.monotonic() - t0}

    # ------------------------------------------------------------------ nginx and Redis
    def write_nginx(self) -> None:
        for d in ("", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.nginx_dir / d).mkdir(parents=True, exist_ok=True)
        upstreams = [(p, i in self.down) for i, p in enumerate(self.ports)]
        (self.nginx_dir / "nginx.conf").write_text(render_nginx(self.nginx_dir, f"127.0.0.1:{self.port}", upstreams))

    def start_redis(self) -> None:
        self.redis.start()
        wait_port(self.redis_port, 10, lambda: self.redis.alive)

    def stop_redis(self, sig: int = signal.SIGTERM) -> None:
        if sig == signal.SIGKILL:
            self.redis.kill()
        else:
            self.redis.stop(sig, timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3, help="bentoml serve replicas (default 3)")
    p.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1 (default 8080)")
    p.add_argument("--run-dir", type=Path, default=None, help="logs, AOF and nginx files (default: a new temp folder)")
    args = p.parse_args(argv)
    if args.replicas < 1:
        p.error("--replicas must be at least 1")
    cluster = Cluster(args.replicas, args.port, args.run_dir)
    stop = []

    def on_signal(sig, frame):
        stop.append(sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print(f"starting redis-server, {args.replicas} replica(s) and nginx; files in {cluster.run}", flush=True)
        cluster.start()
        for name, port in zip(cluster.names, cluster.ports):
            print(f"  {name}: http://127.0.0.1:{port}  (log {cluster.run / name}.log)")
        print(f"  redis: {cluster.redis_url}  (AOF in {cluster.run / 'redis'})")
        print(f"ready: {cluster.url}  (Ctrl-C or SIGTERM stops everything)", flush=True)
        while not stop:
            for name, rep in zip(cluster.names, cluster.replicas):
                if not rep.alive:
                    print(f"warning: {name} exited (code {rep.proc.returncode}); log {rep.log}", flush=True)
                    rep.proc = None
            time.sleep(0.5)
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping: replicas drain, then nginx and redis-server", flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the others running
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
