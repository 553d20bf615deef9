"""AsyncCacheCow beyond the contract: plain asyncio use, coroutine hooks, cancellation, errors."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry

import cachecow
from cachecow import (
    AsyncCacheCow,
    CacheCow,
    CacheUnavailable,
    ConfigurationError,
    InvalidationFailed,
    NotFound,
)
from cachecow.testing import free_port
from cachecow.testing.contract import FakeClock


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Rows(AsyncCacheCow):
    def __init__(self, redis: aredis.Redis, **options: Any) -> None:
        super().__init__(redis, **options)
        self.db: dict[int, dict[str, Any]] = {i: {"id": i} for i in range(1, 6)}
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.db.get(id_val)


async def with_client(port: int, body: Any) -> Any:
    client = aredis.Redis(port=port)
    await client.flushall()
    try:
        return await body(client)
    finally:
        await client.aclose()


def test_herd_of_64_tasks_makes_one_fetch(redis_server: Any) -> None:
    async def body(client: aredis.Redis) -> None:
        cache = Rows(client, wait_timeout=10.0)
        cache.gate = asyncio.Event()
        tasks = [asyncio.create_task(cache.get("row", "id", 1)) for _ in range(64)]
        while cache.calls < 1:
            await asyncio.sleep(0.005)
        # one task holds the lease and fetches; the 63 others joined its read (single flight)
        flight = cache._flights.by_key[cache.get_keys("row", "id", 1)[0]]
        assert (flight.joined, flight.covered) == (63, 63)
        cache.gate.set()
        results = await asyncio.gather(*tasks)
        assert results == [{"id": 1}] * 64
        assert len({id(r) for r in results}) == 64  # each caller has an object of its own
        assert cache.calls == 1
        snap = cache.metrics.snapshot()
        assert (snap.leases, snap.joined, snap.waits, snap.hits) == (1, 63, 0, 0)

    run(with_client(redis_server.port, body))


def test_get_many_herd_of_64_tasks_makes_one_fetch_many(redis_server: Any) -> None:
    async def body(client: aredis.Redis) -> None:
        calls: list[tuple[Any, ...]] = []
        gate = asyncio.Event()

        class Batch(Rows):
            async def fetch_many(self, cls: Any, id_field: Any, id_vals: Any) -> Any:
                calls.append(tuple(id_vals))
                await gate.wait()
                return {v: self.db[v] for v in id_vals if v in self.db}

        cache = Batch(client, wait_timeout=10.0)
        tasks = [asyncio.create_task(cache.get_many("row", "id", [1, 2, 3])) for _ in range(64)]
        while not calls:
            await asyncio.sleep(0.005)
        # one task leads the three keys' reads; the 63 others joined them (single flight)
        flights = [cache._flights.by_key[cache.get_keys("row", "id", k)[0]] for k in (1, 2, 3)]
        assert [(f.joined, f.covered) for f in flights] == [(63, 63)] * 3
        gate.set()
        results = await asyncio.gather(*tasks)
        assert results == [[{"id": 1}, {"id": 2}, {"id": 3}]] * 64
        assert len({id(r[0]) for r in results}) == 64  # each caller has objects of its own
        assert calls == [(1, 2, 3)]
        snap = cache.metrics.snapshot()
        assert (snap.leases, snap.joined, snap.waits, snap.busy) == (3, 63 * 3, 0, 0)

    run(with_client(redis_server.port, body))


def test_cancelled_fetch_releases_the_lease(redis_server: Any) -> None:
    async def body(client: aredis.Redis) -> None:
        cache = Rows(client)
        cache.gate = asyncio.Event()
        task = asyncio.create_task(cache.get("row", "id", 1))
        flag_key = cache.get_keys("row", "id", 1)[1]
        while cache.calls == 0:  # in fetch, the lease taken
            await asyncio.sleep(0.002)
        assert await client.exists(flag_key)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await client.exists(flag_key)  # released before the call ended, not in 10 s
        cache.gate = None
        assert await cache.get("row", "id", 1) == {"id": 1}

    run(with_client(redis_server.port, body))


class HeldConnection(aredis.Connection):
    """A connection that holds one script call (``EVALSHA`` of :attr:`sha`) until it is
    cancelled: before sending it (:attr:`before_send`), or after sending it, before reading its
    reply. A test can so cancel a call whose command Redis has not seen, or has run but whose
    reply is unread. Cancelled in a read, it drops the socket, as redis-py does."""

    sha: bytes | None = None
    before_send = False
    _armed = False

    @classmethod
    def hold(cls, sha: str, *, before_send: bool = False) -> None:
        cls.sha, cls.before_send = sha.encode(), before_send

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        data = command if isinstance(command, bytes | bytearray) else b"".join(command)
        held = HeldConnection.sha is not None and HeldConnection.sha in data
        if held:
            HeldConnection.sha = None
            if HeldConnection.before_send:
                await asyncio.Event().wait()  # until cancelled; nothing sent
        await super().send_packed_command(command, check_health)
        self._armed = held

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self._armed:
            self._armed = False
            try:
                await asyncio.Event().wait()  # until cancelled
            except BaseException:
                await self.disconnect()
                raise
        return await super().read_response(*args, **kwargs)


async def held_client(port: int) -> aredis.Redis:
    pool = aredis.ConnectionPool(port=port, connection_class=HeldConnection)
    return aredis.Redis.from_pool(pool)


@pytest.mark.parametrize("batch", [False, True], ids=["get", "get_many"])
def test_cancelled_with_the_lease_reply_in_flight_releases_the_lease(
    redis_server: Any, batch: bool
) -> None:
    """Redis granted the lease, but the reply had not been read when the call was cancelled:
    the lease is given back right after (before, it held the key for flag_ttl, 10 s)."""

    async def body(client: aredis.Redis) -> None:
        held = await held_client(redis_server.port)
        try:
            cache = Rows(held)
            await cache.get("row", "id", 5)  # the scripts loaded, a connection in the pool
            await cache.get_many("row", "id", [4, 5])
            flags = [cache.get_keys("row", "id", key)[1] for key in (1, 2, 3)]
            name = "get_or_lease_many" if batch else "get_or_lease"
            HeldConnection.hold(cache._io.scripts[name].sha)
            call = cache.get_many("row", "id", [1, 2, 3]) if batch else cache.get("row", "id", 1)
            task = asyncio.create_task(call)
            want = 3 if batch else 1
            deadline = time.monotonic() + 5
            while await client.exists(*flags) < want:  # Redis has run the lease script
                assert time.monotonic() < deadline, "the lease script never ran"
                await asyncio.sleep(0.002)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await client.exists(*flags) == 0  # released before the call ended
            assert cache.calls == 2  # only the warm-up calls fetched
        finally:
            HeldConnection.sha = None
            await held.aclose()

    run(with_client(redis_server.port, body))


@pytest.mark.parametrize("batch", [False, True], ids=["get", "get_many"])
def test_cancelled_before_its_commit_is_sent_releases_the_lease(
    redis_server: Any, batch: bool
) -> None:
    """The row is fetched, and the call is cancelled before its commit reaches Redis: the
    lease, still this reader's, is given back right after."""

    async def body(client: aredis.Redis) -> None:
        held = await held_client(redis_server.port)
        try:
            cache = Rows(held)
            await cache.get("row", "id", 5)  # the scripts loaded
            await cache.get_many("row", "id", [4, 5])
            flags = [cache.get_keys("row", "id", key)[1] for key in (1, 2, 3)]
            HeldConnection.hold(cache._io.scripts["commit_many" if batch else "commit"].sha)
            HeldConnection.before_send = True
            call = cache.get_many("row", "id", [1, 2, 3]) if batch else cache.get("row", "id", 1)
            task = asyncio.create_task(call)
            deadline = time.monotonic() + 5
            while HeldConnection.sha is not None:  # the commit is held, not sent
                assert time.monotonic() < deadline, "the commit was never sent"
                await asyncio.sleep(0.002)
            assert await client.exists(*flags) == (3 if batch else 1)  # the leases stand
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await client.exists(*flags) == 0  # released before the call ended
            values = [cache.get_keys("row", "id", key)[0] for key in (1, 2, 3)]
            assert await client.exists(*values) == 0  # and nothing was cached
        finally:
            HeldConnection.sha = None
            HeldConnection.before_send = False
            await held.aclose()

    run(with_client(redis_server.port, body))


def test_a_call_cancelled_on_a_stalled_redis_returns_at_once(own_redis_server: Any) -> None:
    """A deadline (``wait_for``) on a ``get`` to a stalled Redis: the cancellation reaches the
    caller within 0.1 s more (CANCEL_RELEASE_SECONDS, the release then given up). An unbounded
    release in the call waited out a second timeout (0.6 s here; about a minute with
    redis-py's default retries), as a helper measured."""

    async def body() -> float:
        client = cachecow.connect_async(own_redis_server.url, timeout=0.5)
        try:
            cache = Rows(client)
            await cache.get("row", "id", 5)  # the scripts loaded
            own_redis_server.pause()
            try:
                start = time.monotonic()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(cache.get("row", "id", 1), 0.1)
                elapsed = time.monotonic() - start
            finally:
                own_redis_server.resume()
            return elapsed
        finally:
            await client.aclose()

    elapsed = run(body())
    assert elapsed < 0.1 + 0.1 + 0.2  # the deadline, the release's bound, scheduling noise


def test_a_cancelled_call_has_released_when_it_ends_and_leaves_no_task(
    redis_server: Any,
) -> None:
    """Once a cancelled ``get`` has ended, its lease is given back and nothing of it runs on:
    so ``asyncio.run`` (which cancels what is left and waits for it) and a client closed
    right after see no more of it. A release left to a task of its own outlived the loop
    ("Task was destroyed but it is pending", the lease held for flag_ttl) and reopened a
    closed client, as a helper found; warnings are errors in this suite."""

    async def body(client: aredis.Redis) -> None:
        own = cachecow.connect_async(redis_server.url)
        cache = Rows(own)
        cache.gate = asyncio.Event()  # fetch never ends
        flag_key = cache.get_keys("row", "id", 1)[1]
        task = asyncio.create_task(cache.get("row", "id", 1))
        while cache.calls == 0:
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await own.aclose()
        assert await client.exists(flag_key) == 0  # released before the call ended

    run(with_client(redis_server.port, body))


def test_plain_method_hooks_work_too(redis_server: Any) -> None:
    class Plain(AsyncCacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            return {"id": id_val}

    async def body(client: aredis.Redis) -> None:
        cache = Plain(client)
        assert await cache.get("p", "id", 7) == {"id": 7}
        assert await cache.get_many("p", "id", [7, 8]) == [{"id": 7}, {"id": 8}]
        assert cache.metrics.snapshot().hits == 1

    run(with_client(redis_server.port, body))


def test_not_found_and_tombstone(redis_server: Any) -> None:
    async def body(client: aredis.Redis) -> None:
        cache = Rows(client)
        for _ in range(2):
            with pytest.raises(NotFound):
                await cache.get("row", "id", 99)
        assert cache.calls == 1
        assert await cache.get_many("row", "id", [99, 1]) == [None, {"id": 1}]

    run(with_client(redis_server.port, body))


def test_wait_timeout_with_a_fake_clock(redis_server: Any) -> None:
    async def body(client: aredis.Redis) -> None:
        holder = Rows(client)
        holder.gate = asyncio.Event()
        clock = FakeClock()
        waiter = Rows(client, wait_timeout=0.5, clock=clock)
        task = asyncio.create_task(holder.get("row", "id", 1))
        while holder.calls == 0:
            await asyncio.sleep(0.002)
        assert await waiter.get("row", "id", 1) == {"id": 1}
        assert sum(clock.sleeps) == pytest.approx(0.5)
        assert waiter.metrics.snapshot().wait_timeouts == 1
        holder.gate.set()
        await task

    run(with_client(redis_server.port, body))


def test_fail_open_and_invalidation_errors_on_a_closed_port() -> None:
    async def body() -> None:
        client = cachecow.connect_async(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
        try:
            assert await Rows(client, fail_open=True).get("row", "id", 1) == {"id": 1}
            assert await Rows(client, fail_open=True).get_many("row", "id", [1, 2]) == [
                {"id": 1},
                {"id": 2},
            ]
            with pytest.raises(CacheUnavailable):
                await Rows(client).get("row", "id", 1)
            with pytest.raises(CacheUnavailable):
                await Rows(client).get_many("row", "id", [1])
            with pytest.raises(InvalidationFailed):
                await Rows(client, fail_open=True).invalidate_many("row", "id", [1])
        finally:
            await client.aclose()

    run(body())


def test_async_client_checks() -> None:
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio client"):
        Rows(redis.Redis())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="decode_responses"):
        Rows(aredis.Redis(decode_responses=True))

    class SyncOnlyClock:
        def monotonic(self) -> float:
            return 0.0

        def sleep(self, seconds: float) -> None:
            pass

    with pytest.raises(ConfigurationError, match="async_sleep"):
        Rows(aredis.Redis(), clock=SyncOnlyClock())


def test_sync_class_refuses_coroutine_hooks(redis_client: redis.Redis) -> None:
    class Confused(CacheCow):
        async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:  # type: ignore[override]
            return {"id": id_val}

    cache = Confused(redis_client)
    with pytest.raises(TypeError, match="AsyncCacheCow"):
        cache.get("c", "id", 1)
    assert redis_client.dbsize() == 0  # and the lease was released
    with pytest.raises(TypeError, match="AsyncCacheCow"):
        cache.get_many("c", "id", [1, 2])
    assert redis_client.dbsize() == 0


IO_METHODS = {"get", "get_many", "peek", "invalidate", "invalidate_many", "invalidate_lookups"}
IO_METHODS |= {"invalidate_object", "invalidate_model"}


def test_sync_and_async_classes_offer_the_same_api() -> None:
    """The twin is a thin shell: same public names, same parameters; I/O methods are coroutines."""

    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(CacheCow) == public(AsyncCacheCow)
    for name in sorted(public(CacheCow)):
        sync, twin = getattr(CacheCow, name), getattr(AsyncCacheCow, name)
        if not inspect.isfunction(sync):
            continue
        sync_params = [
            (p.name, p.kind, p.default) for p in inspect.signature(sync).parameters.values()
        ]
        twin_params = [
            (p.name, p.kind, p.default) for p in inspect.signature(twin).parameters.values()
        ]
        assert sync_params == twin_params, name
        assert inspect.iscoroutinefunction(twin) == (name in IO_METHODS | {"fetch_many"}), name
        assert not inspect.iscoroutinefunction(sync), name
    assert public(CacheCow) >= IO_METHODS


def test_connect_async_retries_a_dropped_connection_once(own_redis_server: Any) -> None:
    """The asyncio helpers give redis.asyncio its own Retry (one immediate retry of a dropped
    connection, none of a timeout): handed redis-py's sync Retry, it never retries, and the
    first call after a Redis restart failed on the pooled connection the restart had closed."""

    async def body() -> None:
        client = cachecow.connect_async(own_redis_server.url, timeout=0.3)
        try:
            retry = client.get_connection_kwargs()["retry"]
            assert isinstance(retry, AsyncRetry)
            assert retry.get_retries() == 1
            assert redis.TimeoutError not in retry._supported_errors
            rows = Rows(client)
            assert await rows.get("row", "id", 1) == {"id": 1}  # a pooled connection now
            own_redis_server.restart()
            assert await rows.get("row", "id", 2) == {"id": 2}  # retried on a new connection
            assert rows.metrics.snapshot().redis_errors == 0
        finally:
            await client.aclose()

    run(body())


def test_the_async_cluster_and_sentinel_helpers_use_the_async_retry() -> None:
    cluster = cachecow.connect_cluster_async("redis://127.0.0.1:7000", timeout=0.3)
    assert isinstance(cluster.retry, AsyncRetry)
    sentinel_client = cachecow.connect_sentinel_async([("127.0.0.1", 26379)], "svc", timeout=0.3)
    pool: Any = sentinel_client.connection_pool
    assert isinstance(pool.connection_kwargs["retry"], AsyncRetry)
    sentinels: Any = pool.sentinel_manager.sentinels
    assert all(
        isinstance(s.connection_pool.connection_kwargs["retry"], AsyncRetry) for s in sentinels
    )
