"""The response cache alone, over the real pool's scripted model: which requests are kept, under which key, for how
long, within which bounds; what a replay holds; and that only answers read to their normal end are stored."""
from __future__ import annotations

import pytest

from factory.server_config import CacheConfig
from serving.inference.cache import ResponseCache, cache_key
from serving.inference.types import DoneEvent, GenerateRequest, SamplingParams, TokenEvent
from tests.fixtures.scripted_engine import REPLY, scripted_pool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(tmp_path):
    pool, _, _ = scripted_pool(tmp_path)
    await pool.start()
    yield pool
    await pool.stop()


def ask(text: str = "hi", **sampling) -> GenerateRequest:
    return GenerateRequest(messages=[{"role": "user", "content": text}],
                           sampling=SamplingParams(**{"temperature": 0, **sampling}))


async def answer(cache: ResponseCache, handle, request: GenerateRequest, scope: str = "") -> tuple[str | None, str]:
    """(hit | miss | None, the text) of one request read to its end."""
    stream = await cache.stream(handle, request, scope)
    text = "".join([event.text async for event in stream.events() if isinstance(event, TokenEvent)])
    await stream.aclose()
    return getattr(stream, "cache", None), text


def test_only_deterministic_requests_have_a_key_and_every_field_counts():
    assert cache_key("tiny@1", ask(temperature=0.7)) is None
    assert cache_key("tiny@1", GenerateRequest(prompt="x")) is None  # the model's default temperature: not said
    seeded = cache_key("tiny@1", ask(temperature=0.7, seed=1))
    assert seeded is not None and seeded == cache_key("tiny@1", ask(temperature=0.7, seed=1))
    base = cache_key("tiny@1", ask())
    others = [cache_key("tiny@2", ask()), cache_key("tiny@1", ask(), scope="key-a"), cache_key("tiny@1", ask("ho")),
              cache_key("tiny@1", ask(max_tokens=3)), cache_key("tiny@1", ask(stop=["x"])), seeded,
              cache_key("tiny@1", ask(logit_bias={5: 1.0})), cache_key("tiny@1", GenerateRequest(prompt="hi",
                                                                                          sampling=SamplingParams(temperature=0)))]
    assert base is not None and len({base, *others}) == len(others) + 1


async def test_a_hit_replays_the_events_with_their_counts(pool):
    cache = ResponseCache(CacheConfig(enabled=True))
    async with pool.lease("tiny") as handle:
        first = await cache.stream(handle, ask(max_tokens=5))
        events = [event async for event in first.events()]
        await first.aclose()
        again = await cache.stream(handle, ask(max_tokens=5))
        assert (first.cache, again.cache, again.ref, again.prompt_tokens) == ("miss", "hit", "tiny@1",
                                                                             first.prompt_tokens)
        assert [event async for event in again.events()] == events
        assert isinstance(events[-1], DoneEvent) and events[-1].completion_tokens == 5
        assert (cache.hits, cache.misses) == (1, 1)


async def test_scopes_keep_callers_apart(pool):
    cache = ResponseCache(CacheConfig(enabled=True))
    async with pool.lease("tiny") as handle:
        assert await answer(cache, handle, ask(), "key-a") == ("miss", REPLY)
        assert await answer(cache, handle, ask(), "key-b") == ("miss", REPLY)
        assert await answer(cache, handle, ask(), "key-a") == ("hit", REPLY)


async def test_entries_expire_after_their_ttl(pool):
    clock = Clock()
    cache = ResponseCache(CacheConfig(enabled=True, ttl_s=60), clock=clock)
    async with pool.lease("tiny") as handle:
        await answer(cache, handle, ask())
        clock.now += 59
        assert (await answer(cache, handle, ask()))[0] == "hit"
        clock.now += 2
        assert (await answer(cache, handle, ask()))[0] == "miss"
        assert len(cache.entries) == 1  # the expired entry made room for its successor


async def test_the_least_recently_used_go_beyond_max_entries_and_max_mb(pool):
    cache = ResponseCache(CacheConfig(enabled=True, max_entries=2))
    async with pool.lease("tiny") as handle:
        for text in ("a", "b"):
            await answer(cache, handle, ask(text))
        await answer(cache, handle, ask("a"))  # a is now the most recently used
        await answer(cache, handle, ask("c"))  # b goes
        assert [(await answer(cache, handle, ask(text)))[0] for text in ("a", "c", "b")] == ["hit", "hit", "miss"]
        assert len(cache.entries) == 2

        one = next(iter(cache.entries.values())).size
        small = ResponseCache(CacheConfig(enabled=True, max_mb=one * 2.5 / 1e6))  # room for two answers
        for text in ("a", "b", "c"):
            await answer(small, handle, ask(text))
        assert len(small.entries) == 2 and small.size <= small.config.max_mb * 1e6
        assert (await answer(small, handle, ask("a")))[0] == "miss"  # the oldest went
        tiny = ResponseCache(CacheConfig(enabled=True, max_mb=one / 2 / 1e6))  # smaller than one answer
        await answer(tiny, handle, ask())
        assert tiny.entries == {} and tiny.size == 0


async def test_an_answer_left_early_is_not_stored(pool):
    cache = ResponseCache(CacheConfig(enabled=True))
    async with pool.lease("tiny") as handle:
        stream = await cache.stream(handle, ask())
        async for event in stream.events():
            break  # the client left after the first event
        await stream.aclose()
        assert cache.entries == {}
        assert (await answer(cache, handle, ask()))[0] == "miss"
        assert (await answer(cache, handle, ask()))[0] == "hit"


async def test_sampled_requests_pass_through_untouched(pool):
    cache = ResponseCache(CacheConfig(enabled=True))
    async with pool.lease("tiny") as handle:
        assert await answer(cache, handle, ask(temperature=0.5)) == (None, REPLY)
        assert cache.entries == {} and (cache.hits, cache.misses) == (0, 0)
