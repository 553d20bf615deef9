"""Resharding: a Redis Cluster grows by one master and slots move to it under the cache.

A master that joins serves no slot yet, so it is not in ``CLUSTER SLOTS``, from which
redis-py's clients map the cluster. While a slot migrates, its old owner answers ``ASK``
(naming the new master) for the keys it no longer holds, and redis-py 8.1 then fails with an
``AttributeError`` on ``None`` (redis/redis-py#4015), which is no ``RedisError``: neither
``fail_open`` nor ``InvalidationFailed`` would see it. ``cachecow/_cluster.py`` mends it; the
first test forces that moment, sync and asyncio, and fails without the mending.

The others show the protocol across a move: a lease moves with its slot (its flag key keeps
its token and TTL), so a commit after the move lands, unless an invalidation on the new master
came first, and scripts are loaded on the new master at its first ``NOSCRIPT``. The fault-suite
scenario moves every slot the workload uses to the new master while readers and writers run.

One cluster serves the module (adding a master takes seconds); after each test every slot goes
back to a first master and the new master's scripts are flushed, so each test starts with a
master that serves no slot, has no scripts, and that no new client knows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterError

import cachecow
from cachecow import CacheUnavailable, InvalidationFailed
from cachecow.testing import RedisClusterServers
from cachecow.testing.bridge import SyncFacade
from cachecow.testing.contract import FetchProbe
from cachecow.testing.plugin import require_server
from tests.support.faults import (
    KEYS,
    REPORTS,
    Report,
    Table,
    Workload,
    cache_over,
    stale_after_recovery,
)

TIMEOUT = 0.25  # the clients' socket timeout, as in the fault suite
MODES = ["sync", "asyncio"]


@dataclass
class Grown:
    cluster: RedisClusterServers
    new: int  # the port of the master that joined last

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.cluster.ports[0]}"

    def raw(self) -> RedisCluster:
        """A fresh sync client, to read keys wherever they live now."""
        return RedisCluster(host="127.0.0.1", port=self.cluster.ports[0])


@pytest.fixture(scope="module")
def grown_cluster() -> Iterator[Grown]:
    cluster = require_server(RedisClusterServers())
    try:
        yield Grown(cluster, cluster.add_master())
    finally:
        cluster.stop()


@pytest.fixture
def grown(grown_cluster: Grown) -> Iterator[Grown]:
    with grown_cluster.raw() as raw:
        raw.flushall()
    yield grown_cluster
    cluster, new = grown_cluster.cluster, grown_cluster.new
    for slot in cluster.slots_served_by(new):
        cluster.migrate_slot(slot, cluster.ports[0])
    with redis.Redis(port=new) as node:
        node.script_flush()
        node.config_resetstat()


def table_cache(
    grown: Grown,
    mode: str,
    table: Table,
    prepare: Callable[[Any], None] | None = None,
    **options: Any,
) -> AbstractContextManager[Any]:
    """A cache of ``table`` over a new cluster client (passed to ``prepare`` first): a
    :class:`TableCache`, or a blocking facade of an :class:`AsyncTableCache` whose loop runs
    in a thread of its own."""

    def prepared(client: Any) -> Any:
        if prepare is not None:
            prepare(client)
        return client

    return cache_over(
        mode,
        lambda: prepared(cachecow.connect_cluster(grown.url, timeout=TIMEOUT)),
        lambda: prepared(cachecow.connect_cluster_async(grown.url, timeout=TIMEOUT)),
        table,
        **options,
    )


def peek(cache: Any, id_val: int) -> Any:
    if isinstance(cache, SyncFacade):
        return cache.runner.run(cache.wrapped.peek("row", "id", id_val))
    return cache.peek("row", "id", id_val)


def knows(cache: Any, port: int) -> bool:
    """Whether the cache's cluster client has the master on ``port`` in its map."""
    return cache.redis.get_node(host="127.0.0.1", port=port) is not None


def noscript_replies(port: int) -> int:
    """How many NOSCRIPT errors the node on ``port`` has replied since its stats were reset."""
    with redis.Redis(port=port) as node:
        stats: Any = node.info("errorstats")
    return int(stats.get("errorstat_NOSCRIPT", {}).get("count", 0))


def slot_of(cache: Any, id_val: int) -> int:
    return key_slot(cache.get_keys("row", "id", id_val)[0].encode())


@pytest.mark.parametrize("mode", MODES)
def test_a_read_redirected_to_a_master_the_client_never_saw(grown: Grown, mode: str) -> None:
    """Row 1 is cached; its slot's keys move to the new master and, before the slot changes
    owner, ``peek`` asks the old owner, which answers ASK naming the new master. The client
    follows it to a node made for the redirect, so redis-py never fails on the unknown node
    (its sync client would then put a connection back in the pool twice): no ``CLUSTER
    NODES``, the fallback for an ``AttributeError``, is ever sent."""
    table = Table()
    sent: list[str] = []

    def record(client: Any) -> None:
        real = client.execute_command
        if mode == "sync":

            def spy(*args: Any, **kwargs: Any) -> Any:
                sent.append(str(args[0]))
                return real(*args, **kwargs)

        else:

            async def spy(*args: Any, **kwargs: Any) -> Any:
                sent.append(str(args[0]))
                return await real(*args, **kwargs)

        client.execute_command = spy

    with table_cache(grown, mode, table, record) as cache:
        assert cache.get("row", "id", 1) == table.read(1)  # cached on the old owner
        assert not knows(cache, grown.new)
        seen: dict[str, Any] = {}

        def moved() -> None:
            seen["peek"] = peek(cache, 1)

        grown.cluster.migrate_slot(slot_of(cache, 1), grown.new, moved=moved)
        assert seen["peek"] == table.read(1)
        assert knows(cache, grown.new)  # the node made for the ASK is on the client's map
        assert "CLUSTER NODES" not in sent
        assert peek(cache, 1) == table.read(1)  # after the move: MOVED, followed by redis-py
        assert cache.metrics.snapshot().redis_errors == 0
        # outside cachecow's calls the client's get_node answers as redis-py's does
        assert cache.redis.get_node(node_name="127.0.0.1:1") is None


@pytest.mark.parametrize("invalidated", [False, True], ids=["kept", "invalidated"])
@pytest.mark.parametrize("mode", MODES)
def test_a_lease_moves_with_its_slot(grown: Grown, mode: str, invalidated: bool) -> None:
    """Reader A leases row 2 on the old owner and reads version 0; the slot moves to the new
    master. A's commit lands there (the lease moved with its token), unless the row changed
    and was invalidated on the new master first: then the commit is refused."""
    table = Table()
    with table_cache(grown, mode, table) as cache:
        value_key = cache.get_keys("row", "id", 2)[0]
        probe = FetchProbe(cache)
        probe.gate_next()
        results: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: results.update(a=cache.get("row", "id", 2)))
        reader.start()
        probe.wait_fetched()  # A holds the lease and has read version 0
        assert noscript_replies(grown.new) == 0  # no script has run on the new master yet
        grown.cluster.migrate_slot(slot_of(cache, 2), grown.new)
        if invalidated:
            table.bump(2)
            cache.invalidate("row", "id", 2)
        probe.release()
        reader.join(10)
        assert results["a"] == {"id": 2, "version": 0}
        # A's commit met NOSCRIPT on the new master; the script was loaded and sent again
        assert noscript_replies(grown.new) == 1
        with redis.Redis(port=grown.new) as new_master:
            stored = new_master.get(value_key)  # straight from the new master
        counts = cache.metrics.snapshot()
        if invalidated:
            assert stored is None
            assert (counts.commits, counts.stale_commits) == (0, 1)
            assert cache.get("row", "id", 2) == {"id": 2, "version": 1}
        else:
            assert stored is not None
            assert cache.serializer.loads(stored) == {"id": 2, "version": 0}
            assert (counts.commits, counts.stale_commits) == (1, 0)
        assert counts.redis_errors == 0


@pytest.mark.parametrize("mode", MODES)
def test_slots_moved_to_a_new_master_mid_run(grown: Grown, mode: str) -> None:
    """The fault-suite scenario: every slot the workload's rows live in moves, one after
    another, to the new master while four readers and two writers run (each move is what
    ``redis-cli --cluster reshard`` does: ASK and TRYAGAIN while it lasts, MOVED after)."""
    table = Table()
    setting = "strict" if mode == "sync" else "strict, asyncio"
    report = Report("cluster: slots moved to a new master", setting)
    with table_cache(grown, mode, table, wait_timeout=0.1) as cache, grown.raw() as raw:
        slots = sorted({slot_of(cache, key) for key in range(KEYS)})
        with Workload(cache, report):
            time.sleep(0.3)
            for slot in slots:
                grown.cluster.migrate_slot(slot, grown.new)
            time.sleep(0.3)
        report.stale_after_recovery = stale_after_recovery(cache, raw.get)
        REPORTS.append(report)
        assert set(grown.cluster.slots_served_by(grown.new)) == set(slots)
        assert (report.failures, report.stale_reads, report.stale_after_recovery) == (0, 0, 0), (
            report.detail()
        )
        assert cache.metrics.snapshot().redis_errors == 0


# -- when redis-py fails some other way ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fail_open", [True, False], ids=["fail_open", "strict"])
def test_a_persisting_client_failure_is_a_redis_failure(
    grown: Grown, monkeypatch: pytest.MonkeyPatch, mode: str, fail_open: bool
) -> None:
    """When the retry after learning the cluster's masters fails too, the ``AttributeError``
    becomes a ``ClusterError``: reads go to the database with ``fail_open`` and raise
    ``CacheUnavailable`` without it; invalidations raise ``InvalidationFailed``."""
    sent: list[str] = []

    def patch(client: Any) -> None:
        real = client.execute_command

        def broken(*args: Any, **kwargs: Any) -> Any:
            sent.append(str(args[0]))
            if args[0] == "CLUSTER NODES":
                return real(*args, **kwargs)
            raise AttributeError("'NoneType' object has no attribute 'redis_connection'")

        async def abroken(*args: Any, **kwargs: Any) -> Any:
            sent.append(str(args[0]))
            if args[0] == "CLUSTER NODES":
                return await real(*args, **kwargs)
            raise AttributeError("'NoneType' object has no attribute 'connection_kwargs'")

        monkeypatch.setattr(client, "execute_command", broken if mode == "sync" else abroken)

    table = Table()
    with table_cache(grown, mode, table, patch, fail_open=fail_open) as cache:
        if fail_open:
            assert cache.get("row", "id", 3) == table.read(3)
            assert cache.metrics.snapshot().fail_open_fetches == 1
        else:
            with pytest.raises(CacheUnavailable) as raised:
                cache.get("row", "id", 3)
            assert isinstance(raised.value.__cause__, ClusterError)
        with pytest.raises(InvalidationFailed):
            cache.invalidate("row", "id", 3)
    # each failing call: once, CLUSTER NODES, once more
    assert sent[:3] == ["EVALSHA", "CLUSTER NODES", "EVALSHA"]
    assert "DEL" in sent
