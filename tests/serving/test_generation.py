"""Generation requests in-process (tiny ONNX generator, memory store): session hand-out, 409, clean-up."""

from __future__ import annotations

import asyncio
import json

import pytest
import tiny_models

from runtime.generator import GeneratorRuntime
from serving.app_state import model_tag
from serving.errors import ClientError
from serving.generation import Generation
from serving.jobs import Job
from serving.sessions import MemoryStore
from serving.stepper import Stepper


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return GeneratorRuntime(tiny_models.generator(tmp_path_factory.mktemp("m") / "generator"), "cpu", 1)


def run(runtime, test, max_streams: int = 4) -> None:
    """Run ``test(gen, store)`` on a fresh Generation (memory store), then stop its stepping thread."""

    async def main():
        store = MemoryStore(ttl_s=60, max_sessions=10)
        gen = Generation(runtime, store, Stepper(runtime, max_streams), model_tag(runtime.manifest, runtime.files))
        try:
            await test(gen, store)
        finally:
            await gen.stepper.aclose()

    asyncio.run(main())


def req(**kw) -> Job:
    base = dict(
        prompt="the ",
        max_chars=20,
        temperature=0.0,
        top_k=None,
        top_p=1.0,
        seed=None,
        session_id=None,
        keep_session=False,
    )
    return Job.of({**base, **kw})


async def run_all(gen: Generation, r: Job) -> list[dict]:
    ticket = await gen.begin(r)
    return [json.loads(e[len(b"data: ") :]) async for e in gen.events(ticket)]


def text(events):
    return "".join(e.get("text", "") for e in events)


def test_second_request_on_a_busy_session_is_409_and_the_lock_is_released(runtime):
    async def go(gen, store):
        sid = (await run_all(gen, req(keep_session=True)))[-1]["session_id"]
        ticket = await gen.begin(req(prompt="", session_id=sid, keep_session=True))
        for attempt in (gen.begin(req(prompt="", session_id=sid)), gen.end_session(sid)):
            with pytest.raises(ClientError) as info:
                await attempt
            assert (info.value.status, info.value.kind) == (409, "session_busy")
        events = [e async for e in gen.events(ticket)]
        assert (
            events[-1]
            == b'data: {"done": true, "chars": 20, "finish_reason": "length", "session_id": "'
            + sid.encode()
            + b'"}\n\n'
        )
        await gen.end_session(sid)  # free again
        with pytest.raises(ClientError) as info:
            await gen.end_session(sid)
        assert info.value.status == 404

    run(runtime, go)


def test_abandoned_stream_frees_slot_and_lock_and_keeps_the_old_state(runtime):
    async def go(gen, store):
        first = await run_all(gen, req(keep_session=True))
        sid = first[-1]["session_id"]
        saved = await store.load(sid)
        ticket = await gen.begin(req(prompt="xyz", max_chars=1000, session_id=sid, keep_session=True))
        events = gen.events(ticket)
        await events.__anext__()
        await events.aclose()  # what the server does when the client goes away
        assert gen.stepper.active == 0
        assert await store.load(sid) == saved
        more = await run_all(gen, req(prompt="", session_id=sid, keep_session=True))  # not busy any more
        whole = await run_all(gen, req(max_chars=40))
        assert text(first) + text(more) == text(whole)

    run(runtime, go)


def test_continuing_without_keep_session_ends_the_session(runtime):
    async def go(gen, store):
        sid = (await run_all(gen, req(keep_session=True)))[-1]["session_id"]
        last = await run_all(gen, req(prompt="", session_id=sid))
        assert last[-1] == {"done": True, "chars": 20, "finish_reason": "length"}
        assert await store.load(sid) is None

    run(runtime, go)


def test_no_free_slot_is_503(runtime):
    async def go(gen, _):
        ticket = await gen.begin(req(max_chars=1000))
        with pytest.raises(ClientError) as info:
            await gen.begin(req())
        assert (info.value.status, info.value.kind) == (503, "overloaded")
        await gen.release(ticket)  # the response does this even when no event was ever sent
        assert len(await run_all(gen, req(max_chars=5))) >= 2

    run(runtime, go, max_streams=1)


def test_session_of_another_model_version_is_unknown(runtime):
    async def go(gen, store):
        sid = (await run_all(gen, req(keep_session=True)))[-1]["session_id"]
        gen.model_tag = "another-model"
        with pytest.raises(ClientError) as info:
            await gen.begin(req(prompt="", session_id=sid))
        assert (info.value.status, info.value.kind) == (404, "unknown_session")
        assert await store.acquire(sid)  # the failed request gave the session back

    run(runtime, go)


async def stop_after(gen: Generation, ticket, chars: int, stop) -> list[dict]:
    """The stream's events, with ``await stop()`` called once it has produced ``chars`` characters."""
    events, stopped = [], False
    async for e in gen.events(ticket):
        events.append(json.loads(e[len(b"data: ") :]))
        if not stopped and ticket.stream.produced >= chars:
            stopped = True
            await stop()
    return events


def test_stop_ends_a_new_sessions_first_stream_and_it_continues_exactly(runtime):
    async def go(gen, store):
        ticket = await gen.begin(req(max_chars=10**7, keep_session=True))  # never ends by itself
        sid = ticket.kept
        assert await store.owner_of(sid) == "a:local"  # saved at once, so that its owner can stop it
        events = await stop_after(gen, ticket, 1, lambda: gen.stop(sid))
        done = events[-1]
        assert (done["finish_reason"], done["session_id"]) == ("stopped", sid)
        n = done["chars"]
        assert 1 <= n < 10**7 and len(text(events)) == n
        rest = await run_all(gen, req(prompt="", session_id=sid, max_chars=300))
        assert text(events) + text(rest) == text(await run_all(gen, req(max_chars=n + 300)))
        for sid_, status, kind in ((sid, 404, "unknown_session"), ("no-such", 404, "unknown_session")):
            with pytest.raises(ClientError) as info:  # the session ended with its last request
                await gen.stop(sid_)
            assert (info.value.status, info.value.kind) == (status, kind)

    run(runtime, go)


def test_stop_on_an_idle_session_is_409_and_on_another_clients_404(runtime):
    from serving.clients import Client

    async def go(gen, store):
        sid = (await run_all(gen, req(keep_session=True)))[-1]["session_id"]
        with pytest.raises(ClientError) as info:
            await gen.stop(sid)
        assert (info.value.status, info.value.kind) == (409, "not_generating")
        ticket = await gen.begin(req(prompt="", session_id=sid, max_chars=1000, keep_session=True))
        with pytest.raises(ClientError) as info:
            await gen.stop(sid, Client("mallory", True, None))
        assert (info.value.status, info.value.kind) == (404, "unknown_session")
        assert not ticket.stream.stopping
        await gen.release(ticket)

    run(runtime, go)


def test_stop_reaches_a_stream_on_another_worker_through_the_store(runtime):
    """Two Generations on one store stand for two workers: the stream's worker takes the stop flag."""

    async def go(gen, store):
        other = Generation(runtime, store, Stepper(runtime, 4), gen.model_tag)
        try:
            ticket = await gen.begin(req(max_chars=10**7, keep_session=True))
            events = await stop_after(gen, ticket, 1, lambda: other.stop(ticket.kept))
            assert events[-1]["finish_reason"] == "stopped" and events[-1]["chars"] < 10**7
            assert await store.take_flag(f"stop:{ticket.kept}") is False  # taken by the stream
        finally:
            await other.stepper.aclose()

    run(runtime, go)


def test_an_aborted_first_stream_leaves_no_session(runtime):
    async def go(gen, store):
        ticket = await gen.begin(req(max_chars=1000, keep_session=True))
        assert await store.count() == 1
        events = gen.events(ticket)
        await events.__anext__()
        await events.aclose()  # the client went away: the new session is not kept
        assert await store.count() == 0 and gen.running == {}
        assert await store.acquire(ticket.kept)  # and its lock is free

    run(runtime, go)


def test_a_stop_sequence_is_not_returned_and_the_session_has_read_it(runtime):
    async def go(gen, store):
        whole = text(await run_all(gen, req(max_chars=200)))
        stop = whole[30:33]
        cut = whole.index(stop)
        events = await run_all(gen, req(max_chars=200, stop=[stop], keep_session=True))
        done = events[-1]
        assert text(events) == whole[:cut]
        assert (done["finish_reason"], done["stop"], done["chars"]) == ("stop", stop, cut + len(stop))
        rest = await run_all(gen, req(prompt="", session_id=done["session_id"], max_chars=200 - done["chars"]))
        assert text(events) + stop + text(rest) == whole

    run(runtime, go)


def test_score_reads_a_session_without_changing_it(runtime):
    from runtime.logprobs import log_softmax

    async def go(gen, store):
        sid = (await run_all(gen, req(keep_session=True)))[-1]["session_id"]
        saved = await store.load(sid)
        records, unknown = await gen.score(
            Job(prompt="abc", max_chars=0, session_id=sid, top=1, score_prompt=True, readonly=True)
        )
        assert await store.load(sid) == saved and unknown == 0
        assert await store.acquire(sid)  # not left locked
        # the same numbers by hand: the session's state, then one step per character
        from serving.sessions import decode_state

        state = decode_state(saved, runtime.state_class, gen.model_tag)
        expected = []
        for ch in "abc":
            i = int(runtime.encode(ch)[0])
            expected.append(log_softmax(state.logits)[i])
            runtime.advance([state], [i])
        assert [r.logprob for r in records] == pytest.approx(expected, abs=1e-6)
        assert all(len(r.top) == 1 for r in records)

    run(runtime, go)


def test_completion_choices_stream_side_by_side_and_are_given_back_when_the_client_leaves(runtime):
    from serving import completions

    async def go(gen, store):
        body = {"prompt": ["a", "b"], "n": 2, "max_tokens": 10**7, "stream": True, "temperature": 0.0}
        run_ = await completions.begin(gen, body, "m")
        assert gen.stepper.active == 4
        chunks = run_.stream()
        first = json.loads((await chunks.__anext__())[len(b"data: ") :])
        assert first["object"] == "text_completion" and first["choices"][0]["finish_reason"] is None
        await chunks.aclose()  # the client went away mid-stream
        assert gen.stepper.active == 0
        never = await completions.begin(gen, body, "m")  # a response never started (service.CompletionStream)
        await never.release()
        assert gen.stepper.active == 0
        with pytest.raises(ClientError) as info:
            await completions.begin(gen, {**body, "model": "gpt-4"}, "m")
        assert (info.value.status, info.value.kind) == (404, "model_not_found")
        with pytest.raises(ClientError) as info:  # the fifth choice finds no slot: the four begun are given back
            await completions.begin(gen, {**body, "prompt": ["a", "b", "c"]}, "m")
        assert (info.value.status, info.value.kind, gen.stepper.active) == (503, "overloaded", 0)

    run(runtime, go)


def test_drain_refuses_new_streams_waits_for_short_ones_and_stops_long_ones_with_their_sessions(runtime):
    async def go(gen, store):
        short = await gen.begin(req(max_chars=50))
        long = await gen.begin(req(max_chars=10**7, keep_session=True))  # never ends by itself
        events = {}

        async def consume(name, ticket):
            events[name] = [json.loads(e[len(b"data: ") :]) async for e in gen.events(ticket)]

        consumers = [asyncio.create_task(consume("short", short)), asyncio.create_task(consume("long", long))]
        drained = asyncio.create_task(gen.drain(limit_s=0.5))
        await asyncio.sleep(0.05)
        with pytest.raises(ClientError) as info:  # from the signal on: no new stream, even a short one
            await gen.begin(req(max_chars=1))
        assert (info.value.status, info.value.kind, info.value.headers()) == (503, "draining", {"Retry-After": "1"})
        assert await drained == 1 and gen.open == 0  # the short one finished by itself, the long one was stopped
        await asyncio.gather(*consumers)
        assert events["short"][-1]["finish_reason"] == "length" and len(text(events["short"])) == 50
        done = events["long"][-1]
        assert (done["finish_reason"], done["session_id"]) == ("stopped", long.kept)
        gen.draining = False  # the same state, read back: it continues exactly after the last character sent
        rest = await run_all(gen, req(prompt="", session_id=long.kept, max_chars=100))
        whole = await run_all(gen, req(max_chars=done["chars"] + 100))
        assert text(events["long"]) + text(rest) == text(whole)

    run(runtime, go)
