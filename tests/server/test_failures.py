"""Redis failures: a closed port, a paused (SIGSTOP) server, a server dying mid-read, a restart.

Each test runs on a redis-server of its own (``own_redis_server``) so it can break it.
Bounds on time here are the promise under test (invariant 8: no call waits on Redis longer than
the configured timeouts), checked with a generous margin, not benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

import cachecow
from cachecow import CacheCow, CacheUnavailable, InvalidationFailed, NotFound
from cachecow.testing import RedisServer, free_port
from cachecow.testing.contract import FakeClock, FetchProbe

TIMEOUT = 0.3
MARGIN = 0.7  # scheduling noise on a shared 2-core machine; far below redis-py's own retries


class RowCache(CacheCow):
    def __init__(self, redis: redis.Redis, **options: Any) -> None:
        super().__init__(redis, **options)
        self.db: dict[int, dict[str, Any]] = {1: {"id": 1, "name": "one"}}
        self.fetches = 0

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.fetches += 1
        return self.db.get(id_val)


def closed_port_client() -> redis.Redis:
    return cachecow.connect(f"redis://127.0.0.1:{free_port()}/0", timeout=TIMEOUT)


def timed(fn: Any, *args: Any) -> tuple[float, Any, BaseException | None]:
    start = time.monotonic()
    try:
        result, error = fn(*args), None
    except BaseException as exc:
        result, error = None, exc
    return time.monotonic() - start, result, error


def test_closed_port_fail_open_serves_from_fetch() -> None:
    cache = RowCache(closed_port_client(), fail_open=True)
    assert cache.get("row", "id", 1) == {"id": 1, "name": "one"}
    with pytest.raises(NotFound):
        cache.get("row", "id", 2)
    snap = cache.metrics.snapshot()
    assert (snap.fail_open_fetches, snap.redis_errors, snap.fetches) == (2, 2, 2)


def test_closed_port_without_fail_open_raises_cache_unavailable() -> None:
    cache = RowCache(closed_port_client())
    with pytest.raises(CacheUnavailable) as raised:
        cache.get("row", "id", 1)
    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    assert raised.value.operation == "get"
    assert cache.fetches == 0


@pytest.mark.parametrize("fail_open", [True, False])
def test_closed_port_invalidate_always_raises(fail_open: bool) -> None:
    cache = RowCache(closed_port_client(), fail_open=fail_open)
    with pytest.raises(InvalidationFailed) as raised:
        cache.invalidate("row", "id", 1)
    assert isinstance(raised.value, CacheUnavailable)
    assert raised.value.keys == cache.get_keys("row", "id", 1)


def test_paused_server_every_call_returns_within_the_timeout(
    own_redis_server: RedisServer,
) -> None:
    client = cachecow.connect(own_redis_server.url, timeout=TIMEOUT)
    open_cache = RowCache(client, fail_open=True)
    closed_cache = RowCache(client)
    assert open_cache.get("row", "id", 1)["name"] == "one"  # warm: scripts loaded, cached
    own_redis_server.pause()
    try:
        calls = [
            (open_cache.get, ("row", "id", 1)),
            (open_cache.get, ("row", "id", 1)),
            (closed_cache.get, ("row", "id", 1)),
            (open_cache.invalidate, ("row", "id", 1)),
            (closed_cache.invalidate, ("row", "id", 1)),
        ]
        outcomes = [timed(fn, *args) for fn, args in calls]
    finally:
        own_redis_server.resume()
    worst = max(elapsed for elapsed, _, _ in outcomes)
    assert worst < TIMEOUT + MARGIN, outcomes
    (_, r1, e1), (_, r2, e2), (_, _, e3), (_, _, e4), (_, _, e5) = outcomes
    assert (r1, r2, e1, e2) == ({"id": 1, "name": "one"}, {"id": 1, "name": "one"}, None, None)
    assert isinstance(e3, CacheUnavailable)
    assert isinstance(e3.__cause__, redis.TimeoutError)
    assert isinstance(e4, InvalidationFailed)
    assert isinstance(e5, InvalidationFailed)
    # Once the server is back, the same clients work again.
    assert closed_cache.get("row", "id", 1)["name"] == "one"


def test_redis_dies_between_lease_and_commit(own_redis_server: RedisServer) -> None:
    client = cachecow.connect(own_redis_server.url, timeout=TIMEOUT)
    for fail_open in (True, False):
        own_redis_server.restart()
        cache = RowCache(client, fail_open=fail_open)
        probe = FetchProbe(cache)
        probe.gate_next()
        outcome: dict[str, Any] = {}

        def read(cache: RowCache = cache, outcome: dict[str, Any] = outcome) -> None:
            try:
                outcome["value"] = cache.get("row", "id", 1)
            except BaseException as exc:
                outcome["error"] = exc

        reader = threading.Thread(target=read)
        reader.start()
        probe.wait_fetched()
        own_redis_server.kill()
        probe.release()
        reader.join(10)
        if fail_open:
            assert outcome == {"value": {"id": 1, "name": "one"}}
        else:
            assert isinstance(outcome["error"], CacheUnavailable)
            assert outcome["error"].operation == "commit"
        assert cache.metrics.snapshot().redis_errors == 1


def test_a_batch_whose_commit_times_out_waits_no_second_timeout(
    own_redis_server: RedisServer,
) -> None:
    """Under fail_open, a batch whose commit timed out (Redis paused during its fetch_many)
    serves its busy keys from the database at once: polling for them would wait on the same
    stalled Redis a second time."""
    client = cachecow.connect(own_redis_server.url, timeout=TIMEOUT)
    holder = RowCache(client)
    holder.db[2] = {"id": 2, "name": "two"}
    held = FetchProbe(holder)
    held.gate_next()
    holding = threading.Thread(target=holder.get, args=("row", "id", 2), daemon=True)
    holding.start()
    held.wait_fetched()  # key 2's lease is the holder's
    batch = RowCache(client, fail_open=True, wait_timeout=10.0)
    batch.db[2] = holder.db[2]
    probe = FetchProbe(batch)
    probe.gate_next()
    outcome: dict[str, Any] = {}

    def read() -> None:
        outcome["result"] = timed(batch.get_many, "row", "id", [1, 2])

    reader = threading.Thread(target=read)
    reader.start()
    probe.wait_fetched()  # key 1 leased and fetched, key 2 busy
    own_redis_server.pause()
    try:
        probe.release()
        reader.join(10)
    finally:
        own_redis_server.resume()
        held.release()
        holding.join(10)
    elapsed, rows, error = outcome["result"]
    assert (rows, error) == ([batch.db[1], batch.db[2]], None)
    snap = batch.metrics.snapshot()
    assert (snap.redis_errors, snap.waits, snap.fail_open_fetches) == (1, 0, 1), snap
    assert elapsed < TIMEOUT + MARGIN


def test_restart_empty_recovers_and_reloads_scripts(own_redis_server: RedisServer) -> None:
    client = cachecow.connect(own_redis_server.url, timeout=TIMEOUT)
    cache = RowCache(client)
    cache.get("row", "id", 1)
    own_redis_server.restart()  # empty: no value, no flag, no scripts
    cache.db[1]["name"] = "changed while Redis was down"
    assert cache.get("row", "id", 1)["name"] == "changed while Redis was down"
    assert cache.fetches == 2


def test_script_flush_recovers(redis_client: redis.Redis) -> None:
    cache = RowCache(redis_client)
    cache.get("row", "id", 1)
    cache.invalidate("row", "id", 1)
    redis_client.script_flush()
    assert cache.get("row", "id", 1)["name"] == "one"
    assert cache.get("row", "id", 1)["name"] == "one"
    snap = cache.metrics.snapshot()
    assert (snap.redis_errors, snap.hits, snap.commits) == (0, 1, 2)


def test_fail_open_logs_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    cache = RowCache(closed_port_client(), fail_open=True, fail_open_log_interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="cachecow"):
        for _ in range(5):
            cache.get("row", "id", 1)
        clock.now += 61
        for _ in range(5):
            cache.get("row", "id", 1)
    warnings = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(warnings) == 2
    assert cache.metrics.snapshot().redis_errors == 10


def test_release_failure_does_not_mask_the_fetch_error(own_redis_server: RedisServer) -> None:
    """fetch raises after Redis died: the caller sees fetch's error, not a Redis one."""
    client = cachecow.connect(own_redis_server.url, timeout=TIMEOUT)
    cache = RowCache(client)
    boom = RuntimeError("database down")

    def fetch(cls: Any, id_field: Any, id_val: Any) -> Any:
        own_redis_server.kill()
        raise boom

    cache.fetch = fetch  # type: ignore[method-assign]
    with pytest.raises(RuntimeError) as raised:
        cache.get("row", "id", 1)
    assert raised.value is boom


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_a_script_flushed_again_right_after_its_reload_still_runs(
    redis_server: RedisServer, mode: str
) -> None:
    """NOSCRIPT makes the cache load the script and call it again; a ``SCRIPT FLUSH`` landing
    between the two (forced here inside the load) made that second call fail with NOSCRIPT too,
    a Redis failure for the caller (a helper saw it under ``SCRIPT FLUSH`` every 1 ms: once in
    49382 calls). The second call now sends the script's source (``EVAL``)."""
    from tests.server import test_contract_dict

    db = {1: {"id": 1, "payload": "one"}}
    admin = redis.Redis(port=redis_server.port)
    admin.flushall()
    try:
        if mode == "sync":
            client: Any = redis.Redis(port=redis_server.port)
            real_load = client.script_load

            def load_then_flush(source: str) -> Any:
                sha = real_load(source)
                admin.script_flush()
                return sha

            client.script_load = load_then_flush
            cache = test_contract_dict.DictCache(client, db)
            admin.script_flush()
            # lease, fetch and commit (each script reloaded, and flushed again), then a hit
            got = [cache.get("item", "id", 1) for _ in range(2)]
            snapshot = cache.metrics.snapshot()
            client.close()
        else:

            async def body() -> Any:
                client = aredis.Redis(port=redis_server.port)
                real_load = client.script_load

                async def load_then_flush(source: str) -> Any:
                    sha = await real_load(source)
                    admin.script_flush()
                    return sha

                client.script_load = load_then_flush  # type: ignore[method-assign]
                cache = test_contract_dict.AsyncDictCache(client, db)
                admin.script_flush()
                try:
                    got = [await cache.get("item", "id", 1) for _ in range(2)]
                    return got, cache.metrics.snapshot()
                finally:
                    await client.aclose()

            got, snapshot = asyncio.run(body())
        assert got == [db[1], db[1]]
        assert (snapshot.redis_errors, snapshot.fetches, snapshot.hits) == (0, 1, 1)
    finally:
        admin.close()


class InterruptedConnection(redis.Connection):
    """A connection whose read of the reply to its next script call (``EVALSHA``) is
    interrupted (``KeyboardInterrupt``) once Redis has run the script: it drops the socket and
    raises, as redis-py does when a read is interrupted."""

    armed_for: redis.Redis | None = None  # a client to see the flag keys with
    flags: tuple[str, ...] = ()
    error: type[BaseException] = KeyboardInterrupt

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        super().send_packed_command(command, check_health)
        sent = command if isinstance(command, bytes | bytearray) else b"".join(command)
        self._interrupt = InterruptedConnection.armed_for is not None and b"EVALSHA" in sent

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        watcher = InterruptedConnection.armed_for
        if getattr(self, "_interrupt", False) and watcher is not None:
            InterruptedConnection.armed_for = None
            deadline = time.monotonic() + 5
            while watcher.exists(*self.flags) < len(self.flags) and time.monotonic() < deadline:
                time.sleep(0.002)  # until Redis has run the lease script
            self.disconnect()
            raise InterruptedConnection.error
        return super().read_response(*args, **kwargs)


@pytest.mark.parametrize("batch", [False, True], ids=["get", "get_many"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_with_the_lease_reply_in_flight_goes_straight_to_the_caller(
    redis_server: RedisServer, batch: bool, error: type[BaseException]
) -> None:
    """A ``KeyboardInterrupt`` while the granted lease's reply is unread reaches the caller
    with no more Redis calls: the lease is left to expire (flag_ttl). Interrupts come when
    Redis is slow, and a release in the call would hold the interrupt up by a full timeout
    (a minute with redis-py's default retries). An exception (here a ``RuntimeError`` from
    the connection) releases, as after a failed ``fetch``; an asyncio cancellation releases
    within a bound (tests/server/test_async.py)."""
    from tests.server import test_contract_dict

    db = {i: {"id": i} for i in range(1, 6)}
    admin = redis.Redis(port=redis_server.port)
    admin.flushall()
    pool = redis.ConnectionPool(port=redis_server.port, connection_class=InterruptedConnection)
    client = redis.Redis(connection_pool=pool)
    try:
        cache = test_contract_dict.DictCache(client, db)
        cache.get("item", "id", 5)  # the scripts loaded
        cache.get_many("item", "id", [4, 5])
        keys = (1, 2, 3) if batch else (1,)
        InterruptedConnection.flags = tuple(cache.get_keys("item", "id", k)[1] for k in keys)
        InterruptedConnection.error = error
        InterruptedConnection.armed_for = admin
        if batch:
            call: Any = lambda: cache.get_many("item", "id", list(keys))  # noqa: E731
        else:
            call = lambda: cache.get("item", "id", 1)  # noqa: E731
        with pytest.raises(error):
            call()
        assert InterruptedConnection.armed_for is None  # the interruption happened
        left = admin.exists(*InterruptedConnection.flags)
        assert left == (len(keys) if error is KeyboardInterrupt else 0)
    finally:
        InterruptedConnection.armed_for = None
        InterruptedConnection.error = KeyboardInterrupt
        client.close()
        admin.close()


class DroppedReplyConnection(redis.Connection):
    """A connection that loses the reply to its next call of one script (``EVALSHA`` of
    :attr:`sha`) once Redis has run it: it drops the socket and raises ``ConnectionError``,
    as on a connection cut at that moment; the client's retry then sends the call again."""

    sha: bytes | None = None
    watcher: redis.Redis | None = None
    flag = ""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        super().send_packed_command(command, check_health)
        sent = command if isinstance(command, bytes | bytearray) else b"".join(command)
        self._drop = DroppedReplyConnection.sha is not None and DroppedReplyConnection.sha in sent

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        watcher = DroppedReplyConnection.watcher
        if getattr(self, "_drop", False) and watcher is not None:
            DroppedReplyConnection.sha = None
            self._drop = False
            deadline = time.monotonic() + 5
            while not watcher.exists(self.flag) and time.monotonic() < deadline:
                time.sleep(0.002)  # until Redis has granted the lease
            self.disconnect()
            raise redis.ConnectionError("connection dropped (forced by the test)")
        return super().read_response(*args, **kwargs)


@pytest.mark.parametrize("batch", [False, True], ids=["get", "get_many"])
def test_a_lease_call_sent_again_after_a_lost_reply_finds_its_own_lease(
    redis_server: RedisServer, batch: bool
) -> None:
    """The lease was granted, the reply lost with the connection, and the client's retry sends
    the call again (connect() retries a dropped connection once). The second call finds the
    lease already this reader's: it fetches and caches, as on one call. The scripts answered
    "busy" before, so the reader waited on its own lease, then fetched without caching, and
    the key stayed uncached for flag_ttl (found by a helper, by reading)."""
    from tests.server import test_contract_dict

    db = {i: {"id": i} for i in range(1, 6)}
    admin = redis.Redis(port=redis_server.port)
    admin.flushall()
    client = cachecow.connect(redis_server.url, connection_class=DroppedReplyConnection)
    try:
        cache = test_contract_dict.DictCache(client, db, wait_timeout=0.2)
        cache.get("item", "id", 5)  # the scripts loaded
        cache.get_many("item", "id", [4, 5])
        value_key, flag_key = cache.get_keys("item", "id", 1)
        DroppedReplyConnection.flag = flag_key
        DroppedReplyConnection.watcher = admin
        name = "get_or_lease_many" if batch else "get_or_lease"
        DroppedReplyConnection.sha = cache._io.scripts[name].sha.encode()
        before = cache.metrics.snapshot()
        got = cache.get_many("item", "id", [1]) if batch else [cache.get("item", "id", 1)]
        after = cache.metrics.snapshot()
        assert DroppedReplyConnection.sha is None  # the reply was lost, the call sent again
        assert got == [db[1]]
        assert (after.busy - before.busy, after.commits - before.commits) == (0, 1)
        assert admin.exists(flag_key) == 0
        assert admin.exists(value_key) == 1  # cached
    finally:
        DroppedReplyConnection.sha = None
        DroppedReplyConnection.watcher = None
        client.close()
        admin.close()
