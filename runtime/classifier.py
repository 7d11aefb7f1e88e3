"""ClassifierRuntime: the exported BBC topic classifier on ONNX Runtime (numpy only, no torch).

    rt = ClassifierRuntime("exported_models/classifier")
    rt.classify(["Shares in BT rose ..."])  # [{"label": "business", "probabilities": {...}}]

The tokenizer (lowercase + regex) and vocabulary come from the verified manifest, so serving encodes
exactly as training did.
"""
from __future__ import annotations

import os
import re

import numpy as np

from runtime.manifest import load_manifest, model_dir
from runtime.providers import make_session

UNK_ID = 1


class ClassifierRuntime:
    def __init__(self, folder: str | os.PathLike, provider: str = "auto", intra_threads: int | None = None):
        folder = model_dir(folder, "classifier")
        self.manifest = load_manifest(folder, kind="classifier")  # verifies every file's sha256
        self.labels: list[str] = list(self.manifest["labels"])
        self.max_len: int = int(self.manifest["max_len"])
        tok = self.manifest["tokenizer"]
        self._pattern = re.compile(tok["pattern"])
        self._lowercase = bool(tok.get("lowercase", True))
        self._stoi = {t: i for i, t in enumerate(self.manifest["vocab"])}
        self.session = make_session(folder / "model.onnx", provider=provider, intra_threads=intra_threads)

    def encode(self, text: str) -> list[int]:
        """Token ids of the first max_len tokens (unknown words -> <unk>); never empty."""
        text = text.lower() if self._lowercase else text
        ids = [self._stoi.get(t, UNK_ID) for t in self._pattern.findall(text)][: self.max_len]
        return ids or [UNK_ID]

    def predict_proba(self, texts: list[str], batch_size: int = 4) -> np.ndarray:
        """Class probabilities (N, C) in input order. Texts are sorted by length inside the call, so a short
        text is not padded to the length of a long one in the same batch.

        batch_size: texts per ONNX call. Small chunks of length-sorted texts beat one big padded call on
        CPU (32 real articles, one thread: 5.4 ms/article in one chunk of 32, 3.3 in 8s, 2.7 in 4s, 3.5 alone).
        """
        encoded = [self.encode(t) for t in texts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        probs = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            lengths = np.array([len(encoded[i]) for i in chunk], dtype=np.int64)  # (B,)
            ids = np.zeros((len(chunk), int(lengths.max())), dtype=np.int64)    # (B, T) right-padded with 0
            for row, i in enumerate(chunk):
                ids[row, : lengths[row]] = encoded[i]
            logits = self.session.run(["logits"], {"ids": ids, "lengths": lengths})[0]  # (B, C)
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs[chunk] = z / z.sum(axis=1, keepdims=True)
        return probs

    def classify(self, texts: list[str]) -> list[dict]:
        probs = self.predict_proba(texts)
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {lab: float(v) for lab, v in zip(self.labels, p)}} for p in probs]
