"""export-generator on a small random-weight LSTM: files, manifest, parity checks, refusal on mismatch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runtime.generator import GeneratorRuntime
from runtime.manifest import ArtifactError, load_manifest
from training.generator.data import CharVocab
from training.generator.export import check_parity, export_graphs
from training.generator.model import CharConfig, CharRNN

from tests.conftest import training_cli as _cli

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
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict(), "vocab": vocab.to_json(),
                "train_config": {}, "step": 7, "val_bpc": 3.21, "corpus_fingerprint": "f" * 64}, path)
    return path


@pytest.fixture(scope="module")
def exported_small(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    r = _cli("export-generator", str(checkpoint), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "greedy 500 chars equal for batch 1 and 8" in r.stdout
    return out / "generator"


def test_files_and_manifest(exported_small):
    man = load_manifest(exported_small, kind="generator")
    assert set(man["files"]) == {"step.onnx", "prefill.onnx", "step.ts", "prefill.ts"}
    for key in ("vocab", "unk_id", "num_layers", "hidden_size", "config", "metrics", "corpus_fingerprint",
                "versions", "parity", "created"):
        assert key in man, key
    assert man["num_layers"] == 2 and man["hidden_size"] == 48 and man["vocab"][man["unk_id"]] == "\ufffd"
    assert man["metrics"]["val_bits_per_char"] == 3.21
    for runtime in ("torchscript", "onnx"):
        for b in (1, 8):
            rec = man["parity"][f"{runtime}_b{b}"]
            assert rec["greedy_equal"] is True and rec["max_abs_logit_diff"] < 1e-4


def test_onnx_and_torchscript_match_pytorch_greedy_500(exported_small, checkpoint):
    """Independently of the export's own check: ONNX (through GeneratorRuntime) and TorchScript vs eager."""
    ckpt = torch.load(checkpoint, weights_only=True)
    model = CharRNN(CharConfig(**ckpt["config"])).eval()
    model.load_state_dict(ckpt["state_dict"])
    rt = GeneratorRuntime(exported_small, "cpu")
    ts_step, ts_prefill = (torch.jit.load(str(exported_small / f"{n}.ts")) for n in ("step", "prefill"))

    def onnx(ids, h, c, graph):
        return tuple(torch.from_numpy(o) for o in graph(ids.numpy(), h.numpy(), c.numpy()))

    runners = {"pytorch": (lambda i, h, c: model.forward_last(i[:, None], h, c), model.forward_last),
               "torchscript": (ts_step, ts_prefill),
               "onnx": (lambda i, h, c: onnx(i, h, c, rt.step), lambda i, h, c: onnx(i, h, c, rt.prefill))}
    for batch in (1, 8):
        ids = torch.from_numpy(np.stack([rt.encode(TEXT[5 * b:5 * b + 20]) for b in range(batch)]))  # (B, 20)
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
    r = _cli("export-generator", str(checkpoint), "--out", str(exported_small.parent), "--tol", "-1",
             "--check-chars", "20")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: export check failed")
    assert (exported_small / "manifest.json").read_text() == before
    assert json.loads(before)["kind"] == "generator"


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    r = _cli("export-generator", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'nope.pt'}"]
