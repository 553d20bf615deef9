"""A batch on Redis Cluster is one script call per node, whatever the slots of its lookups.

``get_or_lease_many`` and ``commit_many`` have a *node form* (``cachecow/lua/per_node.lua``,
shebang ``#!lua flags=allow-cross-slot-keys``): one call runs the script over every lookup a
node serves. A lookup the node does not serve now (its slot moved, or is migrating and the
node would answer ASK or TRYAGAIN) is answered NOTHERE, untouched, and goes again alone, in its
slot's call through the cluster client, which follows the move. Servers that refuse node
scripts (before Redis 7) get one call per slot, as before.

The tests here: the node form answers as the scripts do (run side by side on the same data);
the calls each node gets; a slot migrating mid-batch, sync and asyncio; the fallbacks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster
from redis.crc import key_slot

import cachecow
from cachecow._async_redis_io import AsyncRedisIO
from cachecow._client import ScriptCall
from cachecow._ops import Script
from cachecow._redis_io import RedisIO
from cachecow._scripts import node_script_source, script_source
from cachecow.testing import RedisClusterServers
from cachecow.testing.bridge import LoopThread, SyncFacade
from cachecow.testing.flows import Scripted
from cachecow.testing.plugin import require_server
from tests.server.test_contract_dict import AsyncDictCache, DictCache

MODES = ["sync", "asyncio"]
Row = dict[str, Any]


def group_of(id_val: int) -> int:
    """Lookups 0-9 share a hash tag (one slot), 10-19 another, and so on."""
    return id_val // 10


class Grouped:
    """Keys whose hash tag is the lookup's group, so a test can put lookups in one slot."""

    def get_keys(self, cls: Any, id_field: Any, id_val: Any) -> tuple[str, str]:
        value_key = f"nb:{cls}:{id_val}:{{g{group_of(id_val)}}}"
        return value_key, value_key + ":lease"


class GroupedCache(Grouped, DictCache):
    pass


class AsyncGroupedCache(Grouped, AsyncDictCache):
    pass


@pytest.fixture(scope="module")
def servers() -> Iterator[RedisClusterServers]:
    """A cluster of this module's own: its tests move slots between its masters."""
    cluster = require_server(RedisClusterServers())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def admin(servers: RedisClusterServers) -> Iterator[RedisCluster]:
    """A sync client of the cluster, flushed; its stats reset on every primary."""
    client = RedisCluster(host="127.0.0.1", port=servers.ports[0])
    client.flushall()
    client.script_flush()
    for node in client.get_primaries():
        client.get_redis_connection(node).config_resetstat()
    try:
        yield client
    finally:
        client.close()


@contextmanager
def cache_of(
    servers: RedisClusterServers, mode: str, db: dict[int, Row], **options: Any
) -> Iterator[Any]:
    """A :class:`GroupedCache` over a new cluster client, or a blocking facade of an
    :class:`AsyncGroupedCache` whose loop runs in a thread of its own."""
    url = f"redis://127.0.0.1:{servers.ports[0]}"
    if mode == "sync":
        client = cachecow.connect_cluster(url, timeout=2.0)
        try:
            yield GroupedCache(client, db, **options)
        finally:
            client.close()
        return
    loop = LoopThread()

    async def make() -> Any:
        return cachecow.connect_cluster_async(url, timeout=2.0)

    aclient = loop.run(make())
    try:
        yield SyncFacade(AsyncGroupedCache(aclient, db, **options), loop)
    finally:

        async def close() -> None:
            await aclient.aclose()
            await aclient.nodes_manager.aclose()
            await aclient.nodes_manager.aclose("startup_nodes")

        loop.run(close())
        loop.close()


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> list[Script]:
    """Every call a batch sends alone through the cluster client (sync or asyncio)."""
    calls: list[Script] = []
    sync_one, async_one = RedisIO.one, AsyncRedisIO.one

    def spy(self: RedisIO, item: Any) -> Any:
        calls.append(item)
        return sync_one(self, item)

    async def aspy(self: AsyncRedisIO, item: Any) -> Any:
        calls.append(item)
        return await async_one(self, item)

    monkeypatch.setattr(RedisIO, "one", spy)
    monkeypatch.setattr(AsyncRedisIO, "one", aspy)
    return calls


def rows(ids: Any, version: int = 0) -> dict[int, Row]:
    return {i: {"id": i, "payload": f"{i}:{version}"} for i in ids}


def calls(admin: RedisCluster, command: str) -> dict[int, int]:
    """How many times each primary (by port) ran ``command`` since its stats were reset
    (commands run by scripts count too)."""
    out = {}
    for node in admin.get_primaries():
        stats: Any = admin.get_redis_connection(node).info("commandstats")
        out[node.port] = int(stats.get(f"cmdstat_{command}", {"calls": 0})["calls"])
    return out


def since(admin: RedisCluster, command: str, before: dict[int, int]) -> dict[int, int]:
    return {port: n - before[port] for port, n in calls(admin, command).items()}


def owner_port(admin: RedisCluster, key: str) -> int:
    port: int = admin.get_node_from_key(key).port
    return port


# -- the node form answers as the scripts do ---------------------------------------------------


def foreign_and_busy(node: redis.Redis, keys: list[tuple[str, str]]) -> None:
    """Lookup 1 foreign data (a hash) under its value key; 2 a flag without a TTL; 3 another
    reader's lease; 4 a hit; 5 a hit whose bytes the reader found unusable."""
    node.hset(keys[1][0], "a", "b")
    node.set(keys[2][1], "old")
    node.set(keys[3][1], "other", px=60_000)
    node.set(keys[4][0], b"hit")
    node.set(keys[5][0], b"unusable")


def state(node: redis.Redis, keys: list[tuple[str, str]]) -> list[Any]:
    """Each key's type, value (for a string) and whether it has a TTL."""
    out = []
    for pair in keys:
        for key in pair:
            kind = node.type(key)
            value = node.get(key) if kind == b"string" else None
            out.append((kind, value, node.pttl(key) > 0))
    return out


def lease_head(cache: Any, token: str) -> tuple[Any, ...]:
    """The arguments every lookup of a batch's lease call shares (its token, the lease's
    lifetime...), as ``cache`` sends them, with ``token`` for the batch's own."""
    run = Scripted(cache).get_many("item", "id", [1], [[b'{"id":1}']])  # a hit
    (lease,) = run.scripts("get_or_lease_many")
    assert lease.shared is not None
    return (token, *lease.args[1 : lease.shared])


def test_the_node_form_answers_as_the_scripts_do(
    servers: RedisClusterServers, admin: RedisCluster
) -> None:
    """The same lookups, on the same data, through the scripts (one call per lookup) and
    through their node forms (one call): the same replies, the same keys left behind. A
    lookup of another node's slot is answered NOTHERE, and nothing of it is touched."""
    node = admin.get_primaries()[0]
    mine = set(servers.slots_served_by(node.port))
    home = [g for g in range(400) if key_slot(f"{{g{g}}}".encode()) in mine]
    away = next(g for g in range(400) if key_slot(f"{{g{g}}}".encode()) not in mine)
    ids = [10 * g for g in home[:7]]  # seven lookups, seven slots, all served by ``node``
    cache = GroupedCache(admin, {})
    keys = [cache.get_keys("item", "id", i) for i in ids]
    other = cache.get_keys("item", "id", 10 * away)
    direct = redis.Redis(port=node.port)
    token = "t" * 32
    head = lease_head(cache, token)
    discards = ["", "", "", "", "", "unusable", ""]

    def node_call(name: str, head: list[Any], per: list[list[Any]], pairs: list[Any]) -> Any:
        argv: list[Any] = [len(head), len(per[0]) if per else 0, *head]
        for n, pair in enumerate(pairs):
            argv += [*pair, *(per[n] if per else [])]
        return direct.execute_command("EVAL", node_script_source(name), 0, *argv)

    def scripts() -> tuple[list[Any], list[Any], list[Any]]:
        leases = [
            direct.eval(script_source("get_or_lease_many"), 2, *pair, *head, discard)[0]
            for pair, discard in zip(keys, discards, strict=True)
        ]
        commits = []
        for n, pair in enumerate(keys):
            ttl = 0 if n == 6 else 60_000  # the last one only gives its lease back
            reply = direct.eval(script_source("commit_many"), 2, *pair, token, f"v{n}", ttl)
            commits.append(reply[0] - 48)
        return leases, commits, state(direct, keys)

    def node_forms() -> tuple[list[Any], list[Any], list[Any]]:
        pairs = [*keys[:3], other, *keys[3:]]  # another node's lookup among them
        per = [[d] for d in [*discards[:3], "", *discards[3:]]]
        leases = node_call("get_or_lease_many", list(head), per, pairs)
        assert isinstance(leases.pop(3), redis.ResponseError)
        per = [[f"v{n}", 0 if n == 6 else 60_000] for n in range(7)]
        per.insert(3, ["x", 60_000])
        commits = node_call("commit_many", [token], per, pairs)
        assert str(commits.pop(3)).startswith("NOTHERE ")
        return leases, commits, state(direct, keys)

    foreign_and_busy(direct, keys)
    expected = scripts()
    assert expected[0] == [1, 2, 3, 0, b"hit", 1, 1]  # the test covers every answer
    assert expected[1] == [1, 1, 0, 0, 0, 1, 1]
    admin.flushall()
    foreign_and_busy(direct, keys)
    assert node_forms() == expected
    assert admin.exists(*other) == 0  # the other node's lookup: nothing done


def test_a_failing_batch_script_fails_only_the_lookups_it_ran(
    servers: RedisClusterServers, admin: RedisCluster
) -> None:
    """A batch script that raises (a TTL that is no number) makes every lookup the node ran
    answer its error, not the whole call: the caller sends them again, alone."""
    node = admin.get_primaries()[0]
    mine = set(servers.slots_served_by(node.port))
    home = [g for g in range(400) if key_slot(f"{{g{g}}}".encode()) in mine][:2]
    pairs = [(f"k{{g{g}}}", f"k{{g{g}}}:lease") for g in home]
    direct = redis.Redis(port=node.port)
    for _value_key, flag_key in pairs:
        direct.set(flag_key, "t")
    argv = [1, 2, "t", *pairs[0], "v", "not a number", *pairs[1], "v", 1000]
    replies = direct.execute_command("EVAL", node_script_source("commit_many"), 0, *argv)
    assert [type(reply) for reply in replies] == [redis.ResponseError] * 2
    assert "not an integer" in str(replies[0])


# -- the calls each node gets --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_is_one_script_call_per_node(
    servers: RedisClusterServers, admin: RedisCluster, alone: list[Script], mode: str
) -> None:
    ids = [i * 10 for i in range(100)]  # a hundred slots, on every node
    db = rows(ids)
    with cache_of(servers, mode, db) as cache:
        ports = {owner_port(admin, cache.get_keys("item", "id", i)[0]) for i in ids}
        assert ports == {node.port for node in admin.get_primaries()}
        before = calls(admin, "evalsha")
        evals = calls(admin, "eval")
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        # first calls: each node answered NOSCRIPT, then ran the node form sent by EVAL
        assert since(admin, "eval", evals) == dict.fromkeys(ports, 2)  # lease, commit
        assert since(admin, "evalsha", before) == dict.fromkeys(ports, 2)
        before = calls(admin, "evalsha")
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        assert since(admin, "evalsha", before) == dict.fromkeys(ports, 1)  # hits
        cache.invalidate_many("item", "id", ids)
        before = calls(admin, "evalsha")
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        assert since(admin, "evalsha", before) == dict.fromkeys(ports, 2)  # lease, commit
        assert since(admin, "eval", evals) == dict.fromkeys(ports, 2)  # loaded by then
        assert alone == []
        counts = cache.metrics.snapshot()
        assert (counts.hits, counts.commits, counts.redis_errors) == (100, 200, 0)


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_on_one_slot_is_the_scripts_own_call(
    servers: RedisClusterServers, admin: RedisCluster, mode: str
) -> None:
    """A batch whose lookups share a slot needs no node form: the script's own call, through
    the cluster client, which loads it on every primary at its NOSCRIPT."""
    ids = list(range(10))  # one group: one slot
    db = rows(ids)
    with cache_of(servers, mode, db) as cache:
        before = calls(admin, "evalsha")
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        port = owner_port(admin, cache.get_keys("item", "id", 0)[0])
        sent = since(admin, "evalsha", before)
        assert sent[port] == 2 + 2  # lease (NOSCRIPT, again), commit (NOSCRIPT, again)
        assert sum(sent.values()) == sent[port]
        assert sum(calls(admin, "eval").values()) == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_script_a_node_lacks_is_sent_again_by_eval_there(
    servers: RedisClusterServers, admin: RedisCluster, alone: list[Script], mode: str
) -> None:
    """After a failover or a SCRIPT FLUSH, a node answers NOSCRIPT: the call is sent again by
    EVAL on that node, which loads the script there. Here one node has one lookup (the
    script's own call) and the others several (the node form): no call goes alone, and no
    SCRIPT LOAD reaches the other nodes (one of them may be the stalled one)."""
    keys = GroupedCache(admin, {})
    owners = {i: owner_port(admin, keys.get_keys("item", "id", i)[0]) for i in range(0, 900, 10)}
    ids = [0, *[i for i, port in owners.items() if port != owners[0]][:40]]
    db = rows(ids)
    with cache_of(servers, mode, db) as cache:
        loads = calls(admin, "script|load")
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        assert set(calls(admin, "eval").values()) == {2}  # lease and commit, on every node
        assert since(admin, "script|load", loads) == dict.fromkeys(loads, 0)
        assert alone == []
        before = calls(admin, "evalsha")
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        assert since(admin, "evalsha", before) == dict.fromkeys(before, 1)  # loaded: hits
        assert cache.metrics.snapshot().redis_errors == 0


@pytest.mark.parametrize("mode", MODES)
def test_servers_that_refuse_node_scripts_get_a_call_per_slot(
    servers: RedisClusterServers, admin: RedisCluster, alone: list[Script], mode: str
) -> None:
    """Before Redis 7 a server cannot compile a shebang line; a server may not know the
    flag. The batch goes on per slot, and so do the next ones (learnt once per cache)."""
    ids = [i * 10 for i in range(30)]
    db = rows(ids)
    refusals = [  # what Redis 7 says of an unknown flag; what Redis 6 says of any shebang
        "#!lua flags=allow-cross-slot-keys,no-such-flag\nreturn 1",
        "#!lua flags=allow-cross-slot-keys\nreturn (",
    ]
    for refused in refusals:
        admin.flushall()
        with cache_of(servers, mode, db) as cache:
            io = cache._io
            assert io.node_scripts is not None
            io.node_scripts = {name: ScriptCall(name, refused) for name in io.node_scripts}
            alone.clear()
            assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
            assert io.node_scripts is None
            slots = {key_slot(cache.get_keys("item", "id", i)[0].encode()) for i in ids}
            assert {key_slot(item.keys[0].encode()) for item in alone} == slots  # each alone
            alone.clear()
            before = calls(admin, "evalsha")
            cache.invalidate_many("item", "id", ids)
            assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
            assert sum(since(admin, "evalsha", before).values()) == 2 * len(slots)
            assert alone == []  # per slot, in each node's pipeline
            assert cache.metrics.snapshot().redis_errors == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_node_call_that_fails_as_a_whole_sends_its_lookups_alone(
    servers: RedisClusterServers, admin: RedisCluster, alone: list[Script], mode: str
) -> None:
    """A node form that fails as a whole (here: OOM, as a server out of memory refuses a
    script that may write) makes each of its lookups go in its slot's call, alone; the
    server is not taken for one that refuses node scripts."""
    ids = [i * 10 for i in range(30)]
    db = rows(ids)
    failing = "#!lua flags=allow-cross-slot-keys\nreturn redis.error_reply('OOM simulated')"
    with cache_of(servers, mode, db) as cache:
        io = cache._io
        io.node_scripts = {name: ScriptCall(name, failing) for name in io.node_scripts}
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        slots = {key_slot(cache.get_keys("item", "id", i)[0].encode()) for i in ids}
        assert len(alone) == 2 * len(slots)  # lease, commit
        assert io.node_scripts is not None
        assert cache.metrics.snapshot().redis_errors == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_slot_the_map_lacks_is_a_redis_failure(
    servers: RedisClusterServers, admin: RedisCluster, mode: str
) -> None:
    """A slot the client's map has no node for fails the batch as a Redis failure (as the
    cluster client's own routing does): ``fail_open`` serves it from the database."""
    ids = [i * 10 for i in range(30)]
    db = rows(ids)
    with cache_of(servers, mode, db, fail_open=True) as cache:
        assert cache.get_many("item", "id", ids[:1]) == [db[0]]  # the client knows the map
        slot = key_slot(cache.get_keys("item", "id", 0)[0].encode())
        slots_cache = cache.redis.nodes_manager.slots_cache
        owners = slots_cache.pop(slot)
        try:
            assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        finally:
            slots_cache[slot] = owners
        counts = cache.metrics.snapshot()
        assert (counts.redis_errors, counts.fail_open_fetches) == (1, len(ids))


# -- a slot migrating mid-batch ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_slot_migrating_mid_batch(
    servers: RedisClusterServers, admin: RedisCluster, alone: list[Script], mode: str
) -> None:
    """Group 0's slot moves to another master while a batch runs. Midway (some keys moved,
    some not), the old owner's node call runs the lookups whose two keys it still holds (3-5:
    a cached value and another reader's lease) and answers NOTHERE for the others, where a
    call declaring their keys would get ASK (0-2, moved; 6-9, misses) or TRYAGAIN: those go
    alone, through the cluster client, which retries and follows the move once it is done.
    Every answer is right, and the commits land on the new owner."""
    moving = list(range(10))  # group 0: one slot
    steady = [i * 10 for i in range(1, 40)]  # other slots, on every node
    ids = moving + steady
    db = rows(ids)
    with cache_of(servers, mode, db) as cache:
        value_key = cache.get_keys("item", "id", 0)[0]
        slot = key_slot(value_key.encode())
        source = owner_port(admin, value_key)
        target = next(n.port for n in admin.get_primaries() if n.port != source)
        cached = moving[:6] + steady  # 6-9 are misses
        assert cache.get_many("item", "id", cached) == [db[i] for i in cached]
        with redis.Redis(port=source) as src:
            for i in moving[3:6]:  # both keys here: another reader's lease besides the value
                src.set(cache.get_keys("item", "id", i)[1], "another reader", px=60_000)
        alone.clear()
        answers: list[Any] = []

        def batch() -> None:
            answers.append(cache.get_many("item", "id", ids))

        def midway() -> None:
            with redis.Redis(port=source) as src:
                keys = [cache.get_keys("item", "id", i)[0] for i in moving[:3]]
                src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            reader.start()
            # once the node calls met the half-moved slot and its lookups went alone, the move
            # goes on: those calls retry (TRYAGAIN) until it is done, for about 0.4 s at most
            deadline = time.monotonic() + 5
            while not alone and time.monotonic() < deadline:
                time.sleep(0.001)

        reader = threading.Thread(target=batch)
        try:
            servers.migrate_slot(slot, target, midway=midway)
            reader.join(10)
            assert answers == [[db[i] for i in ids]]
            sent = {k for item in alone for k in item.keys[::2]}
            assert sent == {cache.get_keys("item", "id", i)[0] for i in [0, 1, 2, 6, 7, 8, 9]}
            assert {key_slot(item.keys[0].encode()) for item in alone} == {slot}
            with redis.Redis(port=target) as node:
                assert all(node.get(cache.get_keys("item", "id", i)[0]) for i in moving[6:])
            alone.clear()
            assert cache.get_many("item", "id", ids) == [db[i] for i in ids]  # after the move
            assert alone == []
            counts = cache.metrics.snapshot()
            assert (counts.leases, counts.commits, counts.redis_errors) == (49, 49, 0)
        finally:
            reader.join(10)
            servers.migrate_slot(slot, source)


@pytest.mark.parametrize("mode", MODES)
def test_a_map_that_missed_a_move(
    servers: RedisClusterServers, admin: RedisCluster, alone: list[Script], mode: str
) -> None:
    """A slot moved after the client read the map: the old owner's node call answers
    NOTHERE for its lookups (a call declaring them would get MOVED); they go alone, the
    cluster client follows the MOVED and mends its map, and the next batch goes straight."""
    moving = list(range(10))
    steady = [i * 10 for i in range(1, 30)]
    ids = moving + steady
    db = rows(ids)
    with cache_of(servers, mode, db) as cache:
        assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
        value_key = cache.get_keys("item", "id", 0)[0]
        slot = key_slot(value_key.encode())
        source = owner_port(admin, value_key)
        target = next(n.port for n in admin.get_primaries() if n.port != source)
        servers.migrate_slot(slot, target)
        try:
            alone.clear()
            assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
            assert len(alone) == 1  # the moved slot's lookups, in one call
            assert alone[0].keys[::2] == tuple(cache.get_keys("item", "id", i)[0] for i in moving)
            alone.clear()
            assert cache.get_many("item", "id", ids) == [db[i] for i in ids]
            assert alone == []
            assert cache.metrics.snapshot().redis_errors == 0
        finally:
            servers.migrate_slot(slot, source)


def test_a_batch_of_the_asyncio_class_that_spans_nodes_is_concurrent(
    servers: RedisClusterServers, admin: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio class sends each node's call at once (gathered), not one after another."""
    from redis.asyncio.cluster import ClusterNode

    ids = [i * 10 for i in range(60)]
    db = rows(ids)
    in_flight: list[int] = [0, 0]  # now, most
    real = ClusterNode.execute_pipeline

    async def spy(node: ClusterNode, commands: list[Any]) -> Any:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            await asyncio.sleep(0.01)
            return await real(node, commands)
        finally:
            in_flight[0] -= 1

    async def scenario() -> list[Any]:
        client = aredis.RedisCluster(host="127.0.0.1", port=servers.ports[0])
        try:
            cache = AsyncGroupedCache(client, db)
            monkeypatch.setattr(ClusterNode, "execute_pipeline", spy)
            return await cache.get_many("item", "id", ids)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [db[i] for i in ids]
    assert in_flight[1] == 3
