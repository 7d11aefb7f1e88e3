"""The committed nginx and Redis configurations of the local cluster (deploy/), checked against the service's
settings and by the real binaries (``nginx -t``), without starting the cluster."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from deploy.cluster import NGINX, REDIS_CONF, render_nginx
from serving.config import Settings

NEEDS_NGINX = pytest.mark.skipif(shutil.which("nginx") is None, reason="needs Debian's nginx")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().rstrip(";")
        if line and not line.endswith(("{", "}")):
            name, _, value = line.partition(" ")
            out.setdefault(name, []).append(value.strip())
    return out


@pytest.fixture
def nginx_conf(tmp_path) -> str:
    return render_nginx(tmp_path, "127.0.0.1:18080", [(18081, False), (18082, True)])


def size(value: str) -> int:
    n, unit = re.fullmatch(r"(\d+)([kKmM]?)[bB]?", value).groups()
    return int(n) * {"": 1, "k": 1024, "m": 1024**2}[unit.lower()]


def test_nginx_agrees_with_the_service(nginx_conf):
    d = directives(nginx_conf)
    assert size(d["client_max_body_size"][0]) == Settings.model_fields["max_body_bytes"].default
    assert d["client_body_timeout"] == [f"{Settings.model_fields['read_timeout_s'].default:g}s"]
    assert d["least_conn"] == [""] and d["proxy_buffering"] == ["off"] and d["proxy_read_timeout"] == ["1h"]
    # another replica only for requests not yet sent: never non_idempotent (a POST a replica may have begun)
    assert d["proxy_next_upstream"] == ["error timeout"]
    assert d["proxy_set_header"].count("X-Forwarded-For $proxy_add_x_forwarded_for") == 1
    assert d["server"] == [
        "127.0.0.1:18081 max_fails=1 fail_timeout=5s",
        "127.0.0.1:18082 max_fails=1 fail_timeout=5s down",
    ]
    assert "${" not in nginx_conf


@NEEDS_NGINX
def test_nginx_accepts_the_rendered_config(tmp_path, nginx_conf):
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / d).mkdir()
    (tmp_path / "nginx.conf").write_text(nginx_conf)
    r = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", "nginx.conf"], capture_output=True, text=True)
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr


def test_redis_keeps_sessions_and_never_evicts_them():
    d = directives(REDIS_CONF.read_text())
    assert d["appendonly"] == ["yes"] and d["appendfsync"] == ["everysec"]
    assert d["maxmemory-policy"] == ["noeviction"] and size(d["maxmemory"][0]) == 512 * 1024**2
