"""The fault suite: real Redis processes killed, paused, restarted empty, failed over (Redis
Cluster and Sentinel) and stripped of their scripts while readers and writers run.

Each scenario runs the workload of ``tests/support/faults.py`` and reports what the callers saw
(operations, failures, stale reads, stale values after recovery, worst latency); the figures
are printed at the end of the run. What each one asserts is the promise under that failure:

- with ``fail_open``, every read answers (from the database while Redis is away); without it,
  reads fail with ``CacheUnavailable``; invalidations raise ``InvalidationFailed`` either way;
- no call waits longer than the socket timeout plus a margin (a paused server);
- no read ever returns a value older than an invalidation that had returned before it began,
  and nothing stale is left once Redis is back.

Every run is bounded in time: the workload's threads stop within seconds of the fault ending,
and each wait for a deployment to settle has its own deadline.
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
from redis.cluster import RedisCluster

import cachecow
from cachecow import CacheUnavailable, InvalidationFailed
from cachecow.testing import RedisClusterServers, RedisSentinelGroup, RedisServer
from cachecow.testing.contract import FetchProbe
from cachecow.testing.plugin import require_server
from tests.support.faults import (
    CLUSTER_MODES,
    LOADS,
    MODES,
    REPORTS,
    AsyncLoadCache,
    CountingTable,
    Load,
    LoadCache,
    Report,
    Table,
    Workload,
    cache_over,
    label,
    stale_after_recovery,
)

TIMEOUT = 0.25  # the clients' socket timeout
MARGIN = 0.25  # scheduling noise on a shared 2-core machine (seen: up to 90 ms over)
SETTINGS = {"fail_open": True, "strict": False}


def finish(report: Report) -> Report:
    REPORTS.append(report)
    return report


def check_reads(report: Report, fail_open: bool) -> None:
    """With fail_open no read fails; without it, reads fail only with CacheUnavailable, and
    only because Redis failed."""
    assert report.odd_failures == [], report.odd_failures
    if fail_open:
        assert report.read_failures == {}, report.detail()
    else:
        assert set(report.read_failures) <= {"CacheUnavailable"}, report.detail()


# -- a standalone Redis --------------------------------------------------------------------------
# Each scenario runs the sync class and the asyncio class (through a blocking facade: every
# call of the workload's threads is a task on one event loop).


@contextmanager
def standalone_cache(server: RedisServer, mode: str, table: Table, **options: Any) -> Iterator[Any]:
    """The sync or asyncio cache over ``cachecow.connect`` / ``connect_async``."""
    with cache_over(
        mode,
        lambda: cachecow.connect(server.url, timeout=TIMEOUT),
        lambda: cachecow.connect_async(server.url, timeout=TIMEOUT),
        table,
        **options,
    ) as cache:
        yield cache


def raw_get(server: RedisServer) -> Any:
    """A function reading a key straight from ``server``, for the check after recovery."""

    def get(key: str) -> Any:
        with redis.Redis(port=server.port, socket_timeout=5) as client:
            return client.get(key)

    return get


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_killed_mid_run(own_redis_server: RedisServer, setting: str, mode: str) -> None:
    fail_open = SETTINGS[setting]
    report = Report("standalone killed, restarted 1 s later", label(setting, mode))
    with standalone_cache(
        own_redis_server, mode, Table(), fail_open=fail_open, wait_timeout=0.1
    ) as cache:
        with Workload(cache, report):
            time.sleep(0.4)
            own_redis_server.kill()
            time.sleep(1.0)
            failures_while_down = report.failures
            own_redis_server.start()
            time.sleep(0.5)
        report.stale_after_recovery = stale_after_recovery(cache, raw_get(own_redis_server))
    finish(report)
    check_reads(report, fail_open)
    if not fail_open:
        assert report.read_failures.get("CacheUnavailable", 0) > 0, report.detail()
    assert report.invalidation_failures > 0, report  # invalidations raise either way
    assert failures_while_down > 0
    assert (report.stale_reads, report.stale_after_recovery) == (0, 0), report.detail()
    assert report.within(TIMEOUT + MARGIN), report.detail()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_paused_mid_run(own_redis_server: RedisServer, setting: str, mode: str) -> None:
    fail_open = SETTINGS[setting]
    report = Report("standalone paused (SIGSTOP) 1 s", label(setting, mode))
    with standalone_cache(
        own_redis_server, mode, Table(), fail_open=fail_open, wait_timeout=0.1
    ) as cache:
        with Workload(cache, report):
            time.sleep(0.4)
            own_redis_server.pause()
            time.sleep(1.0)
            own_redis_server.resume()
            time.sleep(0.5)
        report.stale_after_recovery = stale_after_recovery(cache, raw_get(own_redis_server))
    finish(report)
    check_reads(report, fail_open)
    assert report.invalidation_failures > 0, report.detail()
    assert (report.stale_reads, report.stale_after_recovery) == (0, 0), report.detail()
    # The promise under test (DESIGN.md invariant 8): every call returns within the timeout.
    assert report.within(TIMEOUT + MARGIN), report.detail()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_restarted_empty_mid_run(own_redis_server: RedisServer, setting: str, mode: str) -> None:
    fail_open = SETTINGS[setting]
    report = Report("standalone restarted empty", label(setting, mode))
    with standalone_cache(
        own_redis_server, mode, Table(), fail_open=fail_open, wait_timeout=0.1
    ) as cache:
        with Workload(cache, report):
            time.sleep(0.4)
            own_redis_server.restart()  # values, leases and scripts all gone
            time.sleep(0.6)
        report.stale_after_recovery = stale_after_recovery(cache, raw_get(own_redis_server))
    finish(report)
    check_reads(report, fail_open)
    assert (report.stale_reads, report.stale_after_recovery) == (0, 0), report.detail()


@pytest.mark.parametrize("mode", MODES)
def test_a_lease_taken_before_a_restart_is_void_after_it(
    own_redis_server: RedisServer, mode: str
) -> None:
    """Reader A leases and reads v1; Redis restarts empty; the row changes; reader B (another
    process) leases and reads v2. A's commit must be refused (B's token is not A's): checking
    only that *a* flag exists would cache v1 over B's lease."""
    table = Table()
    with (
        standalone_cache(own_redis_server, mode, table) as cache,
        standalone_cache(own_redis_server, mode, table) as other,
    ):
        probe, probe_b = FetchProbe(cache), FetchProbe(other)
        probe.gate_next()
        results: dict[str, Any] = {}
        reader_a = threading.Thread(target=lambda: results.update(a=cache.get("row", "id", 1)))
        reader_a.start()
        probe.wait_fetched()  # A holds a lease and has read version 0
        own_redis_server.restart()
        table.bump(1)  # the write lands while Redis is empty: nothing to invalidate
        probe_b.gate_next()
        reader_b = threading.Thread(target=lambda: results.update(b=other.get("row", "id", 1)))
        reader_b.start()
        probe_b.wait_fetched()  # B holds a new lease and has read version 1
        probe.release()  # A commits first (its fetch returned first), then B
        reader_a.join(10)
        probe_b.release()
        reader_a.join(10)
        reader_b.join(10)
        assert (results["a"]["version"], results["b"]["version"]) == (0, 1)
        value_key, _ = cache.get_keys("row", "id", 1)
        raw = raw_get(own_redis_server)(value_key)
        assert raw is not None
        assert cache.serializer.loads(raw) == {"id": 1, "version": 1}
        assert cache.get("row", "id", 1) == {"id": 1, "version": 1}
        assert cache.metrics.snapshot().stale_commits >= 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_script_flush_mid_run(own_redis_server: RedisServer, setting: str, mode: str) -> None:
    fail_open = SETTINGS[setting]
    report = Report("standalone SCRIPT FLUSH x10", label(setting, mode))
    admin = redis.Redis(port=own_redis_server.port)
    with standalone_cache(
        own_redis_server, mode, Table(), fail_open=fail_open, wait_timeout=0.1
    ) as cache:
        with Workload(cache, report):
            for _ in range(10):
                time.sleep(0.08)
                admin.script_flush()
            time.sleep(0.2)
        report.stale_after_recovery = stale_after_recovery(cache, raw_get(own_redis_server))
        redis_errors = cache.metrics.snapshot().redis_errors
    finish(report)
    assert (report.failures, report.stale_reads, report.stale_after_recovery) == (0, 0, 0), (
        report.detail()
    )
    assert redis_errors == 0


# -- Redis Cluster --------------------------------------------------------------------------------


@contextmanager
def cluster_cache(
    cluster: RedisClusterServers, mode: str, table: Table, **options: Any
) -> Iterator[Any]:
    """The sync or asyncio cache over ``connect_cluster`` / ``connect_cluster_async``."""
    url = f"redis://127.0.0.1:{cluster.ports[0]}"
    with cache_over(
        mode,
        lambda: cachecow.connect_cluster(url, timeout=TIMEOUT),
        lambda: cachecow.connect_cluster_async(url, timeout=TIMEOUT),
        table,
        wait_timeout=0.1,
        **options,
    ) as cache:
        yield cache


def cluster_raw_get(cluster: RedisClusterServers) -> Any:
    """A function reading a key straight from the cluster (a new client, after recovery)."""

    def get(key: str) -> Any:
        with RedisCluster(host="127.0.0.1", port=cluster.live_ports()[0]) as client:
            return client.get(key)

    return get


@pytest.mark.parametrize("mode", CLUSTER_MODES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_cluster_failover_mid_run(
    own_redis_cluster: RedisClusterServers, setting: str, mode: str
) -> None:
    """A manual failover (``CLUSTER FAILOVER`` on a replica) under load."""
    fail_open = SETTINGS[setting]
    report = Report("cluster: CLUSTER FAILOVER", label(f"{setting}, wait_replicas=1", mode))
    master = own_redis_cluster.ports[0]
    with cluster_cache(
        own_redis_cluster, mode, Table(), fail_open=fail_open, wait_replicas=1
    ) as cache:
        with Workload(cache, report):
            time.sleep(0.4)
            own_redis_cluster.failover(own_redis_cluster.replica_ports(master)[0])
            time.sleep(0.6)
        report.stale_after_recovery = stale_after_recovery(
            cache, cluster_raw_get(own_redis_cluster)
        )
    finish(report)
    check_reads(report, fail_open)
    assert own_redis_cluster.role(master) == "slave"
    assert (report.stale_reads, report.stale_after_recovery) == (0, 0), report.detail()


@pytest.mark.parametrize("mode", CLUSTER_MODES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_cluster_master_killed_mid_run(
    own_redis_cluster: RedisClusterServers, setting: str, mode: str
) -> None:
    """A master dies: its replica takes over after the node timeout (1 s here); the old master
    comes back as a replica of the new one, so ``wait_replicas=1`` can be met again."""
    fail_open = SETTINGS[setting]
    report = Report("cluster: master killed, failover", label(f"{setting}, wait_replicas=1", mode))
    victim = own_redis_cluster.ports[1]
    replica = own_redis_cluster.replica_ports(victim)[0]
    with cluster_cache(
        own_redis_cluster, mode, Table(), fail_open=fail_open, wait_replicas=1
    ) as cache:
        with Workload(cache, report):
            time.sleep(0.4)
            own_redis_cluster.server(victim).kill()
            own_redis_cluster.wait_ok(timeout=30)
            own_redis_cluster.server(victim).start()  # rejoins as a replica
            own_redis_cluster.wait_ok(timeout=30)
            time.sleep(0.5)
        report.stale_after_recovery = stale_after_recovery(
            cache, cluster_raw_get(own_redis_cluster)
        )
    finish(report)
    check_reads(report, fail_open)
    assert own_redis_cluster.role(replica) == "master"
    assert report.invalidation_failures > 0, report.detail()
    assert (report.stale_reads, report.stale_after_recovery) == (0, 0), report.detail()


@pytest.mark.parametrize("mode", MODES)
def test_cluster_script_flush_mid_run(
    redis_cluster_servers: RedisClusterServers, mode: str
) -> None:
    admin = RedisCluster(host="127.0.0.1", port=redis_cluster_servers.ports[0])
    admin.flushall()
    report = Report("cluster: SCRIPT FLUSH x10", label("strict", mode))
    try:
        with cluster_cache(redis_cluster_servers, mode, Table()) as cache:
            with Workload(cache, report):
                for _ in range(10):
                    time.sleep(0.08)
                    admin.execute_command("SCRIPT", "FLUSH", target_nodes=admin.get_primaries())
                time.sleep(0.2)
            report.stale_after_recovery = stale_after_recovery(cache, admin.get)
            redis_errors = cache.metrics.snapshot().redis_errors
    finally:
        admin.close()
    finish(report)
    assert (report.failures, report.stale_reads, report.stale_after_recovery) == (0, 0, 0), (
        report.detail()
    )
    assert redis_errors == 0


# -- Sentinel -------------------------------------------------------------------------------------


@contextmanager
def sentinel_cache_of(
    group: RedisSentinelGroup, mode: str, table: Table, **options: Any
) -> Iterator[Any]:
    """The sync or asyncio cache over ``connect_sentinel`` / ``connect_sentinel_async``."""
    with cache_over(
        mode,
        lambda: cachecow.connect_sentinel(
            group.sentinel_addresses, group.service_name, timeout=TIMEOUT
        ),
        lambda: cachecow.connect_sentinel_async(
            group.sentinel_addresses, group.service_name, timeout=TIMEOUT
        ),
        table,
        wait_timeout=0.1,
        **options,
    ) as cache:
        yield cache


@pytest.fixture
def sentinel_group_of_three() -> Iterator[RedisSentinelGroup]:
    """A master with two replicas, so one is left to acknowledge writes after a failover."""
    group = require_server(RedisSentinelGroup(replicas=2))
    try:
        yield group
    finally:
        group.stop()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_sentinel_master_killed_mid_run(
    sentinel_group_of_three: RedisSentinelGroup, setting: str, mode: str
) -> None:
    """The master dies; the Sentinels promote a replica (down-after 1 s here) and make the
    other one replicate from it."""
    group = sentinel_group_of_three
    fail_open = SETTINGS[setting]
    report = Report("sentinel: master killed, failover", label(f"{setting}, wait_replicas=1", mode))
    old = group.master_port()
    with sentinel_cache_of(group, mode, Table(), fail_open=fail_open, wait_replicas=1) as cache:
        with Workload(cache, report):
            time.sleep(0.4)
            group.server(old).kill()
            deadline = time.monotonic() + 30
            while group.master_port() == old:
                assert time.monotonic() < deadline, "the Sentinels never failed over"
                time.sleep(0.05)
            group.wait_settled(group.master_port(), timeout=30)
            time.sleep(0.5)
        report.stale_after_recovery = stale_after_recovery(
            cache, raw_get(group.server(group.master_port()))
        )
    finish(report)
    check_reads(report, fail_open)
    assert report.invalidation_failures > 0, report.detail()
    assert (report.stale_reads, report.stale_after_recovery) == (0, 0), report.detail()


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_an_invalidation_the_replica_never_got(
    own_redis_sentinel_group: RedisSentinelGroup, wait_replicas: int
) -> None:
    """Replication is asynchronous: an invalidation the master acknowledged but never passed
    on is lost when the replica takes over, and the old value comes back. With
    ``wait_replicas=1`` the invalidation raises instead, so the writer knows it must retry it
    (the retry, once the new master has a replica, is the workload's job in the tests above)."""
    group = own_redis_sentinel_group
    table = Table()
    replica = group.replicas[0]
    with (
        sentinel_cache_of(group, "sync", table, wait_replicas=wait_replicas) as cache,
        redis.Redis(port=replica.port) as admin,
    ):
        assert cache.get("row", "id", 1) == {"id": 1, "version": 0}
        group.wait_settled(group.master_port())  # the cached value has reached the replica
        value_key, _ = cache.get_keys("row", "id", 1)
        wait_until_replicated = time.monotonic() + 10
        while admin.get(value_key) is None:
            assert time.monotonic() < wait_until_replicated
            time.sleep(0.01)
        table.bump(1)
        # Cut the replication link: the replica stops, the master drops its connection (what
        # the replica had received so far stays in its socket; what follows never reaches it).
        replica.pause()
        with redis.Redis(port=group.master.port) as master_admin:
            master_admin.client_kill_filter(_type="replica")
        try:
            if wait_replicas:
                with pytest.raises(InvalidationFailed) as raised:
                    cache.invalidate("row", "id", 1)
                assert "replicas" in str(raised.value)
                assert isinstance(raised.value, CacheUnavailable)
            else:
                cache.invalidate("row", "id", 1)  # acknowledged by the master alone
            group.master.kill()
        finally:
            replica.resume()
        deadline = time.monotonic() + 30
        while group.master_port() != replica.port:
            assert time.monotonic() < deadline, "the Sentinels never promoted the replica"
            time.sleep(0.05)
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = cache.get("row", "id", 1)
                break
            except CacheUnavailable:
                time.sleep(0.05)
        # Either way the new master serves the old value: the invalidation never reached it. Only
        # with wait_replicas did the writer learn that (above), and so only then can it retry.
        assert answer == {"id": 1, "version": 0}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wait_replicas", [1, 2])
def test_sentinel_manual_failover_mid_run(
    sentinel_group_of_three: RedisSentinelGroup, wait_replicas: int, mode: str
) -> None:
    """``SENTINEL FAILOVER``: one replica is promoted while the old master stays up and keeps
    its connections, and the Sentinels demote it only at their next look (up to 10 s). Until
    then, an invalidation sent to the old master can be acknowledged by the *other* replica,
    which then resyncs from the new master and drops it: with ``wait_replicas=1`` that
    acknowledged invalidation is lost (stale reads until the key is written again). With
    ``wait_replicas`` equal to the number of replicas, no invalidation is acknowledged unless
    every replica that could be promoted has it: invalidations raise (and are retried) until
    the old master is back as a replica, and no read is stale."""
    group = sentinel_group_of_three
    report = Report(
        "sentinel: SENTINEL FAILOVER (2 replicas)",
        label(f"fail_open, wait_replicas={wait_replicas}", mode),
    )
    old = group.master_port()
    with sentinel_cache_of(
        group, mode, Table(), fail_open=True, wait_replicas=wait_replicas
    ) as cache:
        with Workload(cache, report):
            time.sleep(0.4)
            new = group.failover(timeout=40)  # returns once the old master replicates the new one
            time.sleep(0.5)
        report.stale_after_recovery = stale_after_recovery(
            cache, raw_get(group.server(group.master_port()))
        )
    finish(report)
    check_reads(report, True)
    assert new != old
    assert report.stale_after_recovery == 0, report.detail()
    if wait_replicas == len(group.replicas):
        assert report.stale_reads == 0, report.detail()


# -- load: 200 threads, 5,000 asyncio tasks, one client ------------------------------------------
# Cold keys: every caller reads the same uncached key at once (fetch counts per key: single
# flight makes it 1). Hot keys: every caller reads cached keys in a loop. Figures printed in
# the run's summary; the promises asserted: no caller sees an error (no pool exhaustion), one
# fetch per cold key, no wait timed out, and a bounded number of Redis commands per cold key.

LOAD_TIMEOUT = 5.0  # the clients' timeout: a pool wait or a call beyond it is an error
# How long a follower waits for the leader of its key. The load tests check that every call
# succeeds and that followers share the leader's read (one fetch per cold key, no wait given
# up), not how fast: the latencies are reported, not asserted (the fault scenarios above
# assert the bounds). With 1 s for both, a machine busy elsewhere (another test run on the
# same 2 cores) made calls time out and followers give up and fetch on their own.
LOAD_WAIT = 10.0


def script_calls(server: RedisServer) -> int:
    """The script calls (``EVALSHA``, ``EVAL``) the server has run so far: the Redis calls a
    cache's reads make (a connection's handshake and a first call's ``NOSCRIPT`` not counted)."""
    with redis.Redis(port=server.port, socket_timeout=5) as client:
        stats = client.info("commandstats")
    return sum(
        int(stat["calls"]) - int(stat.get("failed_calls", 0))
        for name, stat in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval")
    )


def test_load_200_threads_on_one_client(redis_server: RedisServer) -> None:
    client = cachecow.connect(redis_server.url, timeout=LOAD_TIMEOUT)
    table = CountingTable(delay=0.005)
    cache = LoadCache(client, table, prefix=f"load-{time.monotonic_ns()}:", wait_timeout=LOAD_WAIT)
    load = Load("200 threads, 1 client: 10 cold keys, then hot")
    threads, rounds, hot_reads = 200, 10, 50
    barrier = threading.Barrier(threads)
    before = script_calls(redis_server)

    def call(key: int) -> None:
        started, error = time.monotonic(), None
        try:
            cache.get("row", "id", key)
        except Exception as exc:
            error = exc
        load.record(time.monotonic() - started, error)

    def worker(seed: int) -> None:
        for cold in range(rounds):
            barrier.wait()
            call(1000 + cold)
        for i in range(hot_reads):
            call((seed + i) % 8)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    load.redis_commands = script_calls(redis_server) - before
    load.cold_fetches = [table.reads.get(1000 + cold, 0) for cold in range(rounds)]
    LOADS.append(load)
    client.close()
    assert not any(thread.is_alive() for thread in workers)
    assert load.errors == {}, load.row()
    assert len(load.latencies) == threads * (rounds + hot_reads)
    assert load.cold_fetches == [1] * rounds, load.row()
    assert cache.metrics.snapshot().wait_timeouts == 0


def test_load_5000_tasks_on_one_client(redis_server: RedisServer) -> None:
    table = CountingTable(delay=0.005)
    tasks, rounds, hot_reads = 5000, 5, 10
    load = Load("5,000 asyncio tasks, 1 client: 5 cold keys, then hot")
    per_cold: list[int] = []

    async def run() -> None:
        client = cachecow.connect_async(redis_server.url, timeout=LOAD_TIMEOUT)
        cache = AsyncLoadCache(
            client, table, prefix=f"load-{time.monotonic_ns()}:", wait_timeout=LOAD_WAIT
        )

        async def call(key: int) -> None:
            started, error = time.monotonic(), None
            try:
                await cache.get("row", "id", key)
            except Exception as exc:
                error = exc
            load.record(time.monotonic() - started, error)

        async def hot(seed: int) -> None:
            for i in range(hot_reads):
                await call((seed + i) % 8)

        try:
            for cold in range(rounds):
                before = script_calls(redis_server)
                await asyncio.gather(*(call(2000 + cold) for _ in range(tasks)))
                per_cold.append(script_calls(redis_server) - before)
            await asyncio.gather(*(hot(seed) for seed in range(tasks)))
            assert cache.metrics.snapshot().wait_timeouts == 0
        finally:
            await client.aclose()

    asyncio.run(run())
    load.cold_fetches = [table.reads.get(2000 + cold, 0) for cold in range(rounds)]
    load.redis_commands = max(per_cold)
    load.scenario += f" (scripts per cold key <= {max(per_cold)})"
    LOADS.append(load)
    assert load.errors == {}, load.row()
    assert load.cold_fetches == [1] * rounds, load.row()
    # One lease call and one commit, give or take a read by those that came last: not one
    # call (or one poll loop) per task.
    assert max(per_cold) <= 10, per_cold


def test_load_5000_batches_on_one_client(redis_server: RedisServer) -> None:
    """5,000 asyncio tasks, each a get_many of 10 of 50 cold keys (overlapping windows): the
    batches share their reads key by key, so each key is fetched once."""
    table = CountingTable(delay=0.001)
    tasks, keys, size = 5000, 50, 10
    load = Load("5,000 asyncio get_many of 10 of 50 cold keys")

    async def run() -> None:
        client = cachecow.connect_async(redis_server.url, timeout=LOAD_TIMEOUT)
        cache = AsyncLoadCache(
            client, table, prefix=f"load-{time.monotonic_ns()}:", wait_timeout=LOAD_WAIT
        )

        async def call(first: int) -> None:
            started, error = time.monotonic(), None
            try:
                wanted = [3000 + (first + i) % keys for i in range(size)]
                rows = await cache.get_many("row", "id", wanted)
                assert [row["id"] for row in rows] == wanted
            except Exception as exc:
                error = exc
            load.record(time.monotonic() - started, error)

        try:
            before = script_calls(redis_server)
            await asyncio.gather(*(call(i) for i in range(tasks)))
            load.redis_commands = script_calls(redis_server) - before
            assert cache.metrics.snapshot().wait_timeouts == 0
        finally:
            await client.aclose()

    asyncio.run(run())
    load.cold_fetches = [table.reads.get(3000 + key, 0) for key in range(keys)]
    LOADS.append(load)
    assert load.errors == {}, load.row()
    assert load.cold_fetches == [1] * keys, load.row()
    # The batches that lead a key: a lease call and a commit each, and a read by those that
    # came last; not a call (or a poll loop) per task.
    assert load.redis_commands <= 4 * keys, load.row()
