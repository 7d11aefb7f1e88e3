"""Character generation with the exported ONNX generator (numpy + onnxruntime only, no torch).

The BentoML service and the ``generate`` command share these numerics. A stream's whole state is a
``GenState``: recurrent state (h, c), the logits of the next character and the RNG state. Invariant: after
N characters have been emitted, every one of them has been fed to the model, so a stream can be stopped
and resumed anywhere (``start("", state)``) and produces exactly what an uninterrupted run would.

Sampling: where the export has a decode graph (``decode`` in the manifest's files: training/common/decode_graph.py),
K characters are sampled and fed per ONNX Runtime call, the sampler inside the graph and its uniform draws taken
from the stream's numpy RNG, so a seed gives the same text for any K (``decode_steps`` / ``Decoded``). Folders
without one (older exports, GRU/RNN generators) sample with ``sample_next`` and feed one character per call
(``advance``); the two samplers are the same rule.

Precision and provider: ``GeneratorRuntime(folder, provider="auto", precision="auto")`` resolves both
(``.provider`` "cpu" | "cuda", ``.precision`` "fp32" | "int8") with ``runtime.manifest.select_precision``.
On CUDA a lone stream (``TextStream``) keeps h/c on the device between steps with IO binding (``BoundStep``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.manifest import load_manifest, model_dir, select_precision
from runtime.providers import cuda_device_id, make_session, resolve_provider


def sample_next(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    """One character id from next-char logits (V,): temperature 0 = argmax; else top-k, then top-p nucleus."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs an rng")
    z = logits / temperature
    order = np.argsort(-z, kind="stable")  # most likely first; stable so ties are deterministic
    z = z[order]
    if top_k is not None and 0 < top_k < len(z):
        z = z[:top_k]
    p = np.exp(z - z.max())
    p /= p.sum()
    cdf = np.cumsum(p)
    if top_p is not None and 0 < top_p < 1:
        keep = int(np.searchsorted(cdf, top_p)) + 1  # smallest prefix with mass >= top_p
        p = p[:keep] / p[:keep].sum()
        cdf = np.cumsum(p)
    # what rng.choice(len(p), p=p) does, draw for draw, without its checks of p (a third of this function's time)
    cdf /= cdf[-1]
    return int(order[int(np.searchsorted(cdf, rng.random(), side="right"))])


@dataclass
class GenState:
    """One stream: recurrent state, logits of the next character and the sampler's RNG state.

    Only numpy arrays and JSON values, so it can be stored (serving.sessions.encode_state) without pickle.
    """

    h: np.ndarray  # (L, H) float32
    c: np.ndarray  # (L, H) float32
    logits: np.ndarray  # (V,) float32: the next character's logits, i.e. every emitted char has been fed
    rng_state: dict[str, Any] | None = field(default=None)  # numpy bit_generator.state


class Decoded:
    """The result of ``GeneratorRuntime.decode_steps``: K characters for each of B streams, and every state on the way.

    ``ids`` (K, B); ``logits`` (K, B, V): the next-character logits after each character; ``h``, ``c`` (K, L, B, H).
    ``take(b, n, state, rng)`` moves stream b's state to just after its first n characters and leaves its RNG having
    drawn exactly the uniforms those n characters used, so a stream can end anywhere inside the K.
    """

    def __init__(self, out: list, first_logits: list[np.ndarray], rng_states: list, draws: np.ndarray):
        self.ids, self.logits, self.h, self.c = out
        self._first = first_logits  # each stream's logits before the first character (for log-probabilities)
        self._rng_states = rng_states  # each stream's RNG state before its draws (None: it drew nothing)
        self._draws = draws  # (K, B) bool: position k of stream b used a uniform draw

    def logits_before(self, k: int, b: int) -> np.ndarray:
        """The logits the k-th character of stream b was chosen from, (V,)."""
        return self._first[b] if k == 0 else self.logits[k - 1, b]

    def take(self, b: int, n: int, state: GenState, rng: np.random.Generator | None = None) -> None:
        if n <= 0:
            return
        state.h, state.c = self.h[n - 1, :, b].copy(), self.c[n - 1, :, b].copy()
        state.logits = self.logits[n - 1, b].copy()
        if rng is not None and self._rng_states[b] is not None:
            used = int(self._draws[:n, b].sum())
            if used < int(self._draws[:, b].sum()):  # it drew for characters it does not keep
                rng.bit_generator.state = self._rng_states[b]  # rewind, then draw what the n characters used
                if used:
                    rng.random(used)


class BoundStep:
    """The step graph run with ONNX Runtime IO binding: h/c stay in OrtValues on ``device`` between calls.

    Per call only ids (B,) go in and logits (B, V) come back to the host; the (L, B, H) state does not cross
    the bus. That pays on CUDA (two state copies each way per character saved); on "cpu" the same code runs and
    gives the plain path's numbers exactly, which is how it is tested without a GPU.
    """

    def __init__(self, session, h: np.ndarray, c: np.ndarray, device: str = "cpu", device_id: int = 0):
        import onnxruntime as ort

        def buffer():  # ORT-owned (L, B, H) float32 on the device
            return ort.OrtValue.ortvalue_from_shape_and_type(h.shape, np.float32, device, device_id)

        self.session, self.binding = session, session.io_binding()
        # two (h, c) pairs: a call reads one and writes the other (the LSTM does not update in place)
        self._pairs = [(buffer(), buffer()), (buffer(), buffer())]
        self._pairs[0][0].update_inplace(np.ascontiguousarray(h, np.float32))
        self._pairs[0][1].update_inplace(np.ascontiguousarray(c, np.float32))
        self._cur = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        """ids (B,) -> logits (B, V) on the host; the state advances on the device."""
        (h, c), (h_out, c_out) = self._pairs[self._cur], self._pairs[1 - self._cur]
        b = self.binding
        b.bind_cpu_input("ids", np.asarray(ids, dtype=np.int64))  # copied to the device by ORT
        b.bind_ortvalue_input("h", h)
        b.bind_ortvalue_input("c", c)
        b.bind_output("logits", "cpu")  # bound first, so get_outputs()[0]; re-binding keeps the order
        b.bind_ortvalue_output("h_out", h_out)
        b.bind_ortvalue_output("c_out", c_out)
        self.session.run_with_iobinding(b)
        self._cur = 1 - self._cur
        return b.get_outputs()[0].numpy()

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """The current h, c (L, B, H) copied to the host."""
        h, c = self._pairs[self._cur]
        return h.numpy(), c.numpy()


class GeneratorRuntime:
    """The exported step/prefill ONNX graphs of ``exported_models/generator`` (manifest verified)."""

    state_class = GenState
    PRIME = "\n"  # what an empty prompt without a state reads: generation starts at a line start
    PREFILL_CHUNK = 4096  # longer prompts are read in pieces, the state carried between them

    def __init__(
        self,
        folder: str | Path,
        provider: str = "auto",
        intra_threads: int | None = None,
        precision: str = "auto",
        wide_threads: int = 0,
    ):
        folder = model_dir(folder, "generator")
        self.manifest = load_manifest(folder, kind="generator")
        self.provider = resolve_provider(provider)  # "cpu" | "cuda"
        self.precision, self.files = select_precision(self.manifest, self.provider, precision)
        self.vocab: list[str] = list(self.manifest["vocab"])
        self.unk_id = int(self.manifest["unk_id"])
        self.num_layers = int(self.manifest["num_layers"])
        self.hidden_size = int(self.manifest["hidden_size"])
        self._index = {ch: i for i, ch in enumerate(self.vocab)}
        self.step_session = make_session(folder / self.files["step"], self.provider, intra_threads)
        self.prefill_session = make_session(folder / self.files["prefill"], self.provider, intra_threads)
        # a second step session with ``wide_threads`` intra-op threads (CPU only), for a lone stream on an idle
        # machine: batch 1 is bound by reading the weights, and more cores read them faster (int8, 2 cores here:
        # 160 -> 76 us per step, the same numbers); next to other work its spinning threads would slow both
        self.wide_step_session = None
        if self.provider == "cpu" and wide_threads > (intra_threads or 1):
            self.wide_step_session = make_session(folder / self.files["step"], self.provider, wide_threads)
        self.decode_session = self.wide_decode_session = None
        if "decode" in self.files:  # K characters per call, sampling in the graph
            self.decode_session = make_session(folder / self.files["decode"], self.provider, intra_threads)
            if self.wide_step_session is not None:
                self.wide_decode_session = make_session(folder / self.files["decode"], self.provider, wide_threads)
        on_gpu = "CUDAExecutionProvider" in self.step_session.get_providers()
        self.device = ("cuda", cuda_device_id()) if on_gpu else ("cpu", 0)  # where BoundStep keeps h/c
        # IO binding for lone streams: on by default only where the state would otherwise cross the bus
        self.io_binding = on_gpu

    # ------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> np.ndarray:
        """(N,) int64; characters outside the vocabulary become unk_id."""
        return np.fromiter((self._index.get(ch, self.unk_id) for ch in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    # ------------------------------------------------------------ raw graphs
    def zero_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.num_layers, batch, self.hidden_size)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def prefill(self, ids: np.ndarray, h: np.ndarray, c: np.ndarray):
        """ids (B, T) -> logits after the last position (B, V), h, c (L, B, H)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"prefill needs ids of shape (B, T) with T >= 1, got {ids.shape}")
        for i in range(0, ids.shape[1], self.PREFILL_CHUNK):
            logits, h, c = self.prefill_session.run(None, {"ids": ids[:, i : i + self.PREFILL_CHUNK], "h": h, "c": c})
        return logits, h, c

    def step(self, ids: np.ndarray, h: np.ndarray, c: np.ndarray, wide: bool = False):
        """ids (B,) -> logits (B, V), h, c (L, B, H). ``wide``: with the wide session, when there is one."""
        session = self.wide_step_session if wide and self.wide_step_session is not None else self.step_session
        return tuple(session.run(None, {"ids": np.asarray(ids, dtype=np.int64), "h": h, "c": c}))

    @property
    def fused(self) -> bool:
        """Whether sampling runs in a decode graph (``decode_steps``), K characters per call."""
        return self.decode_session is not None

    def decode_steps(
        self,
        states: Sequence[GenState],
        rngs: Sequence[np.random.Generator | None],
        sampling: Sequence[tuple[float, int | None, float | None]],
        steps: int,
        forced: np.ndarray | None = None,
        wide: bool = False,
    ) -> Decoded:
        """``steps`` characters for each stream in ONE call: sampled (temperature, top_k, top_p per stream) or, where
        ``forced`` (steps, B) is >= 0, that id read instead (its RNG draws nothing). States are not changed: the
        caller moves each one with ``Decoded.take`` to where its stream ends."""
        B = len(states)
        forced = np.full((steps, B), -1, np.int64) if forced is None else np.asarray(forced, np.int64)
        draws = forced < 0  # (K, B)
        u = np.zeros((steps, B), np.float64)
        rng_states = []
        for b, (rng, (temperature, _, _)) in enumerate(zip(rngs, sampling)):
            if rng is None or temperature <= 0:  # greedy draws nothing, as in sample_next
                draws[:, b] = False
                rng_states.append(None)
                continue
            rng_states.append(rng.bit_generator.state)
            n = int(draws[:, b].sum())
            if n:
                u[draws[:, b], b] = rng.random(n)  # the same uniforms, in the same order, for any K
        h = np.stack([s.h for s in states], axis=1)  # (L, B, H)
        c = np.stack([s.c for s in states], axis=1)
        first = [s.logits for s in states]
        feed = {
            "logits": np.stack(first).astype(np.float32, copy=False),  # (B, V)
            "h": h,
            "c": c,
            "u": u,
            "forced": forced,
            "temperature": np.array([t for t, _, _ in sampling], np.float32),
            "top_k": np.array([k or 0 for _, k, _ in sampling], np.int64),
            "top_p": np.array([1.0 if p is None else p for _, _, p in sampling], np.float32),
        }
        session = self.wide_decode_session if wide and self.wide_decode_session is not None else self.decode_session
        return Decoded(session.run(None, feed), first, rng_states, draws)

    def bind(self, h: np.ndarray, c: np.ndarray) -> BoundStep:
        """A BoundStep starting from h, c (L, B, H): steps with the state kept on ``self.device``."""
        return BoundStep(self.step_session, h, c, *self.device)

    # ------------------------------------------------------------ streams
    def start(self, prompt: str, state: GenState | None = None, seed: int | None = None) -> GenState:
        """Read ``prompt`` from ``state`` (or from zeros). An empty prompt keeps the state's logits, or
        with no state reads PRIME. ``seed`` starts a fresh RNG; without it the state's RNG continues."""
        if state is None:
            h, c = self.zero_state(1)
            prompt = prompt or self.PRIME
            rng_state = None
        else:
            h, c = state.h[:, None].copy(), state.c[:, None].copy()  # (L, 1, H)
            rng_state = state.rng_state
        if seed is not None or rng_state is None:
            rng_state = np.random.default_rng(seed).bit_generator.state
        if not prompt:
            return GenState(h[:, 0], c[:, 0], state.logits.copy(), rng_state)
        logits, h, c = self.prefill(self.encode(prompt)[None], h, c)
        return GenState(h[:, 0], c[:, 0], logits[0], rng_state)

    @staticmethod
    def rng_for(state: GenState) -> np.random.Generator:
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng_state
        return rng

    @staticmethod
    def save_rng(state: GenState, rng: np.random.Generator) -> None:
        state.rng_state = rng.bit_generator.state

    sample_next = staticmethod(sample_next)

    def advance(self, states: Sequence[GenState], ids: Sequence[int], wide: bool = False) -> None:
        """Feed one character to each stream with ONE batched step call; updates the states in place.
        Each stream gets the numbers it would get alone, bit for bit, at both precisions (int8's step graph
        quantizes each row with its own scale: training/common/rowint8.py)."""
        if len(states) == 1:  # a lone stream: views, no copies (each step returns new arrays)
            s = states[0]
            logits, h, c = self.step(np.asarray(ids, dtype=np.int64), s.h[:, None], s.c[:, None], wide)
            s.h, s.c, s.logits = h[:, 0], c[:, 0], logits[0]
            return
        h = np.stack([s.h for s in states], axis=1)  # (L, B, H)
        c = np.stack([s.c for s in states], axis=1)
        logits, h, c = self.step(np.asarray(ids, dtype=np.int64), h, c, wide)
        for b, s in enumerate(states):
            s.h, s.c, s.logits = h[:, b].copy(), c[:, b].copy(), logits[b].copy()


class TextStream:
    """Iterator over generated characters; ``.state`` is the stream's state after the last one yielded.

    With a decode graph (``runtime.fused``) the stream runs CHUNK characters per call and hands them out one by
    one; ``.state`` is moved to just after the last one handed out. Otherwise, with ``runtime.io_binding`` (CUDA
    by default), it steps through a BoundStep: h/c stay on the device and are copied back when ``.state`` is read.
    """

    CHUNK = 32  # characters per decode call: enough to spread the call's cost, few enough to stop early cheaply

    def __init__(
        self,
        runtime: GeneratorRuntime,
        prompt: str,
        max_chars: int,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        state: GenState | None = None,
    ):
        self.runtime, self.remaining = runtime, max_chars
        self.sampling = (temperature, top_k, top_p)
        self._state = runtime.start(prompt, state, seed)
        self._rng = runtime.rng_for(self._state)
        fused = runtime.fused
        self._bound = (
            runtime.bind(self._state.h[:, None], self._state.c[:, None]) if runtime.io_binding and not fused else None
        )
        self._stale = False  # True while the bound h/c are ahead of self._state.h/.c
        self._chunk: Decoded | None = None  # the decode call whose characters are being handed out
        self._pos = 0  # how many of them have been

    def _commit(self) -> None:
        """Move the state to just after the decode call's characters handed out so far (none: it stays)."""
        if self._chunk is not None and self._pos:
            self._chunk.take(0, self._pos, self._state, self._rng)
            self.runtime.save_rng(self._state, self._rng)
        self._chunk = None

    @property
    def state(self) -> GenState:
        self._commit()
        if self._stale:
            h, c = self._bound.state()  # (L, 1, H)
            self._state.h, self._state.c = h[:, 0], c[:, 0]
            self._stale = False
        return self._state

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.remaining <= 0:
            raise StopIteration
        if self.runtime.fused:
            return self._next_fused()
        s = self._state
        i = sample_next(s.logits, *self.sampling, rng=self._rng)
        # feed it now: the state always covers every emitted char
        if self._bound is None:
            self.runtime.advance([s], [i], wide=True)  # a lone stream: the wide session, if there is one
        else:
            s.logits = self._bound.step(np.array([i], dtype=np.int64))[0].copy()
            self._stale = True
        self.runtime.save_rng(s, self._rng)
        self.remaining -= 1
        return self.runtime.decode([i])

    def _next_fused(self) -> str:
        if self._chunk is None or self._pos == len(self._chunk.ids):
            self._commit()
            k = min(self.CHUNK, self.remaining)
            self._chunk = self.runtime.decode_steps([self._state], [self._rng], [self.sampling], k, wide=True)
            self._pos = 0
        i = int(self._chunk.ids[self._pos, 0])
        self._pos += 1
        self.remaining -= 1
        return self.runtime.vocab[i]


def generate(
    runtime: GeneratorRuntime,
    prompt: str,
    max_chars: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    state: GenState | None = None,
) -> TextStream:
    """Characters one at a time; the returned TextStream's ``.state`` resumes the stream later."""
    return TextStream(runtime, prompt, max_chars, temperature, top_k, top_p, seed, state)
