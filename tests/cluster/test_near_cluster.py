"""The near cache on a Redis Cluster (real processes): one tracked connection per node,
replicas too, so a failover misses no message; a node that fails empties the near cache until
the cluster has dropped it; nothing stale is served afterwards. How long the near cache was off
is printed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

import cachecow
from cachecow import AsyncCacheCow, CacheCow
from cachecow.testing import RedisClusterServers

ROWS = range(1, 41)  # over every master's slots


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


OPTIONS: dict[str, Any] = {"near_bytes": 1 << 20, "prefix": "nc:", "fail_open": True}


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.01)


def retried(call: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except cachecow.CacheCowError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def keep_all(reader: Rows) -> None:
    for row in ROWS:
        key = reader.get_keys("Row", "id", row)[0]
        wait_until(lambda row=row, key=key: reader.get("Row", "id", row) and key in near(reader))


def near(cache: Any) -> Any:
    return cache._near.entries


def test_every_node_is_tracked_and_writes_on_any_reach_the_near_cache(
    redis_cluster_servers: RedisClusterServers,
) -> None:
    ports = redis_cluster_servers.ports
    db = dict.fromkeys(ROWS, 1)
    client = RedisCluster(host="127.0.0.1", port=ports[0])
    client.flushall()
    reader = Rows(client, db, **OPTIONS)
    writer = Rows(RedisCluster(host="127.0.0.1", port=ports[1]), db, prefix="nc:")
    try:
        reader._near.get("")
        tracking = reader._near.tracker
        assert tracking.connected.wait(10)
        assert set(tracking.trackers) == {("127.0.0.1", port) for port in ports}
        keep_all(reader)
        hits = reader.metrics.snapshot().near_hits
        assert [reader.get("Row", "id", row)["version"] for row in ROWS] == [1] * len(ROWS)
        assert reader.metrics.snapshot().near_hits == hits + len(ROWS)
        for row in ROWS:
            db[row] = 2
        writer.invalidate_many("Row", "id", list(ROWS))
        wait_until(lambda: not near(reader))
        assert [reader.get("Row", "id", row)["version"] for row in ROWS] == [2] * len(ROWS)
    finally:
        reader.close()
        client.close()
        writer.redis.close()


@pytest.mark.parametrize("how", ["CLUSTER FAILOVER", "master killed"])
def test_after_a_failover_nothing_stale_is_served(
    own_redis_cluster: RedisClusterServers, how: str
) -> None:
    cluster = own_redis_cluster
    master = cluster.ports[0]
    replica = cluster.replica_ports(master)[0]
    db = dict.fromkeys(ROWS, 1)
    client = cachecow.connect_cluster(f"redis://127.0.0.1:{cluster.ports[1]}", timeout=2.0)
    reader = Rows(client, db, **OPTIONS)
    writer = Rows(
        cachecow.connect_cluster(f"redis://127.0.0.1:{cluster.ports[2]}", timeout=2.0),
        db,
        prefix="nc:",
    )
    try:
        reader._near.get("")
        tracking = reader._near.tracker
        assert tracking.connected.wait(10)
        keep_all(reader)
        if how == "CLUSTER FAILOVER":
            cluster.failover(replica)
        else:
            cluster.server(master).kill()
            cluster.failover(replica, takeover=True)
        for row in ROWS:  # every row written and invalidated after the failover
            db[row] = 2
            retried(lambda row=row: writer.invalidate("Row", "id", row))
        wait_until(tracking.connected.is_set)
        versions = [
            retried(lambda row=row: reader.get("Row", "id", row))["version"] for row in ROWS
        ]
        assert versions == [2] * len(ROWS)
        print(
            f"\n{how}: near cache off {tracking.outages} times, for "
            f"{[round(s, 3) for s in tracking.downtimes]} s"
        )
        if how == "master killed":
            assert ("127.0.0.1", master) not in tracking.trackers  # dropped with the node
    finally:
        reader.close()
        client.close()
        writer.redis.close()


def test_asyncio_client(redis_cluster_servers: RedisClusterServers) -> None:
    ports = redis_cluster_servers.ports
    db = dict.fromkeys(ROWS, 1)
    writer = Rows(RedisCluster(host="127.0.0.1", port=ports[1]), db, prefix="nc:")

    async def body() -> None:
        client = AsyncRedisCluster(host="127.0.0.1", port=ports[0])
        await client.initialize()
        reader = AsyncRows(client, db, **OPTIONS)
        try:
            reader._near.get("")
            assert await asyncio.to_thread(reader._near.tracker.connected.wait, 10)
            for row in ROWS:
                key = reader.get_keys("Row", "id", row)[0]
                for _ in range(3000):
                    await reader.get("Row", "id", row)
                    if key in near(reader):
                        break
                    await asyncio.sleep(0.001)
                assert key in near(reader)
            for row in ROWS:
                db[row] = 3
            await asyncio.to_thread(writer.invalidate_many, "Row", "id", list(ROWS))
            await asyncio.to_thread(wait_until, lambda: not near(reader))
            versions = [(await reader.get("Row", "id", row))["version"] for row in ROWS]
            assert versions == [3] * len(ROWS)
        finally:
            reader.close()
            await client.aclose()

    asyncio.run(body())
    writer.redis.close()
