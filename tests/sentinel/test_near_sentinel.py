"""The near cache on a Sentinel-managed Redis (a master, a replica, three Sentinels, real
processes): its invalidation channel follows the master through a failover, and nothing stale is
served once it is back. How long the near cache was off is printed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

import cachecow
from cachecow import AsyncCacheCow, CacheCow
from cachecow.testing import RedisSentinelGroup

ROWS = range(1, 6)


class Rows(CacheCow):
    def __init__(self, client: Any, db: dict[int, int], **options: Any) -> None:
        super().__init__(client, **options)
        self.db = db

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val, "version": self.db[id_val]}


class AsyncRows(AsyncCacheCow):
    def __init__(self, client: Any, db: dict[int, int], **options: Any) -> None:
        super().__init__(client, **options)
        self.db = db

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val, "version": self.db[id_val]}


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.01)


def retried(call: Any, timeout: float = 30.0) -> Any:
    """``call()``, again until it succeeds (a write during a failover)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (cachecow.CacheCowError, redis.RedisError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_the_near_cache_follows_the_master_through_a_failover(
    own_redis_sentinel_group: RedisSentinelGroup, mode: str
) -> None:
    group = own_redis_sentinel_group
    db = dict.fromkeys(ROWS, 1)
    options: dict[str, Any] = {"near_bytes": 1 << 20, "fail_open": True, "prefix": "ns:"}
    writer = Rows(
        cachecow.connect_sentinel(group.sentinel_addresses, group.service_name, timeout=2.0),
        db,
        wait_replicas=1,
        wait_replicas_timeout=1.0,
        prefix="ns:",
    )

    def failover_and_write(reader: Any) -> None:
        near = reader._near
        tracker = near.tracker
        old = group.master_port()
        group.failover()
        for row in ROWS:  # written on the new master, invalidated there
            db[row] = 2
            retried(lambda row=row: writer.invalidate("Row", "id", row))
        wait_until(lambda: tracker.outages >= 1 and tracker.connected.is_set())
        connection = tracker.connection
        assert connection is not None
        assert connection.port != old  # the channel follows the master
        print(f"\n{mode}: near cache off for {[round(s, 3) for s in tracker.downtimes]} s")

    if mode == "sync":
        client = cachecow.connect_sentinel(
            group.sentinel_addresses, group.service_name, timeout=2.0
        )
        reader = Rows(client, db, **options)
        try:
            for row in ROWS:
                key = reader.get_keys("Row", "id", row)[0]
                wait_until(
                    lambda row=row, key=key: (
                        reader.get("Row", "id", row) and key in reader._near.entries
                    )
                )
            failover_and_write(reader)
            assert [reader.get("Row", "id", row)["version"] for row in ROWS] == [2] * 5
        finally:
            reader.close()
            client.close()
    else:

        async def body() -> None:
            client = cachecow.connect_sentinel_async(
                group.sentinel_addresses, group.service_name, timeout=2.0
            )
            reader = AsyncRows(client, db, **options)
            try:
                for row in ROWS:
                    key = reader.get_keys("Row", "id", row)[0]
                    for _ in range(3000):
                        await reader.get("Row", "id", row)
                        if key in reader._near.entries:
                            break
                        await asyncio.sleep(0.001)
                    assert key in reader._near.entries
                await asyncio.to_thread(failover_and_write, reader)
                versions = [(await reader.get("Row", "id", row))["version"] for row in ROWS]
                assert versions == [2] * 5
            finally:
                reader.close()
                await client.aclose()

        asyncio.run(body())
    writer.redis.close()
