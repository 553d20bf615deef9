"""Batches of the asyncio cache on a real Redis Cluster (3 masters): one pipeline per node, the
nodes concurrently; a batch script is one call per node (its node form, whatever the slots of
its lookups). A lookup whose reply is an error, and every lookup of a node whose pipeline fails
as a whole, goes again alone (one call per slot) through the cluster client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from cachecow import AsyncCacheCow, CacheUnavailable
from cachecow._async_redis_io import AsyncRedisIO
from cachecow._scripts import SCRIPT_NAMES, script_source
from cachecow.testing import RedisClusterServers
from tests.server.test_contract_dict import AsyncDictCache

T = TypeVar("T")

Row = dict[str, Any]


@pytest.fixture
def cluster(redis_cluster_servers: RedisClusterServers) -> Iterator[Any]:
    """A sync client of the cluster, flushed, every protocol script loaded on every primary (so
    no reply is NOSCRIPT unless a test flushes them)."""
    client = RedisCluster(host="127.0.0.1", port=redis_cluster_servers.ports[0])
    client.flushall()
    for node in client.get_primaries():
        for name in SCRIPT_NAMES:
            client.get_redis_connection(node).script_load(script_source(name))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def alone_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every item a batch sends alone through the cluster client (not in a node pipeline)."""
    calls: list[Any] = []
    real = AsyncRedisIO.one

    async def spy(self: AsyncRedisIO, item: Any) -> Any:
        calls.append(item)
        return await real(self, item)

    monkeypatch.setattr(AsyncRedisIO, "one", spy)
    return calls


def rows(ids: range, version: int = 0) -> dict[int, Row]:
    return {i: {"id": i, "payload": f"{i}:{version}"} for i in ids}


def run(cluster: Any, db: dict[int, Row], scenario: Callable[[AsyncDictCache], Awaitable[T]]) -> T:
    """Run ``scenario`` on a cache over a fresh ``redis.asyncio`` cluster client."""
    node = cluster.get_primaries()[0]

    async def main() -> T:
        client = aredis.RedisCluster(host=node.host, port=node.port)
        try:
            return await scenario(AsyncDictCache(client, db))
        finally:
            await client.aclose()
            # aclose() does nothing while the client is due to refresh its map (as after a
            # connection error): close every node's connections regardless
            await client.nodes_manager.aclose()
            await client.nodes_manager.aclose("startup_nodes")

    return asyncio.run(main())


def payloads(objs: list[Any]) -> list[str | None]:
    return [None if obj is None else obj["payload"] for obj in objs]


def value_key(cache: AsyncCacheCow, id_val: int) -> str:
    return cache.get_keys("item", "id", id_val)[0]


def owner(cache: AsyncCacheCow, id_val: int) -> str:
    """The name of the node that owns lookup ``id_val``'s slot, as the cache's client sees it."""
    client: Any = cache.redis
    name: str = client.get_node_from_key(value_key(cache, id_val)).name
    return name


def commandstats(cluster: Any) -> dict[str, dict[str, int]]:
    """Calls per command, per primary."""
    out: dict[str, dict[str, int]] = {}
    for node in cluster.get_primaries():
        stats = cluster.get_redis_connection(node).info("commandstats")
        out[node.name] = {name: int(value["calls"]) for name, value in stats.items()}
    return out


def sent(cluster: Any, before: dict[str, dict[str, int]], command: str) -> dict[str, int]:
    """Per primary, how many times ``command`` ran since ``before`` (commands a script runs
    count too: only the ones no script runs tell what the client sent)."""
    stat = f"cmdstat_{command}"
    return {
        name: after.get(stat, 0) - before.get(name, {}).get(stat, 0)
        for name, after in commandstats(cluster).items()
    }


class NodeGate:
    """A spy on ``ClusterNode.execute_pipeline`` that holds each node pipeline until
    ``width`` pipelines are in flight at once (or a generous guard runs out, which it
    records): so a batch whose nodes were sent one after another is seen, without timing."""

    def __init__(self, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.width = width
        self.calls: list[tuple[str, int]] = []  # (node name, commands) per pipeline
        self.gates: list[asyncio.Event] = []
        self.held_alone = 0  # pipelines released by the guard, not by their siblings
        self.in_flight = 0
        self.most_in_flight = 0
        real = ClusterNode.execute_pipeline

        async def spy(node: ClusterNode, commands: list[PipelineCommand]) -> bool:
            index = len(self.calls)
            self.calls.append((node.name, len(commands)))
            if index // width >= len(self.gates):
                self.gates.append(asyncio.Event())
            gate = self.gates[index // width]
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if index % width == width - 1:
                gate.set()  # the last pipeline of this round is in flight: release them all
            try:
                await asyncio.wait_for(gate.wait(), 10.0)
            except asyncio.TimeoutError:
                self.held_alone += 1
            try:
                return await real(node, commands)
            finally:
                self.in_flight -= 1

        monkeypatch.setattr(ClusterNode, "execute_pipeline", spy)


def test_get_many_sends_one_pipeline_per_node_per_phase_concurrently(
    cluster: Any, monkeypatch: pytest.MonkeyPatch, alone_calls: list[Any]
) -> None:
    ids = range(100)
    primaries = {node.name for node in cluster.get_primaries()}
    assert len(primaries) == 3

    async def scenario(cache: AsyncDictCache) -> None:
        await cache.get_many("item", "id", list(range(1000, 1060)))  # a connection per node
        keys = [value_key(cache, i) for i in ids]
        slots = {key_slot(key.encode()) for key in keys}
        assert {owner(cache, i) for i in ids} == primaries  # the batch really spans the three nodes
        alone_calls.clear()
        gate = NodeGate(3, monkeypatch)
        before = commandstats(cluster)

        objs = await cache.get_many("item", "id", list(ids))

        assert payloads(objs) == [f"{i}:0" for i in ids]
        # two phases (lease, commit), each one pipeline per node, all three in flight at once
        assert len(gate.calls) == 6
        assert {name for name, _ in gate.calls[:3]} == primaries
        assert {name for name, _ in gate.calls[3:]} == primaries
        assert [n for _, n in gate.calls] == [1] * 6  # one script call per node, many slots
        assert len(slots) > 50
        assert gate.held_alone == 0
        assert gate.most_in_flight == 3
        assert alone_calls == []
        # on each node: one call per phase (lease, commit), whatever the slots of its lookups
        assert sent(cluster, before, "evalsha") == dict.fromkeys(primaries, 2)
        # EXISTS per lookup: its check in each phase, and the lease script's own for a miss
        owned = {name: sum(owner(cache, i) == name for i in ids) for name in primaries}
        assert sent(cluster, before, "exists") == {name: 3 * k for name, k in owned.items()}
        assert set(sent(cluster, before, "script|load").values()) == {0}

        gate.calls.clear()
        before = commandstats(cluster)
        assert payloads(await cache.get_many("item", "id", list(ids))) == [f"{i}:0" for i in ids]
        assert len(gate.calls) == 3  # hits: one phase
        assert sent(cluster, before, "evalsha") == dict.fromkeys(primaries, 1)

        gate.calls.clear()
        await cache.invalidate_many("item", "id", list(ids))
        assert len(gate.calls) == 3
        assert {name for name, _ in gate.calls} == primaries
        assert all(cluster.get(key) is None for key in keys)
        assert gate.held_alone == 0
        assert alone_calls == []
        assert cache.metrics.snapshot().redis_errors == 0

    run(cluster, rows(ids), scenario)


def test_batch_on_one_node_is_one_pipeline(
    cluster: Any, monkeypatch: pytest.MonkeyPatch, alone_calls: list[Any]
) -> None:
    async def scenario(cache: AsyncDictCache) -> None:
        await cache.get_many("item", "id", list(range(1000, 1060)))
        name = owner(cache, 0)
        same = [i for i in range(200) if owner(cache, i) == name][:5]
        assert len({key_slot(value_key(cache, i).encode()) for i in same}) > 1  # a Pipeline
        alone_calls.clear()
        gate = NodeGate(1, monkeypatch)
        assert payloads(await cache.get_many("item", "id", same)) == [f"{i}:0" for i in same]
        assert [n for n, _ in gate.calls] == [name, name]  # lease, commit
        assert alone_calls == []

    run(cluster, rows(range(200)), scenario)


@pytest.mark.slow
def test_many_concurrent_batches_stay_correct(cluster: Any, alone_calls: list[Any]) -> None:
    """32 tasks, each 20 rounds of get_many and invalidate_many over 200 keys on one client;
    each task also writes its own keys, so every result is checked against what it must be."""
    tasks, rounds, n = 32, 20, 200
    db = rows(range(n))
    missing = list(range(n, n + 10))

    async def scenario(cache: AsyncDictCache) -> None:
        await cache.get_many("item", "id", list(range(1000, 1060)))  # a connection per node
        alone_calls.clear()

        async def worker(task: int) -> int:
            rng = random.Random(task)
            own = [i for i in range(n) if i % tasks == task]
            checked = 0
            for version in range(1, rounds + 1):
                for i in own:  # a write, then its invalidation
                    db[i] = {"id": i, "payload": f"{i}:{task}:{version}"}
                await cache.invalidate_many("item", "id", own)
                ids = list(range(n)) + missing
                rng.shuffle(ids)
                objs = await cache.get_many("item", "id", ids)
                assert len(objs) == len(ids)
                for id_val, obj in zip(ids, objs, strict=True):
                    if id_val >= n:
                        assert obj is None
                    elif id_val in own:  # read your own write, never an older value
                        assert obj["payload"] == f"{id_val}:{task}:{version}"
                    else:  # another task's key: its row, whatever version
                        assert obj["id"] == id_val
                        assert obj["payload"].startswith(f"{id_val}:")
                    checked += 1
                await cache.invalidate_many("item", "id", rng.sample(range(n), 40))
            return checked

        done = await asyncio.gather(*(worker(t) for t in range(tasks)))
        assert sum(done) == tasks * rounds * (n + len(missing))
        assert cache.metrics.snapshot().redis_errors == 0
        assert alone_calls == []  # no reply was an error, no node pipeline failed

    run(cluster, db, scenario)


def failing_node(
    monkeypatch: pytest.MonkeyPatch, victim: str, *, after_replies: bool = False, times: int = 1
) -> list[int]:
    """Make ``victim``'s next ``times`` node pipelines raise ConnectionError as a whole: before
    anything is sent, or (``after_replies``) once every reply has been read. The list returned
    counts the pipelines that failed."""
    failed: list[int] = []
    real = ClusterNode.execute_pipeline

    async def flaky(node: ClusterNode, commands: list[PipelineCommand]) -> bool:
        if node.name != victim or len(failed) >= times:
            return await real(node, commands)
        failed.append(len(commands))
        if after_replies:
            await real(node, commands)
        raise RedisConnectionError("Connection closed by server.")

    monkeypatch.setattr(ClusterNode, "execute_pipeline", flaky)
    return failed


def test_a_node_pipeline_that_fails_falls_back_to_its_items_alone(
    cluster: Any, monkeypatch: pytest.MonkeyPatch, alone_calls: list[Any]
) -> None:
    ids = list(range(100))

    async def scenario(cache: AsyncDictCache) -> None:
        await cache.get_many("item", "id", list(range(1000, 1060)))
        alone_calls.clear()
        victim = owner(cache, 0)
        failed = failing_node(monkeypatch, victim)

        assert payloads(await cache.get_many("item", "id", ids)) == [f"{i}:0" for i in ids]

        assert failed == [1]  # the lease phase's pipeline to the victim (one call) failed ...
        victims = [i for i in ids if owner(cache, i) == victim]
        slots = {key_slot(value_key(cache, i).encode()) for i in victims}
        assert len(alone_calls) == len(slots)  # ... and only its lookups went alone, per slot
        assert {item.name for item in alone_calls} == {"get_or_lease_many"}
        assert all(item.shared is None for item in alone_calls)  # the script's own calls
        assert {k for item in alone_calls for k in item.keys[::2]} == {
            value_key(cache, i) for i in victims
        }
        # every value was committed, the victim's too: the next batch is all hits
        assert all(cluster.get(value_key(cache, i)) is not None for i in ids)
        probe_before = cache.metrics.snapshot().misses
        assert payloads(await cache.get_many("item", "id", ids)) == [f"{i}:0" for i in ids]
        assert cache.metrics.snapshot().misses == probe_before
        assert cache.metrics.snapshot().redis_errors == 0

    run(cluster, rows(range(100)), scenario)


def test_replies_read_before_a_node_pipeline_fails_are_kept(
    cluster: Any, monkeypatch: pytest.MonkeyPatch, alone_calls: list[Any]
) -> None:
    """A pipeline that raises after its replies were read (say, closing its connection): the
    replies stand, nothing is sent twice."""
    ids = list(range(100))

    async def scenario(cache: AsyncDictCache) -> None:
        await cache.get_many("item", "id", list(range(1000, 1060)))
        alone_calls.clear()
        victim = owner(cache, 0)
        failed = failing_node(monkeypatch, victim, after_replies=True, times=2)
        before = commandstats(cluster)
        assert payloads(await cache.get_many("item", "id", ids)) == [f"{i}:0" for i in ids]
        assert len(failed) == 2  # lease and commit phases both "failed" after reading
        assert alone_calls == []
        assert sent(cluster, before, "evalsha")[victim] == 2  # each sent once

    run(cluster, rows(range(100)), scenario)


def test_a_node_that_keeps_failing_raises_to_the_caller(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = list(range(100))

    async def scenario(cache: AsyncDictCache) -> None:
        await cache.get_many("item", "id", list(range(1000, 1060)))
        victim = owner(cache, 0)
        failing_node(monkeypatch, victim, times=10**6)
        real = ClusterNode.execute_command

        async def dead(node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
            if node.name == victim and args[0] == "EVALSHA":
                raise RedisConnectionError("Connection refused.")
            return await real(node, *args, **kwargs)

        monkeypatch.setattr(ClusterNode, "execute_command", dead)
        with pytest.raises(CacheUnavailable) as caught:
            await cache.get_many("item", "id", ids)
        assert isinstance(caught.value.__cause__, RedisConnectionError)
        assert cache.metrics.snapshot().redis_errors == 1

    run(cluster, rows(range(100)), scenario)


def test_error_replies_are_sent_again_alone(
    cluster: Any, monkeypatch: pytest.MonkeyPatch, alone_calls: list[Any]
) -> None:
    """NOSCRIPT after SCRIPT FLUSH, and MOVED from a stale map of the cluster: those items go
    alone through the cluster client, which loads the scripts and follows the move."""
    ids = list(range(60))

    async def scenario(cache: AsyncDictCache) -> None:
        await cache.get_many("item", "id", ids)
        await cache.invalidate_many("item", "id", ids)
        cluster.script_flush()
        alone_calls.clear()
        before = commandstats(cluster)
        assert payloads(await cache.get_many("item", "id", ids)) == [f"{i}:0" for i in ids]
        # the node scripts' calls were answered NOSCRIPT, and sent again by EVAL (which loads
        # them) on each node, in each phase: nothing went alone
        assert set(sent(cluster, before, "eval").values()) == {2}
        assert alone_calls == []
        before = commandstats(cluster)
        assert payloads(await cache.get_many("item", "id", ids)) == [f"{i}:0" for i in ids]
        assert set(sent(cluster, before, "eval").values()) == {0}
        assert alone_calls == []
        # a batch on one slot is the script's own call, through the cluster client, which
        # loads it on every primary at its NOSCRIPT
        assert await cache.get_many("item", "id", [0]) == [{"id": 0, "payload": "0:0"}]

        # a stale map: the client believes key 7's slot lives on another node (as after a
        # resharding); that node answers MOVED, the item goes alone and the client follows
        client: Any = cache.redis
        await cache.invalidate_many("item", "id", ids)
        key = value_key(cache, 7)
        slot = key_slot(key.encode())
        owner = client.get_node_from_key(key)
        other = next(node for node in client.get_primaries() if node.name != owner.name)
        client.nodes_manager.slots_cache[slot] = [other]
        alone_calls.clear()
        assert payloads(await cache.get_many("item", "id", ids)) == [f"{i}:0" for i in ids]
        # the node the stale map named answered NOTHERE for that lookup alone, which went
        # alone through the cluster client (MOVED); the commit found the map mended
        assert len(alone_calls) == 1
        assert alone_calls[0].keys == cache.get_keys("item", "id", 7)
        assert client.get_node_from_key(key).name == owner.name  # the map was mended
        assert cluster.get(key) is not None
        assert cache.metrics.snapshot().redis_errors == 0

    run(cluster, rows(range(60)), scenario)
