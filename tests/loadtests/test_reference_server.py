"""The bench's reference server (loadtests/bench/reference_server.py: plain uvicorn + ONNX Runtime, the service's
/classify contract) and how the bench reports the service against it (loadtests/bench/run.py, report.py)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from loadtests.bench.reference_server import WORKER_HEADER, ReferenceServer, invalid
from loadtests.bench.report import markdown
from loadtests.bench.run import ratios
from loadtests.server import process_tree
from loadtests.texts import articles
from runtime.classifier import ClassifierRuntime


@pytest.mark.slow
def test_reference_server_classifies_as_the_runtime_does(exported, tmp_path):
    texts = [t for _, t in articles(limit=5, seed=4)] + ["The striker scored twice in the second half."]
    rt = ClassifierRuntime(exported / "classifier", "cpu", intra_threads=1, precision="auto")
    expected = rt.classify(texts)
    with ReferenceServer(exported, workers=2, precision="auto", provider="cpu", log_path=tmp_path / "ref.log") as s:
        s.wait_ready()
        info = httpx.get(s.url + "/info", timeout=10).json()
        assert (info["precision"], info["workers"], info["threads"]) == (rt.precision, 2, 1)
        r = httpx.post(s.url + "/classify", json={"texts": texts}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers[WORKER_HEADER].isdigit()
        got = r.json()
        assert [g["label"] for g in got] == [e["label"] for e in expected]
        for g, e in zip(got, expected):
            assert list(g["probabilities"]) == rt.labels
            np.testing.assert_allclose(
                [g["probabilities"][k] for k in rt.labels], [e["probabilities"][k] for k in rt.labels], atol=1e-6
            )
        for bad in (b"not json", b'{"texts": []}', b'{"texts": ["   "]}', b'{"text": ["a"]}', b'{"texts": "a"}'):
            r = httpx.post(s.url + "/classify", content=bad, headers={"content-type": "application/json"}, timeout=10)
            assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)
        tree = process_tree(s.proc.pid)
        assert len(tree) >= 3  # uvicorn's supervisor and its 2 workers
    assert s.proc.returncode is not None
    assert all(not p.is_running() or p.status() == "zombie" for p in tree), tree


def test_invalid_follows_the_services_rules():
    assert invalid({"texts": ["a"]}, 64, 20_000) is None
    assert invalid({"texts": ["a"] * 64}, 64, 20_000) is None
    for body in (
        [],
        {"texts": []},
        {"texts": ["a"] * 65},
        {"texts": [""]},
        {"texts": [" \n"]},
        {"texts": ["a" * 20_001]},
        {"texts": [1]},
        {"texts": ["a"], "extra": 1},
        {"texts": "a"},
    ):
        assert invalid(body, 64, 20_000), body


def test_ratios_and_report_name_the_reference_server():
    def row(c: int, rps: float) -> dict:
        return {"concurrency": c, "throughput_rps": rps, "p50_ms": 1.0, "p95_ms": 2.0, "failures": 0}

    on, off, ref = {1: row(1, 100), 32: row(32, 600)}, {1: row(1, 90), 32: row(32, 300)}, {32: row(32, 400)}
    r = ratios(on, off, ref, 1000.0)
    assert r[0] == {
        "concurrency": 1,
        "batching_on_vs_reference": None,
        "batching_off_vs_reference": None,
        "batching_on_vs_ceiling": 0.1,
        "reference_vs_ceiling": None,
    }
    assert r[1]["batching_on_vs_reference"] == 1.5 and r[1]["batching_off_vs_reference"] == 0.75
    assert r[1]["reference_vs_ceiling"] == 0.4
    md = markdown(
        {
            "ceiling": {"articles_per_s": 1000.0, "method": "m", "precision": "int8", "providers": ["CPU"]},
            "http": {
                "batching_on": list(on.values()),
                "batching_off": list(off.values()),
                "reference": list(ref.values()),
                "reference_server": {"what": "plain uvicorn", "workers": 2, "precision": "int8"},
                "max_concurrency": 32,
                "speedup_at_max": 2.0,
                "vs_ceiling_at_max": 0.6,
                "vs_reference_at_max": 1.5,
                "ratios": r,
            },
        }
    )
    assert "| 32 | reference | 400.0 |" in md
    assert "batching on vs the reference server: 1.50" in md
    assert "| 32 | 1.50 | 0.75 | 0.60 | 0.40 |" in md
