"""One /generate request from start to end: session hand-out, prompt prefill, the event stream, saving.

``begin`` does everything that can fail with a client error (unknown session 404, busy session 409, the client
at its stream quota 429, no free slot 503, the store down 503) before the first byte is sent, and before any
prefill, so those get a JSON reply with the right status; ``events`` then yields the server-sent events. Whatever
happens to the stream (end, error, client gone), ``release`` gives the slot, the client's stream quota and the
session back.

Sessions belong to the client that made them (``Client.tag``): another client's id is answered exactly as an
unknown one (404), busy or not, so an id reveals nothing to anyone but its owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from .clients import Client
from .errors import overloaded, quota_exceeded, session_busy, store_down, unknown_session
from .schemas import GenerateFields
from .sessions import SessionBusy, StoreUnavailable, decode_state, encode_state, new_session_id
from .stepper import Stepper, StepperFull, Stream

ANONYMOUS = Client("local", False, None)  # unit tests and callers without clients: no quotas

log = logging.getLogger(__name__)
FLUSH_S = 0.05  # characters produced within 50 ms of the last event go out together


def sse(doc: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines inside strings, so one event is always one ``data:`` line
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"


@dataclass
class Ticket:
    req: GenerateFields
    stream: Stream
    token: str | None  # the session's lock token when continuing a session
    client: Client = ANONYMOUS
    slot: str | None = None  # the client's stream-quota slot
    released: bool = False
    kept: str | None = None  # with keep_session: the id the session is saved under (known before the stream)


class Generation:
    def __init__(
        self, runtime: Any, store: Any, stepper: Stepper, model_tag: str, metrics: Any = None, quotas: Any = None
    ):
        self.runtime, self.store, self.stepper = runtime, store, stepper
        self.model_tag, self.metrics = model_tag, metrics
        self.quotas = quotas  # serving/quotas.py: the clients' stream slots (None: no per-client quota)

    async def begin(self, req: GenerateFields, client: Client = ANONYMOUS) -> Ticket:
        if self.stepper.active >= self.stepper.max_streams:  # fail fast, before any work
            raise overloaded(f"all {self.stepper.max_streams} generation slots are busy")
        token, state, sid, slot = None, None, req.session_id, None
        try:
            if self.quotas is not None and client.limits is not None:
                slot = new_session_id()
                if not await self.quotas.open_stream(client.tag, slot, client.limits.streams):
                    slot = None
                    raise quota_exceeded(
                        f"client {client.name!r} already has {client.limits.streams} "
                        "generation streams running (its quota); retry when one has finished"
                    )
            if sid is not None:
                try:
                    token = await self.store.acquire(sid)
                except SessionBusy:
                    if await self.store.owner_of(sid) != client.tag:
                        raise unknown_session() from None
                    raise session_busy() from None
                blob = await self.store.load(sid, client.tag)
                state = None if blob is None else decode_state(blob, self.runtime.state_class, self.model_tag)
                if state is None:
                    raise unknown_session()
            state, rng, first = await asyncio.to_thread(self._start, req, state)
            stream = self.stepper.open(state, req.max_chars, rng, **req.sampling(), first=first)
            if self.metrics is not None:
                self.metrics.chars.inc()
        except StoreUnavailable:
            await self._release(sid, token, client, slot)
            raise store_down() from None
        except StepperFull as exc:
            await self._release(sid, token, client, slot)
            raise overloaded(str(exc)) from None
        except BaseException:
            await self._release(sid, token, client, slot)
            raise
        self._gauge_streams()
        kept = (req.session_id or new_session_id()) if req.keep_session else None
        return Ticket(req, stream, token, client, slot, kept=kept)

    def _start(self, req: GenerateFields, state: Any) -> tuple[Any, Any, str]:
        """The prompt and the first character, in a pool thread: the stepping thread runs at a lower CPU
        priority (serving/stepper.py), and the time to the first chunk should not wait for it. The same
        sample-then-step as every later character, so the text is the one the stepper alone would write."""
        rt = self.runtime
        state = rt.start(req.prompt, state, req.seed)
        rng = rt.rng_for(state)
        i = rt.sample_next(state.logits, req.temperature, req.top_k, req.top_p, rng)
        rt.advance([state], [i])
        return state, rng, rt.decode([i])

    async def events(self, t: Ticket) -> AsyncIterator[bytes]:
        req, stream = t.req, t.stream
        last_refresh, last_sent = time.monotonic(), 0.0  # the first characters go out at once
        try:
            while True:
                items = [await stream.out.get()]
                # at most one event per FLUSH_S: per-character events would cost more than the generation
                wait = last_sent + FLUSH_S - time.monotonic()
                if isinstance(items[0], str) and wait > 0 and not stream.ended.is_set():
                    try:  # ...but the end of the stream goes out at once
                        await asyncio.wait_for(stream.ended.wait(), wait)
                    except TimeoutError:
                        pass
                while not stream.out.empty():
                    items.append(stream.out.get_nowait())
                last_sent = time.monotonic()
                text = "".join(i for i in items if isinstance(i, str))
                if text:
                    yield sse({"text": text})
                failure = next((i for i in items if isinstance(i, Exception)), None)
                if failure is not None:
                    self._error("internal")
                    yield sse({"error": "generation failed", "kind": "internal", "done": True})
                    return
                if None in items:
                    break
                if (t.token or t.slot) and time.monotonic() - last_refresh > self.store.LOCK_TTL_S / 3:
                    try:
                        if t.token:
                            await self.store.refresh(req.session_id, t.token)
                        if t.slot:
                            await self.quotas.refresh_stream(t.client.tag, t.slot)
                    except StoreUnavailable:  # keep streaming; saving at the end will say so
                        log.warning("could not extend a session lock (store unavailable)")
                    last_refresh = time.monotonic()
            done: dict[str, Any] = {"done": True, "chars": stream.produced}
            try:
                await self._finish(t)
            except StoreUnavailable:
                self._error("store_unavailable")
                yield sse({"error": "session store unavailable", "kind": "store_unavailable", **done})
                return
            if t.kept:
                done["session_id"] = t.kept
            # free the session before saying done: a client that continues it at once, maybe on another worker
            # over another connection, must not find it still busy
            await self.release(t)
            yield sse(done)
        finally:
            await self.release(t)

    async def release(self, t: Ticket) -> None:
        """Give the slot and the session back (idempotent). Called when the events end, and again by the
        response however it ends: a generator cancelled before its first event never runs its finally."""
        if t.released:
            return
        t.released = True
        self.stepper.close(t.stream)
        self._gauge_streams()
        await self._release(t.req.session_id, t.token, t.client, t.slot)

    async def _finish(self, t: Ticket) -> None:
        """Save the session under ``t.kept`` (keep_session), or drop a continued one."""
        stream, client = t.stream, t.client
        if t.kept is not None:
            self.runtime.save_rng(stream.state, stream.rng)
            # at its session quota, the client's own least recently saved idle session makes room (docs/serving.md)
            owner_max = client.limits.sessions if client.limits is not None else 0
            await self.store.save(t.kept, encode_state(stream.state, self.model_tag), client.tag, owner_max)
            await self.update_session_gauge()
        elif t.req.session_id is not None:  # continued without keep_session: this was its last request
            await self.store.delete(t.req.session_id)
            await self.update_session_gauge()

    async def end_session(self, sid: str, client: Client = ANONYMOUS) -> None:
        try:
            if await self.store.owner_of(sid) != client.tag:
                raise unknown_session()
            token = await self.store.acquire(sid)
        except SessionBusy:
            raise session_busy() from None
        except StoreUnavailable:
            raise store_down() from None
        try:
            if not await self.store.delete(sid):
                raise unknown_session()
        except StoreUnavailable:
            raise store_down() from None
        finally:
            await self._release(sid, token)
        await self.update_session_gauge()

    async def _release(
        self, sid: str | None, token: str | None, client: Client = ANONYMOUS, slot: str | None = None
    ) -> None:
        # the client may be gone (cancelled task): shield so that the session and slot are really given back
        with anyio.CancelScope(shield=True):
            if slot is not None:
                await self.quotas.close_stream(client.tag, slot)  # never raises: a lapsed lease frees it
            if sid is None or token is None:
                return
            try:
                await self.store.release(sid, token)
            except StoreUnavailable:  # the lock's own TTL frees it
                log.warning("could not release session lock (store unavailable)")

    async def update_session_gauge(self) -> None:
        if self.metrics is not None:
            try:
                self.metrics.sessions.set(await self.store.count())
            except StoreUnavailable:
                pass

    def _gauge_streams(self) -> None:
        if self.metrics is not None:
            self.metrics.streams.set(self.stepper.active)

    def _error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.error(kind)
