"""The contract suite on a real Redis Cluster (3 masters started from redis-server): every race,
herd and promise, sync and async, with keys spread over many slots and nodes.

On a cluster a batch is one script call per node (whatever the slots of its lookups), the nodes
in parallel: the contract's round-trip tests (which count one standalone client's requests) are
replaced here by per-node command counts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection
from redis.crc import key_slot
from redis.retry import Retry

import cachecow
from cachecow import AsyncCacheCow, CacheCow, CacheUnavailable, InvalidationFailed
from cachecow.testing import RedisClusterServers, free_port
from cachecow.testing.bridge import LoopThread, SyncFacade
from cachecow.testing.contract import AsyncCacheCowContract, CacheCowContract, FetchProbe
from cachecow.testing.plugin import require_server
from tests.server import test_contract_dict
from tests.support.forking import passes_in_a_forked_child


@pytest.fixture
def cluster(redis_cluster_servers: RedisClusterServers) -> Any:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster_servers.ports[0])
    client.flushall()
    try:
        yield client
    finally:
        client.close()


def commandstats(cluster: Any) -> dict[str, int]:
    """Calls per command, summed over the cluster's primaries."""
    totals: dict[str, int] = {}
    for node in cluster.get_primaries():
        stats = cluster.get_redis_connection(node).info("commandstats")
        for name, value in stats.items():
            totals[name] = totals.get(name, 0) + int(value["calls"])
    return totals


def delta(cluster: Any, before: dict[str, int]) -> dict[str, int]:
    after = commandstats(cluster)
    out = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    out.pop("cmdstat_info", None)
    return out


def evalshas(cluster: Any) -> dict[str, int]:
    """EVALSHA calls so far, per primary."""
    return {
        node.name: int(
            cluster.get_redis_connection(node).info("commandstats")["cmdstat_evalsha"]["calls"]
        )
        for node in cluster.get_primaries()
    }


def evalshas_since(cluster: Any, before: dict[str, int]) -> dict[str, int]:
    return {name: calls - before[name] for name, calls in evalshas(cluster).items()}


class ClusterCounts:
    """The round-trip tests of the contract, as command counts on a cluster."""

    def test_round_trips(self) -> None:  # type: ignore[override]
        self.write(1, "v1")
        cache: Any = self.cache()
        self.write(2, "v2")
        self.get(cache, 2)  # load the scripts into the node of key 2 (maybe not key 1's)
        before = commandstats(self.redis)
        self.get(cache, 1)
        assert delta(self.redis, before)["cmdstat_evalsha"] == 2  # miss: lease, commit
        before = commandstats(self.redis)
        self.get(cache, 1)
        assert delta(self.redis, before) == {"cmdstat_evalsha": 1, "cmdstat_get": 1}  # hit
        before = commandstats(self.redis)
        self.invalidate(cache, 1)
        assert delta(self.redis, before) == {"cmdstat_del": 1}

    def test_get_many_round_trips(self) -> None:  # type: ignore[override]
        keys = list(range(1, 101))
        for key in keys:
            self.write(key, f"v{key}")
        cache: Any = self.cache()
        slots = {key_slot(self.keys(cache, k)[0].encode()) for k in keys}
        assert len(slots) > 50  # the batch really spans many slots (and the three nodes)
        self.get_many(cache, list(range(1001, 1041)))  # load the scripts on every node
        before = evalshas(self.redis)
        assert self.get_many(cache, keys) == [f"v{k}" for k in keys]
        # one script call per node and phase (lease, commit), whatever the slots
        assert evalshas_since(self.redis, before) == dict.fromkeys(before, 2)
        before = evalshas(self.redis)
        assert self.get_many(cache, keys) == [f"v{k}" for k in keys]
        assert evalshas_since(self.redis, before) == dict.fromkeys(before, 1)  # hits
        # where the servers refuse node scripts (before Redis 7): one call per slot, per phase
        cache.invalidate_many(self.model, self.field, [self.lookup(k) for k in keys])
        cache._io.node_scripts = None
        before = commandstats(self.redis)
        assert self.get_many(cache, keys) == [f"v{k}" for k in keys]
        assert delta(self.redis, before)["cmdstat_evalsha"] == 2 * len(slots)
        before = commandstats(self.redis)
        assert self.get_many(cache, keys) == [f"v{k}" for k in keys]
        assert delta(self.redis, before)["cmdstat_evalsha"] == len(slots)
        before = commandstats(self.redis)
        cache.invalidate_many(self.model, self.field, [self.lookup(k) for k in keys])
        assert delta(self.redis, before)["cmdstat_del"] == len(slots)
        assert all(self.cached_payload(cache, k) is None for k in keys)

    def test_invalidate_lookups(self) -> None:  # type: ignore[override]
        for key in (1, 2):
            self.write(key, f"v{key}")
        cache: Any = self.cache()
        self.get_many(cache, [1, 2])
        cache.invalidate_lookups([(self.model, self.field, self.lookup(k)) for k in (1, 2)])
        assert self.cached_payload(cache, 1) is None
        assert self.cached_payload(cache, 2) is None


class TestClusterContract(ClusterCounts, test_contract_dict.DictDatabase, CacheCowContract):
    @pytest.fixture(autouse=True)
    def _contract_redis(self, cluster: Any) -> Any:  # type: ignore[override]
        self.redis = cluster
        return

    def make_cache(self, redis: redis.Redis, **options: Any) -> CacheCow:
        return test_contract_dict.DictCache(self.redis, self.db, **options)


class TestAsyncClusterContract(
    ClusterCounts, test_contract_dict.DictDatabase, AsyncCacheCowContract
):
    @pytest.fixture(autouse=True)
    def _contract_redis(self, cluster: Any) -> Any:  # type: ignore[override]
        self.redis = cluster
        return

    def make_cache(self, redis: redis.Redis, **options: Any) -> Any:
        nodes = self.redis.get_primaries()

        async def build() -> AsyncCacheCow:
            client = aredis.RedisCluster(host=nodes[0].host, port=nodes[0].port)
            self._async_clients.append(client)
            return test_contract_dict.AsyncDictCache(client, self.db, **options)

        return SyncFacade(self._runner.run(build()), self._runner)


def test_script_flush_on_every_node_recovers(cluster: Any) -> None:
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(60)}
    cache = test_contract_dict.DictCache(cluster, db)
    probe = FetchProbe(cache)
    ids = list(range(60))
    cache.get_many("item", "id", ids)
    cluster.script_flush()
    assert [r["payload"] for r in cache.get_many("item", "id", ids)] == [f"p{i}" for i in ids]
    assert cache.get("item", "id", 7)["payload"] == "p7"
    assert probe.many_calls == 1  # after the flush, hits again: the scripts were reloaded
    assert cache.metrics.snapshot().redis_errors == 0


def test_a_node_failing_a_whole_batch_falls_back_to_the_cluster_client(cluster: Any) -> None:
    """When a node's pipeline fails as a whole (a dead node, a failover), its items go through
    the cluster client one by one, which refreshes its map of the cluster and retries."""
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(40)}
    cache = test_contract_dict.DictCache(cluster, db)
    ids = list(range(40))
    cache.get_many("item", "id", ids)  # cached; scripts loaded everywhere
    real = cluster.get_redis_connection
    broken: list[str] = []

    def dead_once(node: Any) -> Any:
        if not broken:  # the first node asked for gets a client of a closed port
            broken.append(node.name)
            return redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
        return real(node)

    cluster.get_redis_connection = dead_once
    try:
        assert [r["payload"] for r in cache.get_many("item", "id", ids)] == [f"p{i}" for i in ids]
    finally:
        cluster.get_redis_connection = real
    assert broken
    assert cache.metrics.snapshot().redis_errors == 0


@contextmanager
def held_pipelines(
    cluster: Any, before: Callable[[], None], *, node: str | None = None
) -> Iterator[None]:
    """Every per-node pipeline the cache sends (to ``node`` only, if named) calls ``before``
    just before it is executed."""
    real = cluster.get_redis_connection

    class Held:
        def __init__(self, client: redis.Redis) -> None:
            self.client = client

        def pipeline(self, **options: Any) -> Any:
            pipe = self.client.pipeline(**options)
            execute = pipe.execute

            def held(**kwargs: Any) -> Any:
                before()
                return execute(**kwargs)

            pipe.execute = held  # type: ignore[method-assign]
            return pipe

    def connection(target: Any) -> Any:
        return Held(real(target)) if node in (None, target.name) else real(target)

    cluster.get_redis_connection = connection
    try:
        yield
    finally:
        cluster.get_redis_connection = real


@contextmanager
def connection_events(before_read: Callable[[Any], None] | None = None) -> Iterator[list[Any]]:
    """Every command sent and every reply read on a connection, as ``("send" or "read",
    port)``, in order; ``before_read(connection)`` runs before each read."""
    events: list[Any] = []
    send, read = AbstractConnection.send_packed_command, AbstractConnection.read_response

    def spy_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append(("send", self.port))
        return send(self, *args, **kwargs)

    def spy_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if before_read is not None:
            before_read(self)
        events.append(("read", self.port))
        return read(self, *args, **kwargs)

    AbstractConnection.send_packed_command = spy_send  # type: ignore[method-assign]
    AbstractConnection.read_response = spy_read  # type: ignore[method-assign]
    try:
        yield events
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        AbstractConnection.read_response = read  # type: ignore[method-assign]


def test_a_batch_reaches_its_nodes_in_parallel(cluster: Any) -> None:
    """The sync class sends a batch's call to each node before it reads any reply, so the
    nodes work at once, with no thread to hand over to. An invalidation's pipelines go to the
    nodes at once too, from worker threads: each is held at a barrier until all three are in
    flight (sent one node after another, the first would wait alone and the barrier would
    break: ``BrokenBarrierError`` out of the call)."""
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(60)}
    cache = test_contract_dict.DictCache(cluster, db)
    ids = list(range(60))
    owners = {cluster.get_node_from_key(cache.get_keys("item", "id", i)[0]).port for i in ids}
    assert len(owners) == 3
    cache.get_many("item", "id", list(range(1000, 1060)))  # load the scripts on every node
    with connection_events() as events:
        misses = cache.get_many("item", "id", ids)  # two phases: lease, commit
        phases = [events[:6], events[6:]]
        events.clear()
        hits = cache.get_many("item", "id", ids)  # one phase
        phases.append(list(events))
    for phase in phases:  # each phase: a call sent to each node, then each reply read
        assert [event for event, _port in phase] == ["send"] * 3 + ["read"] * 3
        assert {port for _event, port in phase[:3]} == owners
    assert [r["payload"] for r in misses] == [f"p{i}" for i in ids]
    assert hits == misses
    barrier = threading.Barrier(3, timeout=5)
    held: list[str] = []

    def wait_for_all() -> None:
        held.append(threading.current_thread().name)
        barrier.wait()

    with held_pipelines(cluster, wait_for_all):
        cache.invalidate_many("item", "id", ids)
        assert len(held) == 3
    assert all(cache.peek("item", "id", i) is None for i in ids)
    # one node's pipeline ran in the caller's thread, the other two in the pool
    assert held.count(threading.current_thread().name) == 1
    assert cache.metrics.snapshot().redis_errors == 0


def ids_by_owner(cluster: Any, cache: Any, count: int = 200) -> dict[str, list[int]]:
    """Lookup ids 0..count-1 grouped by the name of the node that owns their value key."""
    owners: dict[str, list[int]] = {}
    for i in range(count):
        node = cluster.get_node_from_key(cache.get_keys("item", "id", i)[0])
        owners.setdefault(node.name, []).append(i)
    return owners


def test_a_stalled_node_does_not_hold_up_batches_on_other_nodes(cluster: Any) -> None:
    """Twelve batches each wait on node C (their reads of C's replies are held at a gate, as if
    C were stalled); a batch on nodes A and B alone must not wait behind them. With a fixed
    pool of 8 threads running the nodes' calls, C's calls would fill it and the batch's call
    to B would queue. Invalidations on A and B must not wait either."""
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(200)}
    cache = test_contract_dict.DictCache(cluster, db)
    a, b, c = sorted(ids_by_owner(cluster, cache).values(), key=lambda ids: ids[0])[:3]
    cache.get_many("item", "id", list(range(200)))  # scripts loaded, values cached
    gate = threading.Event()
    held = threading.Semaphore(0)
    stalled = cluster.get_node_from_key(cache.get_keys("item", "id", c[0])[0]).port

    def stall(connection: Any) -> None:
        if connection.port == stalled and not gate.is_set():
            held.release()
            assert gate.wait(10)

    answers: list[Any] = []

    def batch(reader: Any) -> None:
        answers.append(reader.get_many("item", "id", [a[0], c[0]]))

    # Twelve cache instances: batches of one instance would share one read (single flight).
    readers = [test_contract_dict.DictCache(cluster, db) for _ in range(12)]
    waiting = [threading.Thread(target=batch, args=(reader,)) for reader in readers]
    with connection_events(stall):
        try:
            for caller in waiting:
                caller.start()
            for _ in range(12):
                assert held.acquire(timeout=5)  # twelve reads of C are held
            healthy: list[Any] = []

            def other() -> None:
                healthy.append(cache.get_many("item", "id", [a[1], b[0]]))
                cache.invalidate_many("item", "id", [a[2], b[1]])
                healthy.append("invalidated")

            elsewhere = threading.Thread(target=other)
            elsewhere.start()
            elsewhere.join(5)
            assert healthy == [[db[a[1]], db[b[0]]], "invalidated"], "waited behind node C"
        finally:
            gate.set()
            for caller in waiting:
                caller.join(10)
    assert answers == [[db[a[0]], db[c[0]]]] * 12


def test_batches_in_a_forked_child(cluster: Any) -> None:
    """A process that ran batches forks (a preloading web server, a prefork worker pool): the
    child's batches over several nodes answer, and its invalidations land (the parent's
    worker threads do not exist in the child)."""
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(60)}
    cache = test_contract_dict.DictCache(cluster, db)
    ids = list(range(60))
    cache.get_many("item", "id", ids)  # workers started, now idle

    def check() -> bool:
        hits = cache.get_many("item", "id", ids)
        cache.invalidate_many("item", "id", ids)
        gone = all(cache.peek("item", "id", i) is None for i in ids)
        return hits == [db[i] for i in ids] and gone

    assert passes_in_a_forked_child(check, timeout=15)
    assert all(cache.peek("item", "id", i) is None for i in ids)  # the child's invalidations


def test_wait_replicas_on_a_cluster(own_redis_cluster: RedisClusterServers) -> None:
    """Each node touched by an invalidation gets its DELs and a WAIT on one connection; a node
    whose replica does not answer makes the invalidation raise."""
    client = cachecow.connect_cluster(
        f"redis://127.0.0.1:{own_redis_cluster.ports[0]}", timeout=3.0
    )
    cache = test_contract_dict.DictCache(
        client, {i: {"id": i} for i in range(30)}, wait_replicas=1, wait_replicas_timeout=1.0
    )
    ids = list(range(30))
    cache.get_many("item", "id", ids)
    primaries = {node.port: node for node in client.get_primaries()}
    owners = {client.get_node_from_key(cache.get_keys("item", "id", i)[0]).port for i in ids}
    assert len(owners) == 3

    def waits() -> dict[int, int]:
        stats = {
            p: client.get_redis_connection(n).info("commandstats") for p, n in primaries.items()
        }
        return {p: int(s.get("cmdstat_wait", {"calls": 0})["calls"]) for p, s in stats.items()}

    before = waits()
    cache.invalidate_many("item", "id", ids)
    after = waits()
    assert {p: after[p] - before[p] for p in primaries} == dict.fromkeys(primaries, 1)
    assert client.exists(*(k for i in ids for k in cache.get_keys("item", "id", i))) == 0

    replica = own_redis_cluster.server(
        own_redis_cluster.replica_ports(own_redis_cluster.ports[0])[0]
    )
    # Cached again, so the DELs below delete something: a DEL of absent keys writes nothing,
    # replicates nothing, and WAIT then has nothing to wait for (it may answer at once).
    cache.get_many("item", "id", ids)
    replica.pause()
    try:
        with pytest.raises(InvalidationFailed, match="replicas"):
            cache.invalidate_many("item", "id", ids)
    finally:
        replica.resume()
    cache.get_many("item", "id", ids)
    cache.invalidate_many("item", "id", ids)  # the replica is back: acknowledged again


def test_async_wait_replicas_on_a_cluster(own_redis_cluster: RedisClusterServers) -> None:
    """The asyncio class: one WAIT per node touched, and a silent replica makes it raise."""
    port = own_redis_cluster.ports[0]
    db = {i: {"id": i} for i in range(30)}
    ids = list(range(30))

    async def scenario() -> dict[int, int]:
        client = cachecow.connect_cluster_async(f"redis://127.0.0.1:{port}", timeout=3.0)
        cache = test_contract_dict.AsyncDictCache(
            client, db, wait_replicas=1, wait_replicas_timeout=1.0
        )
        try:
            await cache.get_many("item", "id", ids)
            sync = RedisCluster(host="127.0.0.1", port=port)
            before = {
                n.port: sync.get_redis_connection(n).info("commandstats")
                for n in sync.get_primaries()
            }
            await cache.invalidate_many("item", "id", ids)
            after = {
                n.port: sync.get_redis_connection(n).info("commandstats")
                for n in sync.get_primaries()
            }
            waits = {
                p: int(after[p].get("cmdstat_wait", {"calls": 0})["calls"])
                - int(before[p].get("cmdstat_wait", {"calls": 0})["calls"])
                for p in after
            }
            assert sync.exists(*(k for i in ids for k in cache.get_keys("item", "id", i))) == 0
            sync.close()
            replica = own_redis_cluster.server(own_redis_cluster.replica_ports(port)[0])
            await cache.get_many("item", "id", ids)  # so the DELs delete (and replicate) something
            replica.pause()
            try:
                with pytest.raises(InvalidationFailed, match="replicas"):
                    await cache.invalidate_many("item", "id", ids)
            finally:
                replica.resume()
            await cache.get_many("item", "id", ids)
            await cache.invalidate_many("item", "id", ids)
            return waits
        finally:
            await client.aclose()

    waits = asyncio.run(scenario())
    assert sorted(waits.values()) == [1, 1, 1]


@pytest.fixture
def patient_cluster() -> Iterator[RedisClusterServers]:
    """A private cluster of 3 masters whose nodes mark a silent master failed only after 15 s,
    so a test can pause one (under load, for up to about 1 s here) without the cluster going
    down; with the fixtures' usual 1 s it went down mid-test under load."""
    cluster = require_server(RedisClusterServers(node_timeout_ms=15000))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_a_batch_failing_on_one_node_gives_back_the_leases_it_won(
    patient_cluster: RedisClusterServers, mode: str
) -> None:
    """One master is paused (SIGSTOP) while a batch of misses spans all three: the call to it
    times out (and again through the cluster client), the other two grant their leases. With
    ``fail_open`` the batch is served from the database, and the leases won on the two nodes
    that answered are given back at once: left behind, they would keep those keys uncached,
    and make every reader of them wait, until they expired (10 s by default)."""
    url = f"redis://127.0.0.1:{patient_cluster.ports[0]}"
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(60)}
    ids = list(range(60))
    paused = patient_cluster.ports[0]

    def check(cache: Any) -> list[str]:
        """The flag keys left on the nodes that answered."""
        owners = {i: cache.get_keys("item", "id", i) for i in ids}
        left = []
        for port in patient_cluster.ports[1:]:
            with redis.Redis(port=port) as node:
                for _value_key, flag_key in owners.values():
                    if key_slot(flag_key.encode()) in patient_cluster.slots_served_by(port):
                        left += [flag_key] if node.exists(flag_key) else []
        return left

    if mode == "sync":
        client = cachecow.connect_cluster(url, timeout=0.25)
        cache: Any = test_contract_dict.DictCache(client, db, fail_open=True)
        cache.get_many("item", "id", list(range(1000, 1060)))  # scripts loaded on every node
        patient_cluster.server(paused).pause()
        try:
            answers = cache.get_many("item", "id", ids)
        finally:
            patient_cluster.server(paused).resume()
        client.close()
    else:

        async def scenario() -> tuple[Any, Any]:
            client = cachecow.connect_cluster_async(url, timeout=0.25)
            cache = test_contract_dict.AsyncDictCache(client, db, fail_open=True)
            await cache.get_many("item", "id", list(range(1000, 1060)))
            patient_cluster.server(paused).pause()
            try:
                answers = await cache.get_many("item", "id", ids)
            finally:
                patient_cluster.server(paused).resume()
                await client.aclose()
            return cache, answers

        cache, answers = asyncio.run(scenario())
    assert answers == [db[i] for i in ids]
    counts = cache.metrics.snapshot()
    assert counts.redis_errors >= 1
    assert counts.fail_open_fetches == len(ids)
    assert check(cache) == []


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_a_script_flushed_again_right_after_its_reload_still_runs_on_a_cluster(
    cluster: Any, mode: str
) -> None:
    """As on one server (tests/server/test_failures.py): a SCRIPT FLUSH on every node, forced
    between the reload on every primary and the second call, no longer fails the call."""
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(3)}
    nodes = cluster.get_primaries()

    def wrap(cache: Any, flush: Callable[[], Any]) -> None:
        real = cache._io.execute

        def execute(*args: Any, **options: Any) -> Any:
            result = real(*args, **options)
            if args[:2] == ("SCRIPT", "LOAD"):
                flush()
            return result

        async def aexecute(*args: Any, **options: Any) -> Any:
            result = await real(*args, **options)
            if args[:2] == ("SCRIPT", "LOAD"):
                flush()
            return result

        cache._io.execute = execute if mode == "sync" else aexecute

    if mode == "sync":
        cache: Any = test_contract_dict.DictCache(cluster, db)
        wrap(cache, cluster.script_flush)
        cluster.script_flush()
        got = [cache.get("item", "id", 1) for _ in range(2)]
        snapshot = cache.metrics.snapshot()
    else:

        async def body() -> Any:
            client = aredis.RedisCluster(host=nodes[0].host, port=nodes[0].port)
            try:
                cache = test_contract_dict.AsyncDictCache(client, db)
                wrap(cache, cluster.script_flush)
                cluster.script_flush()
                got = [await cache.get("item", "id", 1) for _ in range(2)]
                return got, cache.metrics.snapshot()
            finally:
                await client.aclose()

        got, snapshot = asyncio.run(body())
    assert got == [db[1], db[1]]
    assert (snapshot.redis_errors, snapshot.fetches, snapshot.hits) == (0, 1, 1)


def test_a_cluster_that_is_all_down_is_a_redis_failure() -> None:
    """Every node of the cluster is gone. redis-py's cluster clients then raise
    ``RedisClusterException`` ("Redis Cluster cannot be connected"), which is no
    ``RedisError``: it went past ``fail_open`` to the caller, and an invalidation raised it
    instead of ``InvalidationFailed`` (found by a helper). It is a Redis failure now, sync
    and asyncio, and before the first call as after it."""
    cluster = require_server(RedisClusterServers())
    url = f"redis://127.0.0.1:{cluster.ports[0]}"
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(3)}
    try:
        sync_client = cachecow.connect_cluster(url, timeout=0.3)
        loop = LoopThread()

        async def make() -> Any:
            return cachecow.connect_cluster_async(url, timeout=0.3)

        async_client = loop.run(make())
        caches: dict[str, Any] = {
            "sync": test_contract_dict.DictCache(sync_client, db, fail_open=True),
            "sync, strict": test_contract_dict.DictCache(sync_client, db),
            "asyncio": SyncFacade(
                test_contract_dict.AsyncDictCache(async_client, db, fail_open=True), loop
            ),
            "asyncio, strict": SyncFacade(
                test_contract_dict.AsyncDictCache(async_client, db), loop
            ),
        }
        for cache in caches.values():
            assert cache.get("item", "id", 1) == db[1]  # the clients know the cluster
        cluster.stop()
        for name, cache in caches.items():
            if "strict" in name:
                with pytest.raises(CacheUnavailable):
                    cache.get("item", "id", 2)
            else:
                assert cache.get("item", "id", 2) == db[2], name  # served by fetch
                assert cache.get_many("item", "id", [0, 2]) == [db[0], db[2]], name
            with pytest.raises(InvalidationFailed):
                cache.invalidate("item", "id", 1)
        sync_client.close()
        loop.run(async_client.aclose())
        loop.close()
    finally:
        cluster.stop()


def test_invalidate_model_reaches_every_primary(cluster: Any) -> None:
    """A model's entries spread over every primary's slots; each primary is scanned."""
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(200)}
    cache = test_contract_dict.DictCache(cluster, db)
    cache.scan_count = 50
    cache.get_many("row", "id", list(range(200)))
    cache.get_many("other", "id", list(range(20)))
    owners = {cluster.get_node_from_key(cache.get_keys("row", "id", i)[0]).name for i in range(200)}
    assert len(owners) == len(cluster.get_primaries())  # the test spans every primary
    assert cache.invalidate_model("row", settle=False) == 200
    assert not any(cluster.exists(cache.get_keys("row", "id", i)[0]) for i in range(200))
    assert all(cluster.exists(cache.get_keys("other", "id", i)[0]) for i in range(20))


def test_async_invalidate_model_reaches_every_primary(cluster: Any) -> None:
    db = {i: {"id": i, "payload": f"p{i}"} for i in range(100)}

    async def run() -> int:
        client = cachecow.connect_cluster_async(
            f"redis://127.0.0.1:{cluster.get_default_node().port}"
        )
        cache = test_contract_dict.AsyncDictCache(client, db)
        await cache.get_many("row", "id", list(range(100)))
        deleted = await cache.invalidate_model("row", settle=False)
        await client.aclose()
        return deleted

    assert asyncio.run(run()) == 100
    assert cluster.keys("*row*") == []
