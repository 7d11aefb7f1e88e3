"""Client identities and quotas without a server: key lists, trusted proxies, the settings that carry them, the
token bucket and stream slots of every quota backend, and the gate's refusals of unread bodies."""

from __future__ import annotations

import asyncio

import pytest

from serving.clients import Directory, KeysError, Limits, load_keys, parse_keys, parse_proxies
from serving.config import ConfigError, Settings
from serving.quotas import MemoryQuotas, Quotas, SqliteQuotas

LIMITS = Limits(rate=10, burst=3, streams=2, sessions=5)


def test_key_lists_with_names_options_comments_and_a_file(tmp_path):
    keys = parse_keys("alice:KEY1, bob:KEY2:rate=50,burst=7 ,carol:K3:streams=1,sessions=9")
    assert keys == {
        "alice": ("KEY1", {}),
        "bob": ("KEY2", {"rate": 50.0, "burst": 7}),
        "carol": ("K3", {"streams": 1, "sessions": 9}),
    }
    f = tmp_path / "keys"
    f.write_text("# team keys\nteam-a:AAA  # the first team\n\nteam-b:BBB:rate=0\n")
    assert load_keys(None, "", str(f)) == {"team-a": ("AAA", {}), "team-b": ("BBB", {"rate": 0.0})}
    # the single key is the client 'default', next to the named ones
    assert load_keys("  solo ", "x:Y", "") == {"default": ("solo", {}), "x": ("Y", {})}


@pytest.mark.parametrize(
    "text, message",
    [
        ("alice:", "RNNTEXT_API_KEYS: the key of 'alice' is empty or whitespace only"),
        ("alice:   ", "RNNTEXT_API_KEYS: the key of 'alice' is empty or whitespace only"),
        ("alice", "RNNTEXT_API_KEYS: entry 1 is not name:key[:option=value,...]"),
        ("a:K1,a:K2", "RNNTEXT_API_KEYS: 'a' is named twice"),
        ("a:K1,b:K1", "RNNTEXT_API_KEYS: 'b' has the same key as another client"),
        ("bad name:K", "RNNTEXT_API_KEYS: entry 1: name 'bad name' must be 1-64 of A-Z a-z 0-9 _ . @ -"),
        ("a:K:speed=3", "RNNTEXT_API_KEYS: 'a': unknown option 'speed' (known: rate, burst, streams, sessions)"),
        ("a:K:rate=fast", "RNNTEXT_API_KEYS: 'a': rate='fast' is not a number"),
        ("a:K:streams=0", "RNNTEXT_API_KEYS: 'a': streams must be positive"),
    ],
)
def test_bad_key_lists_are_refused_without_showing_the_key(text, message):
    with pytest.raises(KeysError) as exc:
        parse_keys(text)
    assert str(exc.value) == message


def test_settings_refuse_a_blank_key_and_never_echo_keys():
    with pytest.raises(ConfigError, match="RNNTEXT_API_KEY is set but empty or whitespace only"):
        Settings.from_env({"RNNTEXT_API_KEY": "   "})
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"RNNTEXT_API_KEYS": "a:SECRET1,b:SECRET1"})
    assert "SECRET1" not in str(exc.value)
    s = Settings.from_env(
        {
            "RNNTEXT_API_KEYS": "a:SECRET1",
            "RNNTEXT_MAX_STREAMS": "64",
            "RNNTEXT_MAX_SESSIONS": "10000",
            "RNNTEXT_MAX_CONNECTIONS": "1000",
        }
    )
    public = s.public()
    assert "SECRET1" not in repr(public) and public["api_key_required"] is True
    # the defaults: a quarter of the streams and connections, a tenth of the sessions, 100 requests/s
    assert (s.client_max_streams, s.client_max_sessions, s.client_max_connections) == (16, 1000, 250)
    assert (s.client_rate, s.client_burst) == (100.0, 200)
    assert Settings.from_env({}).public()["api_key_required"] is False


def test_identity_by_key_and_by_address_behind_trusted_proxies():
    d = Directory(load_keys(None, "alice:KA,bob:KB:rate=1", ""), LIMITS, parse_proxies("10.0.0.0/8, ::1"))
    assert d.by_key(b"KA").name == "alice" and d.by_key(b"KB").limits.rate == 1.0
    assert d.by_key(b"KB").limits.burst == 3 and d.by_key(b"nope") is None and d.by_key(b"") is None
    # untrusted peer: its own address, whatever X-Forwarded-For says
    assert d.address_of("203.0.113.9", b"1.2.3.4") == "203.0.113.9"
    # trusted proxies: the rightmost hop that is not a proxy (a client's forged first hop is ignored)
    assert d.address_of("10.1.1.1", b"6.6.6.6, 198.51.100.7, 10.2.2.2") == "198.51.100.7"
    assert d.address_of("::1", b"198.51.100.8") == "198.51.100.8"
    assert d.address_of("10.1.1.1", None) == "10.1.1.1"
    c = d.by_address("198.51.100.7")
    assert (c.tag, c.label, c.keyed) == ("a:198.51.100.7", "anonymous", False)
    assert (d.by_key(b"KA").tag, d.by_key(b"KA").label) == ("k:alice", "alice")
    assert d.lookup("k:bob").limits.rate == 1.0 and d.lookup("a:198.51.100.7").name == "198.51.100.7"
    with pytest.raises(KeysError, match="'10.0.0.300' is not an address or CIDR"):
        parse_proxies("10.0.0.300")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(params=["memory", "sqlite"])
def backend(request, tmp_path):
    clock = Clock()
    if request.param == "memory":
        return MemoryQuotas(clock=clock), clock
    return SqliteQuotas(tmp_path / "quotas.db", clock=clock), clock


def test_token_bucket_allows_the_burst_then_the_rate(backend):
    q, clock = backend

    async def go():
        # 8 tokens/s: one per 0.125 s (binary fractions, so the sums are exact)
        got = [await q.take("a", 8, 3) for _ in range(4)]
        assert got == [0.0, 0.0, 0.0, 0.125]
        assert await q.take("b", 8, 3) == 0.0  # buckets are per client
        clock.t += 0.0625
        assert await q.take("a", 8, 3) == 0.0625
        clock.t += 0.0625
        assert await q.take("a", 8, 3) == 0.0
        clock.t += 100  # refills to the burst, no more
        assert [await q.take("a", 8, 3) for _ in range(4)] == [0.0, 0.0, 0.0, 0.125]

    asyncio.run(go())


def test_stream_slots_are_counted_per_client_and_lapse_with_their_lease(backend):
    q, clock = backend

    async def go():
        assert await q.open_stream("a", "s1", 2, 30) and await q.open_stream("a", "s2", 2, 30)
        assert not await q.open_stream("a", "s3", 2, 30)
        assert await q.open_stream("b", "s4", 2, 30)  # another client is not affected
        await q.close_stream("a", "s1")
        assert await q.open_stream("a", "s5", 2, 30)
        clock.t += 20
        await q.refresh_stream("a", "s5", 30)  # s2 lapses at 30 s, s5 is renewed
        clock.t += 15
        assert await q.open_stream("a", "s6", 2, 30)  # s2 (killed worker) freed its slot
        assert not await q.open_stream("a", "s7", 2, 30)

    asyncio.run(go())


def test_quotas_fall_back_to_the_worker_when_the_shared_store_fails(tmp_path):
    class Broken:
        kind = "sqlite"

        async def take(self, *a):
            from serving.sessions import StoreUnavailable

            raise StoreUnavailable("down")

        open_stream = refresh_stream = close_stream = take

    async def go():
        q = Quotas(Broken(), lease_s=30)
        assert [await q.take("a", 10, 2) for _ in range(3)][:2] == [0.0, 0.0]
        assert await q.take("a", 0, 2) == 0.0  # rate 0: unlimited, the store is not asked
        assert await q.open_stream("a", "s1", 1) and not await q.open_stream("a", "s2", 1)
        await q.close_stream("a", "s1")  # the shared store's failure is not raised
        assert await q.open_stream("a", "s3", 1)
        assert q.fallbacks == 6

    asyncio.run(go())


def test_the_workers_own_client_cannot_be_named_by_a_key():
    """The warm-up's client is unlimited; a key that happens to be named like it must still get its limits."""
    d = Directory(load_keys(None, "internal:K1", ""), LIMITS)
    assert d.by_key(b"K1").limits == LIMITS and d.lookup("k:internal").limits == LIMITS
    assert d.internal.limits.rate == 0 and d.lookup(d.internal.tag) is d.internal
    with pytest.raises(KeysError, match="name '\\(worker\\)' must be"):
        parse_keys(f"{d.internal.name}:K2")
