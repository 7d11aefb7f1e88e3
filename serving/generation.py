"""One generation (or scoring) from start to end: session hand-out, prompt prefill, the stream, saving.

``begin`` does everything that can fail with a client error (unknown session 404, busy session 409, the client
at its stream quota 429, no free slot 503, the store down 503) before the first byte is sent, and before any
prefill, so those get a JSON reply with the right status; ``run`` then yields the stream's events (``Chunk``,
``Prompt``, ``Done``), which /generate writes as its server-sent events (``events``) and /v1/completions as
OpenAI's (serving/completions.py). Whatever happens to the stream (end, error, client gone), ``release`` gives
the slot, the client's stream quota and the session back.

Sessions belong to the client that made them (``Client.tag``): another client's id is answered exactly as an
unknown one (404), busy or not, so an id reveals nothing to anyone but its owner. A running stream with a session
can be ended gracefully by its owner (``stop``, POST /stop): on this worker directly, on another one through a
flag in the session store that the stream polls every STOP_POLL_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio

from runtime.logprobs import CharLogprob, StopText, char_logprob

from .clients import Client
from .errors import (
    ClientError,
    draining,
    not_generating,
    overloaded,
    quota_exceeded,
    session_busy,
    store_down,
    unknown_session,
)
from .jobs import ANONYMOUS, Chunk, Done, Job, Prompt, Ticket
from .sessions import SessionBusy, StoreUnavailable, decode_state, encode_state, new_session_id
from .stepper import Stepper, StepperFull

log = logging.getLogger(__name__)
FLUSH_S = 0.05  # characters produced within 50 ms of the last event go out together
STOP_POLL_S = 0.2  # how often a stream with a session looks for a stop request made on another worker
STOP_FLAG_S = 5.0  # how long such a request waits to be taken (a stream that has ended never takes it)


def sse(doc: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines inside strings, so one event is always one ``data:`` line
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"


def stop_flag(sid: str) -> str:
    return f"stop:{sid}"


class Generation:
    def __init__(
        self, runtime: Any, store: Any, stepper: Stepper, model_tag: str, metrics: Any = None, quotas: Any = None
    ):
        self.runtime, self.store, self.stepper = runtime, store, stepper
        self.model_tag, self.metrics = model_tag, metrics
        self.quotas = quotas  # serving/quotas.py: the clients' stream slots (None: no per-client quota)
        self.running: dict[str, Ticket] = {}  # this worker's streams with a session, by session id (for stop)
        self.open = 0  # tickets begun and not yet released (their events not yet ended)
        self.draining = False  # SIGTERM: no new stream (drain())

    async def begin(self, job: Job, client: Client = ANONYMOUS) -> Ticket:
        if self.draining:
            raise draining()
        if self.stepper.active >= self.stepper.max_streams:  # fail fast, before any work
            raise overloaded(f"all {self.stepper.max_streams} generation slots are busy")
        token, state, sid, slot, locked, kept, placeholder = None, None, job.session_id, None, None, None, False
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
                    locked = sid
                except SessionBusy:
                    if await self.store.owner_of(sid) != client.tag:
                        raise unknown_session() from None
                    raise session_busy() from None
                blob = await self.store.load(sid, client.tag)
                state = None if blob is None else decode_state(blob, self.runtime.state_class, self.model_tag)
                if state is None:
                    raise unknown_session()
                if job.readonly:  # read: the lock is not needed any longer
                    await self._release(sid, token)
                    token = locked = None
            state, rng, first, first_lp, forced = await asyncio.to_thread(self._start, job, state)
            if job.keep_session:
                kept = sid or new_session_id()
                if sid is None:  # a new session: saved now, so that its owner can stop (POST /stop) its first stream
                    token, locked = await self.store.acquire(kept), kept
                    await self.store.save(
                        kept, encode_state(state, self.model_tag), client.tag, self._owner_max(client)
                    )
                    placeholder = True
            stream = self.stepper.open(
                state,
                job.max_chars,
                rng,
                **job.sampling(),
                first=first,
                stop=job.stop,
                forced=forced,
                top=job.top,
                first_logprob=first_lp,
            )
            if self.metrics is not None:
                self.metrics.chars.inc()
        except BaseException as exc:
            if placeholder:
                await self._drop(kept)
            await self._release(locked, token, client, slot)
            if isinstance(exc, StoreUnavailable):
                raise store_down() from None
            if isinstance(exc, StepperFull):
                raise overloaded(str(exc)) from None
            raise
        self._gauge_streams()
        t = Ticket(job, stream, token, client, slot, kept=kept, locked=locked, placeholder=placeholder)
        self.open += 1
        if locked is not None:
            self.running[locked] = t
        return t

    def _start(self, job: Job, state: Any) -> tuple[Any, Any, str | None, CharLogprob | None, Any]:
        """The prompt and the first character, in a pool thread: the stepping thread runs at a lower CPU
        priority (serving/stepper.py), and the time to the first chunk should not wait for it. The same
        sample-then-step as every later character, so the text is the one the stepper alone would write.
        With ``score_prompt`` the prompt is left to the stepper (as forced ids) and nothing is sampled here."""
        rt = self.runtime
        if job.score_prompt:
            state = rt.start(job.context, state, job.seed)  # an empty context without a state reads PRIME
            return state, rt.rng_for(state), None, None, rt.encode(job.prompt)
        state = rt.start(job.context + job.prompt, state, job.seed)
        rng = rt.rng_for(state)
        if job.max_chars <= 0:
            return state, rng, None, None, None
        if rt.fused:  # the decode graph with K = 1: its sampler, as every later character's
            dec = rt.decode_steps([state], [rng], [(job.temperature, job.top_k, job.top_p)], 1)
            i = int(dec.ids[0, 0])
            lp = None if job.top is None else char_logprob(state.logits, i, job.top)
            dec.take(0, 1, state, rng)
        else:
            i = rt.sample_next(state.logits, job.temperature, job.top_k, job.top_p, rng)
            lp = None if job.top is None else char_logprob(state.logits, i, job.top)
            rt.advance([state], [i])
        return state, rng, rt.decode([i]), lp, None

    async def run(self, t: Ticket) -> AsyncIterator[Chunk | Prompt | Done]:
        """The stream's events: ``Prompt`` (score_prompt), ``Chunk``s, then one ``Done``. Stop sequences are held
        back until they are sure not to be one (runtime.logprobs.StopText), and never returned."""
        job, stream = t.job, t.stream
        held = StopText(job.stop)
        n_forced = 0 if stream.forced is None else len(stream.forced)
        prompt_sent = n_forced == 0
        last_refresh = last_poll = time.monotonic()
        last_sent = 0.0  # the first characters go out at once
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
                failure = next((i for i in items if isinstance(i, Exception)), None)
                ended = None in items
                if not prompt_sent and (len(stream.logprobs) >= n_forced or ended):
                    prompt_sent = True
                    yield Prompt(stream.logprobs[:n_forced])
                before = held.released
                text = held.push("".join(i for i in items if isinstance(i, str)))
                if ended:
                    text += held.finish(stream.stop_hit)  # set only when a stop sequence ended it
                if text:
                    lps = None
                    if job.top is not None:
                        lps = stream.logprobs[n_forced + before : n_forced + before + len(text)]
                    yield Chunk(text, lps)
                if failure is not None:
                    self._error("internal")
                    yield Done(stream.produced, "error", error=ClientError(500, "internal", "generation failed"))
                    return
                if ended:
                    break
                now = time.monotonic()
                if t.locked is not None and now - last_poll > STOP_POLL_S:
                    last_poll = now
                    try:
                        if await self.store.take_flag(stop_flag(t.locked)):
                            self.stepper.stop(stream)
                    except StoreUnavailable:
                        pass
                if (t.token or t.slot) and now - last_refresh > self.store.LOCK_TTL_S / 3:
                    try:
                        if t.token:
                            await self.store.refresh(t.locked, t.token)
                        if t.slot:
                            await self.quotas.refresh_stream(t.client.tag, t.slot)
                    except StoreUnavailable:  # keep streaming; saving at the end will say so
                        log.warning("could not extend a session lock (store unavailable)")
                    last_refresh = now
            done = Done(stream.produced, stream.reason or "length", stop=stream.stop_hit)
            try:
                await self._finish(t)
            except StoreUnavailable:
                self._error("store_unavailable")
                done.reason, done.error = "error", store_down()
                yield done
                return
            done.session_id = t.kept
            # free the session before saying done: a client that continues it at once, maybe on another worker
            # over another connection, must not find it still busy
            await self.release(t)
            yield done
        finally:
            await self.release(t)

    async def events(self, t: Ticket) -> AsyncIterator[bytes]:
        """/generate's server-sent events: ``{"text"}`` chunks, then ``{"done": true, "chars", "finish_reason"}``
        (with ``session_id`` when kept, ``stop`` when a stop sequence ended it), or an error event."""
        async with aclosing(self.run(t)) as events:  # closed with this one: the slot is free when the client goes
            async for event in events:
                if isinstance(event, Chunk):
                    yield sse({"text": event.text})
                elif isinstance(event, Done):
                    done: dict[str, Any] = {"done": True, "chars": event.chars, "finish_reason": event.reason}
                    if event.error is not None:
                        done = {"error": event.error.message, "kind": event.error.kind, **done}
                    if event.session_id is not None:
                        done["session_id"] = event.session_id
                    if event.stop is not None:
                        done["stop"] = event.stop
                    yield sse(done)

    async def release(self, t: Ticket) -> None:
        """Give the slot and the session back (idempotent). Called when the events end, and again by the
        response however it ends: a generator cancelled before its first event never runs its finally."""
        if t.released:
            return
        t.released = True
        self.open -= 1
        self.stepper.close(t.stream)
        self._gauge_streams()
        if t.locked is not None and self.running.get(t.locked) is t:
            del self.running[t.locked]
        if t.placeholder and not t.finished:  # the first stream of a new session did not end: no session
            await self._drop(t.kept)
        await self._release(t.locked, t.token, t.client, t.slot)

    async def _drop(self, sid: str | None) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.store.delete(sid)
            except StoreUnavailable:  # it expires
                log.warning("could not drop an unfinished new session (store unavailable)")

    def _owner_max(self, client: Client) -> int:
        return client.limits.sessions if client.limits is not None else 0

    async def _finish(self, t: Ticket) -> None:
        """Save the session under ``t.kept`` (keep_session), or drop a continued one; a read-only job neither."""
        stream, job = t.stream, t.job
        if job.readonly:  # POST /score: the session is only read
            t.finished = True
            return
        if t.kept is not None:
            self.runtime.save_rng(stream.state, stream.rng)
            # at its session quota, the client's own least recently saved idle session makes room (docs/serving.md)
            await self.store.save(
                t.kept, encode_state(stream.state, self.model_tag), t.client.tag, self._owner_max(t.client)
            )
            await self.update_session_gauge()
        elif job.session_id is not None:  # continued without keep_session: this was its last request
            await self.store.delete(job.session_id)
            await self.update_session_gauge()
        t.finished = True

    async def drain(self, limit_s: float, hurry: asyncio.Event | None = None, grace_s: float = 10.0) -> int:
        """A server shutting down: refuse new streams (503 ``draining``), let the running ones finish for up to
        ``limit_s`` (or until ``hurry`` is set), then stop those left at their next character, as POST /stop does:
        each ends with a done event (``finish_reason`` "stopped") and its kept session saved exactly after its last
        character. Returns once every stream has ended (or ``grace_s`` after the stop); how many were stopped."""
        self.draining = True
        deadline = time.monotonic() + limit_s
        while self.open and time.monotonic() < deadline and not (hurry is not None and hurry.is_set()):
            await asyncio.sleep(0.05)
        stopped = self.stepper.stop_all() if self.open else 0
        if stopped:
            log.warning(
                "drain: %d stream(s) still running after %.0f s stopped; their sessions are saved", stopped, limit_s
            )
        deadline = time.monotonic() + grace_s
        while self.open and time.monotonic() < deadline:  # their done events and saves
            await asyncio.sleep(0.02)
        return stopped

    async def stop(self, sid: str, client: Client = ANONYMOUS) -> None:
        """End the running stream of one of ``client``'s sessions at the next character boundary (POST /stop)."""
        t = self.running.get(sid)
        if t is not None:  # streaming from this worker
            if t.client.tag != client.tag:
                raise unknown_session()
            if not self.stepper.stop(t.stream):
                raise not_generating()
            return
        try:
            if await self.store.owner_of(sid) != client.tag:
                raise unknown_session()
            try:
                token = await self.store.acquire(sid)
            except SessionBusy:  # its stream runs on another worker (or replica): it polls for this flag
                await self.store.set_flag(stop_flag(sid), STOP_FLAG_S)
                return
            await self.store.release(sid, token)
        except StoreUnavailable:
            raise store_down() from None
        raise not_generating()

    async def score(self, job: Job, client: Client = ANONYMOUS) -> tuple[list[CharLogprob], int]:
        """The log-probability of every character of ``job.prompt`` (read through the step batcher, after
        ``job.context`` and the session's state when ``job.session_id``), and how many were outside the vocabulary."""
        t = await self.begin(job, client)
        try:
            prompt = None
            async for event in self.run(t):
                if isinstance(event, Prompt):
                    prompt = event.logprobs
                elif isinstance(event, Done) and event.error is not None:
                    raise event.error
        finally:
            await self.release(t)
        unknown = int((t.stream.forced == self.runtime.unk_id).sum())
        return prompt or [], unknown

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
