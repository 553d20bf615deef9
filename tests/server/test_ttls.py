"""TTLs per call (``get(..., ttl=)``, ``get_many(..., ttl=)``) and per model (``ttls``), on a
real Redis: the value key's ``PTTL`` is what was asked for, the jitter only shortens it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from cachecow import ConfigurationError
from cachecow.testing.plugin import async_twin
from tests.server.test_contract_dict import AsyncDictCache, DictCache


class User:
    """A model class: ``ttls`` may be keyed by the class or by its label."""


def rows() -> dict[int, dict[str, Any]]:
    return {i: {"id": i, "payload": f"p{i}"} for i in range(1, 6)}


def pttl(client: redis.Redis, cache: Any, model: Any, key: int) -> int:
    return int(client.pttl(cache.get_keys(model, "id", key)[0]))


def test_a_call_ttl_sets_the_value_ttl(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows(), ttl=3600, ttl_jitter=0.1)
    cache.get("row", "id", 1, ttl=5)
    cache.get("row", "id", 2)
    assert 4500 - 50 <= pttl(redis_client, cache, "row", 1) <= 5000
    assert pttl(redis_client, cache, "row", 2) > 3000_000


def test_a_call_ttl_sets_each_value_ttl_of_a_batch(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows(), ttl_jitter=0.0)
    assert [row["id"] for row in cache.get_many("row", "id", [1, 2, 3], ttl=7)] == [1, 2, 3]
    for key in (1, 2, 3):
        assert 7000 - 100 <= pttl(redis_client, cache, "row", key) <= 7000


def test_model_ttls_by_label_and_by_class(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows(), ttl_jitter=0.0, ttls={"row": 9, User: 11})
    cache.get("row", "id", 1)
    cache.get(User, "id", 2)
    cache.get("other", "id", 3)  # no TTL of its own: the cache's
    assert 9000 - 100 <= pttl(redis_client, cache, "row", 1) <= 9000
    assert 11000 - 100 <= pttl(redis_client, cache, User, 2) <= 11000
    assert pttl(redis_client, cache, "other", 3) > 3000_000


def test_a_call_ttl_wins_over_the_model_ttl(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows(), ttl_jitter=0.0, ttls={"row": 9})
    cache.get("row", "id", 1, ttl=3)
    cache.get_many("row", "id", [2], ttl=4)
    assert 3000 - 100 <= pttl(redis_client, cache, "row", 1) <= 3000
    assert 4000 - 100 <= pttl(redis_client, cache, "row", 2) <= 4000


def test_tombstones_keep_their_own_ttl(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows(), tombstone_ttl=2, ttls={"row": 100})
    with pytest.raises(Exception, match="no "):
        cache.get("row", "id", 99, ttl=50)
    assert 1900 <= pttl(redis_client, cache, "row", 99) <= 2000


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "5", True])
def test_a_bad_call_ttl_is_refused_even_on_a_hit(redis_client: redis.Redis, ttl: Any) -> None:
    cache = DictCache(redis_client, rows())
    cache.get("row", "id", 1)  # cached: the next get would not reach a commit
    with pytest.raises(ConfigurationError, match="ttl"):
        cache.get("row", "id", 1, ttl=ttl)
    with pytest.raises(ConfigurationError, match="ttl"):
        cache.get_many("row", "id", [1], ttl=ttl)


@pytest.mark.parametrize(
    ("ttls", "match"),
    [
        ({"row": 0}, r"ttls\['row'\]"),
        ({"row": "9"}, r"ttls\['row'\]"),
        ({"": 9}, "empty"),
        ({3: 9}, "class or a string label"),
        ([("row", 9)], "map models to seconds"),
    ],
)
def test_bad_model_ttls_are_refused_at_construction(ttls: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        DictCache(None, rows(), ttls=ttls)  # type: ignore[arg-type]


def test_the_async_class_takes_the_same_ttls(redis_client: redis.Redis) -> None:
    async def run() -> AsyncDictCache:
        cache = AsyncDictCache(async_twin(redis_client), rows(), ttl_jitter=0.0, ttls={"row": 9})
        await cache.get("row", "id", 1)
        await cache.get("row", "id", 2, ttl=3)
        await cache.get_many("row", "id", [3], ttl=4)
        await cache.redis.aclose()
        return cache

    cache = asyncio.run(run())
    assert 9000 - 100 <= pttl(redis_client, cache, "row", 1) <= 9000
    assert 3000 - 100 <= pttl(redis_client, cache, "row", 2) <= 3000
    assert 4000 - 100 <= pttl(redis_client, cache, "row", 3) <= 4000
