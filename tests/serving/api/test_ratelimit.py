"""The rate-limit algorithm (token buckets with continuous refill) and both stores that share it across workers:
SQLite under the factory root and a real redis-server. The same cases run against each store, through two store
objects at once (as two gunicorn workers hold two)."""
from __future__ import annotations

import asyncio

import pytest

from serving.api.limit_stores import RedisBuckets, SqliteBuckets, settle
from serving.api.ratelimit import duration

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- the algorithm, with a clock the test holds


def test_requests_refill_continuously():
    saved, limits = {}, {"requests": 3}

    def admit(now: float) -> str | None:
        refused, levels = settle(saved, limits, now)
        saved.update({kind: (level, now) for kind, level in levels.items()})
        return refused

    assert [admit(0.0), admit(0.1), admit(0.2)] == [None, None, None]  # a full minute's burst
    assert admit(0.3) == "requests"
    assert admit(19.0) == "requests"  # 3 per minute: one more every 20 s
    assert admit(20.3) is None and admit(20.4) == "requests"
    assert [admit(500.0) for _ in range(4)] == [None, None, None, "requests"]  # never more than the limit banked


def test_tokens_run_into_debt_and_refill_pays_it_back():
    limits = {"tokens": 60}  # one token per second
    refused, levels = settle({}, limits, 0.0)
    assert refused is None and levels == {"tokens": 60}  # admission does not spend tokens: it needs one
    _, levels = settle({"tokens": (levels["tokens"], 0.0)}, limits, 0.0, debit=75)
    assert levels == {"tokens": -15}
    assert settle({"tokens": (-15, 0.0)}, limits, 15.5)[0] == "tokens"  # 0.5 tokens: the budget is still spent
    assert settle({"tokens": (-15, 0.0)}, limits, 16.0)[0] is None


def test_a_clock_going_back_refills_nothing():
    assert settle({"requests": (0.5, 100.0)}, {"requests": 60}, 90.0) == ("requests", {"requests": 0.5})


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.25, "250ms"), (1, "1s"), (17.5, "17.5s"),
                                           (19.9994, "19.999s"), (60, "1m0s"), (360, "6m0s"), (3725, "1h2m5s")])
def test_openai_duration_format(seconds, text):
    assert duration(seconds) == text


# ---------------------------------------------------------------- both stores


@pytest.fixture(params=["sqlite", "redis"])
async def two_workers(request, tmp_path):
    """Two store objects over the same shared state, as two workers hold them."""
    if request.param == "sqlite":
        stores = [SqliteBuckets(tmp_path / "limits.db") for _ in range(2)]
    else:
        url = request.getfixturevalue("redis_url")
        stores = [RedisBuckets(url) for _ in range(2)]
        await stores[0].client.flushdb()
    yield stores
    for store in stores:
        await store.close()


async def test_a_limit_holds_across_store_objects(two_workers):
    first, second = two_workers
    seen = [await (first if i % 2 else second).admit("ci", 3, None) for i in range(5)]
    assert [a.refused for a in seen] == [None, None, None, "requests", "requests"]
    assert [a.requests.remaining for a in seen] == [2, 1, 0, 0, 0]
    assert seen[0].tokens is None  # no token limit on this key
    assert seen[3].requests.used == 3 and 19 < seen[3].requests.wait_s <= 20
    assert (await first.admit("other", 3, None)).refused is None  # keys have their own buckets


async def test_concurrent_admissions_take_exactly_the_limit(two_workers):
    results = await asyncio.gather(*(store.admit("busy", 5, None) for _ in range(12) for store in two_workers))
    assert sum(a.refused is None for a in results) == 5
    assert sorted(a.requests.remaining for a in results if a.refused is None) == [0, 1, 2, 3, 4]


async def test_a_debit_spends_the_token_budget_for_every_worker(two_workers):
    first, second = two_workers
    admitted = await first.admit("gen", 100, 40)
    assert admitted.refused is None and admitted.tokens.remaining == 40 and admitted.requests.remaining == 99
    await first.debit("gen", 40, 53)
    refused = await second.admit("gen", 100, 40)
    assert refused.refused == "tokens" and refused.tokens.used == 53 and refused.tokens.remaining == 0
    assert refused.requests.remaining == 99  # a refused request takes nothing
    assert 20 < refused.tokens.wait_s < 21  # (1 - (-13)) tokens at 40 per minute


async def test_redis_keys_expire_once_full_again(redis_url):
    store = RedisBuckets(redis_url)
    try:
        await store.admit("brief", 60, 600)
        assert 1 <= await store.client.ttl(RedisBuckets.PREFIX + "brief") <= 2  # one request back in 1 s
        await store.debit("brief", 600, 6000)  # 10 minutes of tokens: the hash lives that long
        assert 590 <= await store.client.ttl(RedisBuckets.PREFIX + "brief") <= 602
        await store.admit("brief", 60, 600)
        assert await store.client.ttl(RedisBuckets.PREFIX + "brief") >= 590  # an admission does not shorten it
    finally:
        await store.close()
