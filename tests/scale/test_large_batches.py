"""Batches of any size: 100,000 lookups in one ``get_many`` and one ``invalidate_many``, sync
and asyncio, and 20,000 leases given back at once (full tier: about 15 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from cachecow import AsyncCacheCow, CacheCow
from cachecow.testing.plugin import CountingRedis

BIG = 100_000  # lookups in one batch: far beyond Lua's ~8,000 values per unpack


class Rows(CacheCow):
    """A row ``{"id": i}`` for every id, fetched in one call (or a database that is down)."""

    many_calls = 0
    down = False

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val}

    def fetch_many(self, cls: Any, id_field: Any, id_vals: Sequence[Any]) -> Mapping[Any, Any]:
        self.many_calls += 1
        if self.down:
            raise RuntimeError("database down")
        return {v: {"id": v} for v in id_vals}


class AsyncRows(AsyncCacheCow):
    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val}

    async def fetch_many(
        self, cls: Any, id_field: Any, id_vals: Sequence[Any]
    ) -> Mapping[Any, Any]:
        return {v: {"id": v} for v in id_vals}


def test_get_many_and_invalidate_many_of_100000_lookups(counting_redis: CountingRedis) -> None:
    """Before chunking, get_or_lease_many.lua failed: "too many results to unpack"."""
    cache = Rows(counting_redis)
    cache.get_many("row", "id", [-1])  # the scripts loaded
    counting_redis.flushall()
    cache.metrics.reset()
    counting_redis.reset_round_trips()
    ids = list(range(BIG))
    rows = cache.get_many("row", "id", ids)  # all misses: lease, fetch_many, commit
    assert rows == [{"id": i} for i in ids]
    assert cache.many_calls == 2
    assert counting_redis.round_trips == 2
    assert counting_redis.dbsize() == BIG  # every value cached, every flag gone
    counting_redis.reset_round_trips()
    assert cache.get_many("row", "id", ids) == rows  # all hits
    assert counting_redis.round_trips == 1
    snap = cache.metrics.snapshot()
    assert (snap.leases, snap.commits, snap.hits, snap.redis_errors) == (BIG, BIG, BIG, 0)
    counting_redis.reset_round_trips()
    cache.invalidate_many("row", "id", ids)
    assert counting_redis.round_trips == 1
    assert counting_redis.dbsize() == 0
    assert cache.metrics.snapshot().invalidations == BIG


def test_failed_fetch_many_releases_20000_leases(redis_client: redis.Redis) -> None:
    """The release of a batch goes through commit_many.lua, which unpacked every flag too."""
    cache = Rows(redis_client)
    cache.down = True
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_many("row", "id", range(20_000))
    assert not any(redis_client.scan_iter(match="*:lease", count=10_000))
    assert cache.metrics.snapshot().redis_errors == 0


def test_async_get_many_of_100000_lookups(redis_client: redis.Redis) -> None:
    """90,000 hits and 10,000 misses (the hits written straight to Redis, to keep it quick):
    the lease, hit and commit paths of the asyncio class, each over 8,000 keys."""
    ids = list(range(BIG))
    port = redis_client.get_connection_kwargs()["port"]

    async def body() -> None:
        client = aredis.Redis(port=port)
        try:
            cache = AsyncRows(client)
            hits = {cache.get_keys("row", "id", i)[0]: b'{"id":%d}' % i for i in ids[10_000:]}
            redis_client.mset(hits)  # no TTL: invalidate_many deletes them below
            assert await cache.get_many("row", "id", ids) == [{"id": i} for i in ids]
            snap = cache.metrics.snapshot()
            assert (snap.hits, snap.leases, snap.commits) == (BIG - 10_000, 10_000, 10_000)
            assert await client.dbsize() == BIG  # the misses cached, their flags gone
            await cache.invalidate_many("row", "id", ids)
            assert await client.dbsize() == 0
        finally:
            await client.aclose()

    asyncio.run(body())
