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
from serving.schemas import GenerateFields as GenerateRequest
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


def req(**kw) -> GenerateRequest:
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
    return GenerateRequest(**{**base, **kw})


async def run_all(gen: Generation, r: GenerateRequest) -> list[dict]:
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
        assert events[-1] == b'data: {"done": true, "chars": 20, "session_id": "' + sid.encode() + b'"}\n\n'
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
        assert last[-1] == {"done": True, "chars": 20}
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
