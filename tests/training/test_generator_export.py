"""export-generator on a small random-weight LSTM: files, manifest, parity checks, refusal on mismatch, and the
int8 variants it writes and measures on the canon's tail ($DATA_DIR)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runtime.generator import GeneratorRuntime
from runtime.manifest import ArtifactError, load_manifest
from tests.conftest import training_cli as _cli
from training.generator.data import CharVocab
from training.generator.export import check_parity, export_graphs
from training.generator.model import CharConfig, CharRNN

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit")]  # exports take ~10 s each

TEXT = 'The quick brown fox, said Holmes, "jumps over the lazy dog."\n     I had seen little of Holmes lately.'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    vocab = CharVocab.build(TEXT, min_count=1)
    cfg = CharConfig(vocab_size=len(vocab), embed_dim=16, hidden_size=48, num_layers=2)
    model = CharRNN(cfg)
    for p in model.parameters():  # larger weights than the default init: sharper, more varied logits
        p.data.mul_(3)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save(
        {
            "config": cfg.to_dict(),
            "state_dict": model.state_dict(),
            "vocab": vocab.to_json(),
            "train_config": {},
            "step": 7,
            "val_bpc": 3.21,
            "corpus_fingerprint": "f" * 64,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def exported_small(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    r = _cli("export-generator", str(checkpoint), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "greedy 500 chars equal for batch 1 and 8" in r.stdout and "int8 bits/char" in r.stdout
    return out / "generator"


def test_files_and_manifest(exported_small):
    man = load_manifest(exported_small, kind="generator")
    assert set(man["files"]) == {
        "step.onnx",
        "prefill.onnx",
        "step.ts",
        "prefill.ts",
        "step.int8.onnx",
        "prefill.int8.onnx",
        "decode.onnx",  # K characters per call, sampling in the graph (training/common/decode_graph.py)
        "decode.int8.onnx",
    }
    for key in (
        "vocab",
        "unk_id",
        "num_layers",
        "hidden_size",
        "config",
        "metrics",
        "corpus_fingerprint",
        "versions",
        "parity",
        "created",
    ):
        assert key in man, key
    assert man["num_layers"] == 2 and man["hidden_size"] == 48 and man["vocab"][man["unk_id"]] == "\ufffd"
    assert man["metrics"]["val_bits_per_char"] == 3.21
    for runtime in ("torchscript", "onnx"):
        for b in (1, 8):
            rec = man["parity"][f"{runtime}_b{b}"]
            assert rec["greedy_equal"] is True and rec["max_abs_logit_diff"] < 1e-4


def test_int8_variant_is_written_and_measured(exported_small):
    man = load_manifest(exported_small, kind="generator")
    fp32_files = {"step": "step.onnx", "prefill": "prefill.onnx", "decode": "decode.onnx"}
    assert man["precisions"]["fp32"] == {"files": fp32_files}
    int8 = man["precisions"]["int8"]
    assert int8["files"] == {"step": "step.int8.onnx", "prefill": "prefill.int8.onnx", "decode": "decode.int8.onnx"}
    assert "rowint8" in int8["method"]
    q = int8["quality"]
    assert (q["n_chars"], q["streams"], q["evaluated_on"]) == (64_000, 64, "the last 64,000 characters of canon.txt")
    assert q["bits_per_char_change"] == pytest.approx(q["bits_per_char"]["int8"] - q["bits_per_char"]["fp32"])
    assert q["bar"] == {"max_bits_per_char_change": 0.005}
    assert int8["accepted"] is (q["bits_per_char_change"] <= 0.005)  # random weights: either way
    assert 0 < q["prefill_max_abs_logit_diff"] < 5
    for prec, checks in q["decode_parity"].items():  # the decode graph writes the step graph's text, for any K
        for setting in ("greedy", "seeded"):
            assert checks[setting]["same_for_every_k"], (prec, setting)
            assert checks[setting]["equal_to_step_graph"] or prec == "fp32", (prec, setting)
    for role, name in int8["files"].items():  # LSTM weights -> int8 (prefill: the embedding and output layer too)
        bound = 0.5 if role == "prefill" else 0.75  # row-wise: layer 0's input table and the decoder stay fp32
        assert (exported_small / name).stat().st_size < bound * (exported_small / f"{role}.onnx").stat().st_size
    rt = GeneratorRuntime(exported_small, "cpu", precision="int8")
    logits, h, c = rt.step(np.array([1, 2]), *rt.zero_state(2))
    assert logits.shape == (2, len(rt.vocab)) and h.shape == (2, 2, 48)


def test_onnx_and_torchscript_match_pytorch_greedy_500(exported_small, checkpoint):
    """Independently of the export's own check: ONNX (through GeneratorRuntime) and TorchScript vs eager."""
    ckpt = torch.load(checkpoint, weights_only=True)
    model = CharRNN(CharConfig(**ckpt["config"])).eval()
    model.load_state_dict(ckpt["state_dict"])
    rt = GeneratorRuntime(exported_small, "cpu", precision="fp32")  # the graphs PyTorch is compared with
    ts_step, ts_prefill = (torch.jit.load(str(exported_small / f"{n}.ts")) for n in ("step", "prefill"))

    def onnx(ids, h, c, graph):
        return tuple(torch.from_numpy(o) for o in graph(ids.numpy(), h.numpy(), c.numpy()))

    runners = {
        "pytorch": (lambda i, h, c: model.forward_last(i[:, None], h, c), model.forward_last),
        "torchscript": (ts_step, ts_prefill),
        "onnx": (lambda i, h, c: onnx(i, h, c, rt.step), lambda i, h, c: onnx(i, h, c, rt.prefill)),
    }
    for batch in (1, 8):
        ids = torch.from_numpy(np.stack([rt.encode(TEXT[5 * b : 5 * b + 20]) for b in range(batch)]))  # (B, 20)
        outs, logits_seen = {}, {}
        with torch.no_grad():
            for name, (step, prefill) in runners.items():
                logits, h, c = prefill(ids, *model.init_state(batch))
                assert logits.shape == (batch, len(rt.vocab)) and h.shape == c.shape == (2, batch, 48)
                out, seen = [], [logits]
                for _ in range(500):
                    out.append(logits.argmax(-1))
                    logits, h, c = step(out[-1], h, c)
                    seen.append(logits)
                outs[name], logits_seen[name] = torch.stack(out), torch.stack(seen)
        for name in ("torchscript", "onnx"):
            assert torch.equal(outs[name], outs["pytorch"]), name
            assert (logits_seen[name] - logits_seen["pytorch"]).abs().max() < 1e-4, name


def test_parity_failure_refuses_export(checkpoint, exported_small, tmp_path, monkeypatch):
    from training.generator.model import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    export_graphs(model, tmp_path)
    with pytest.raises(ArtifactError, match="export check failed"):
        check_parity(model, tmp_path, CharVocab.from_json(ckpt["vocab"]), chars=20, tol=-1.0)
    # through the command: non-zero exit, one-line error, the previous folder untouched
    before = (exported_small / "manifest.json").read_text()
    r = _cli(
        "export-generator", str(checkpoint), "--out", str(exported_small.parent), "--tol", "-1", "--check-chars", "20"
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: export check failed")
    assert (exported_small / "manifest.json").read_text() == before
    assert json.loads(before)["kind"] == "generator"


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    r = _cli("export-generator", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path / 'nope.pt'}"
    ]


def test_missing_int8_evaluation_text_is_a_one_line_error(checkpoint, tmp_path):
    r = _cli("export-generator", str(checkpoint), "--out", str(tmp_path), "--text", str(tmp_path / "none.txt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: text to measure the int8 generator on not found: {tmp_path / 'none.txt'}"
    ]
    assert not (tmp_path / "generator").exists()
