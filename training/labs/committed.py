"""The committed models (exported_models/) back in PyTorch, for labs that need their hidden states.

The exported folder is the only thing that crosses from training (checkpoints in runs/ are not committed), so
each model is rebuilt from its manifest's ``config`` and its weights are read from the TorchScript file's
``state_dict()``: the traced module holds the training model's parameters under the same names (the
generator's under a ``model.`` prefix, from the step/prefill wrapper). The manifest is verified first.
``char_states`` gives the character model's h and c at every step (nn.LSTM returns only the top layer's h);
the classifier's per-token states are ``TextClassifier.token_states``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPORTED = ROOT / "exported_models"


def _torchscript_state(path: Path, prefix: str = "") -> dict:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice
        ts = torch.jit.load(str(path), map_location="cpu")
    return {k[len(prefix) :]: v for k, v in ts.state_dict().items() if k.startswith(prefix)}


def load_classifier(models: str | Path = EXPORTED):
    """-> (TextClassifier in eval mode, manifest) of exported_models/classifier; of an ensemble, its first member."""
    from runtime.manifest import load_manifest, model_dir
    from training.classifier.model import Ensemble, from_manifest

    folder = model_dir(models, "classifier")
    man = load_manifest(folder, kind="classifier")
    model = from_manifest(man)
    model.load_state_dict(_torchscript_state(folder / "model.ts"))
    return (model.members[0] if isinstance(model, Ensemble) else model).eval(), man


def load_char_model(models: str | Path = EXPORTED):
    """-> (CharRNN in eval mode, CharVocab, manifest) of exported_models/generator."""
    from runtime.manifest import load_manifest, model_dir
    from training.generator.data import CharVocab
    from training.generator.model import CharConfig, CharRNN

    folder = model_dir(models, "generator")
    man = load_manifest(folder, kind="generator")
    model = CharRNN(CharConfig(**man["config"]))
    model.load_state_dict(_torchscript_state(folder / "prefill.ts", prefix="model."))
    return model.eval(), CharVocab.from_json(man), man


# ---------------------------------------------------------------- hidden states
def trace_lstm(rnn, x):
    """Step a stacked nn.LSTM by hand: x (B, T, E) -> h, c of every layer and step, each (L, B, T, H).
    nn.LSTM returns only the top layer's h per step; the cell states need the recurrence itself."""
    import torch

    hs, cs = [], []
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            getattr(rnn, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        xw = x @ w_ih.T + b_ih + b_hh  # (B, T, 4H): the input's part of all gates at once
        h = c = x.new_zeros(x.size(0), rnn.hidden_size)
        h_seq, c_seq = [], []
        for t in range(x.size(1)):
            i, f, g, o = (xw[:, t] + h @ w_hh.T).chunk(4, dim=1)  # PyTorch's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            h_seq.append(h), c_seq.append(c)
        x = torch.stack(h_seq, 1)  # (B, T, H): the next layer's input
        hs.append(x), cs.append(torch.stack(c_seq, 1))
    return torch.stack(hs), torch.stack(cs)


def char_states(model, ids, device):
    """ids (B, T) -> (B, T, L * 2 * H) numpy: per layer its h then its c; and the check against nn.LSTM."""
    import torch

    with torch.no_grad():
        x = model.embed(torch.as_tensor(ids, device=device))  # (B, T, E)
        h, c = trace_lstm(model.rnn, x)  # (L, B, T, H)
        check = float((h[-1] - model.rnn(x)[0]).abs().max())
        states = torch.stack([h, c], 1).permute(2, 3, 0, 1, 4).flatten(2)  # (B, T, L*2*H): L, then h/c, then H
    return states.cpu().numpy(), check


def canon_split(text_path: str | Path | None, man: dict) -> tuple[str, str, float]:
    """(train, validation tail, val_frac) of the canon exactly as the committed char model was split.

    The manifest records the sizes of both parts (``metrics.train_chars``, ``val_chars``), not the fraction;
    the fraction they imply is passed to the generator's own ``split_text`` and the sizes are checked.
    """
    from training.common.cli import UserError, data_path
    from training.common.files import read_text
    from training.generator.data import split_text

    path = data_path(text_path, "sherlock/canon.txt")
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    text = read_text(path)
    m = man["metrics"]
    val_frac = m["val_chars"] / (m["train_chars"] + m["val_chars"])
    train, val = split_text(text, round(val_frac, 4))
    if (len(train), len(val)) != (m["train_chars"], m["val_chars"]):
        raise UserError(
            f"{path}: split into {len(train):,} + {len(val):,} characters, but the committed model "
            f"was trained on {m['train_chars']:,} + {m['val_chars']:,} (a different canon?)"
        )
    return train, val, round(val_frac, 4)
