"""Operating cachecow under load and in locked-down deployments, on real redis-server processes.

- Connection pools: the clients of ``cachecow.connect*`` share a blocking pool of
  ``max_connections``, whose wait for a free connection is bounded by ``timeout``.
- ACL: a Redis user allowed only the commands docs/operations.md lists (no ``SCRIPT``, maybe no
  ``EVALSHA``) can use the cache: scripts fall back to ``EVAL``.
- TLS: ``rediss://`` URLs.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

import cachecow
from cachecow import AsyncCacheCow, CacheCow, CacheUnavailable
from cachecow._client import ClusterBlockingPool
from cachecow.testing.server import (
    RedisClusterServers,
    RedisSentinelGroup,
    RedisServer,
    RedisTLSServer,
)

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

# The ACL of docs/operations.md, exactly: the commands cachecow sends (its scripts'
# too) on keys under its prefix; no SCRIPT, so scripts go by EVALSHA and EVAL.
ACL_RULES = (
    "on resetkeys ~cachecow:* resetchannels -@all "
    "+get +mget +set +del +exists +pttl +pexpire +evalsha +eval"
)


class Rows(CacheCow):
    """Rows ``{"id": n}`` for any id; counts its fetches."""

    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self.fetches = 0
        self._lock = threading.Lock()

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        with self._lock:
            self.fetches += 1
        return {"id": id_val}


class AsyncRows(AsyncCacheCow):
    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val}


def _clients(admin: redis.Redis, name: str) -> int:
    """How many connections named ``name`` the server has now."""
    listing: Any = admin.client_list()
    return sum(1 for client in listing if client.get("name") == name)


class _Peak:
    """Samples a server's count of connections named ``name`` until stopped; the highest."""

    def __init__(self, port: int, name: str) -> None:
        self.admin = redis.Redis(port=port, socket_timeout=5)
        self.name = name
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _clients(self.admin, self.name))
            time.sleep(0.005)

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _clients(self.admin, self.name))
        self.admin.close()


# -- connection pools ---------------------------------------------------------------------------


def test_200_threads_share_one_client_within_its_pool(own_redis_server: RedisServer) -> None:
    """200 threads, one ``connect()`` client of 16 connections: every get answered (no
    MaxConnectionsError, no CacheUnavailable), never more than 16 connections open."""
    threads_n, per_thread, size = 200, 25, 16
    client = cachecow.connect(
        own_redis_server.url, timeout=2.0, max_connections=size, client_name="load"
    )
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    cache = Rows(client)
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def reader(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            key = (n * per_thread + i) % 500  # misses first, then hits
            try:
                assert cache.get("row", "id", key) == {"id": key}
            except BaseException as exc:
                errors.append(exc)

    began = time.monotonic()
    with _Peak(own_redis_server.port, "load") as peak:
        workers = [threading.Thread(target=reader, args=(n,)) for n in range(threads_n)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    elapsed = time.monotonic() - began
    pool: Any = client.connection_pool
    made = len(pool._connections)
    client.close()
    print(f"\n200 threads x {per_thread} gets: {elapsed:.2f}s, {made} connections made, "
          f"peak {peak.peak} open on the server")  # fmt: skip
    assert Counter(type(exc).__name__ for exc in errors) == Counter()
    assert made <= size
    assert 1 <= peak.peak <= size
    assert cache.metrics.snapshot().redis_errors == 0


def test_2000_tasks_share_one_async_client_within_its_pool(own_redis_server: RedisServer) -> None:
    """The asyncio twin: 2,000 tasks at once on one ``connect_async()`` client of 16."""
    tasks_n, size = 2000, 16

    async def main() -> tuple[list[Any], int, float]:
        client = cachecow.connect_async(
            own_redis_server.url, timeout=2.0, max_connections=size, client_name="aload"
        )
        assert isinstance(client.connection_pool, aredis.BlockingConnectionPool)
        cache = AsyncRows(client)
        began = time.monotonic()
        results = await asyncio.gather(
            *(cache.get("row", "id", n % 700) for n in range(tasks_n)), return_exceptions=True
        )
        elapsed = time.monotonic() - began
        pool: Any = client.connection_pool
        made = len(pool._available_connections) + len(pool._in_use_connections)
        assert cache.metrics.snapshot().redis_errors == 0
        await client.aclose()
        return results, made, elapsed

    with _Peak(own_redis_server.port, "aload") as peak:
        results, made, elapsed = asyncio.run(main())
    print(f"\n2000 tasks: {elapsed:.2f}s, {made} connections made, peak {peak.peak} open")
    errors = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    assert errors == Counter()
    assert results == [{"id": n % 700} for n in range(tasks_n)]
    assert made <= size
    assert 1 <= peak.peak <= size


def test_a_call_waits_for_a_connection_given_back(own_redis_server: RedisServer) -> None:
    """With every connection in use, a get waits for one, and goes on when it comes back."""
    client = cachecow.connect(own_redis_server.url, timeout=1.0, max_connections=1)
    cache = Rows(client)
    held = client.connection_pool.get_connection()
    threading.Timer(0.2, client.connection_pool.release, args=(held,)).start()
    began = time.monotonic()
    assert cache.get("row", "id", 1) == {"id": 1}
    assert 0.15 <= time.monotonic() - began < 1.0
    client.close()


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_pool_wait_past_timeout_fails_promptly(
    own_redis_server: RedisServer, fail_open: bool
) -> None:
    """No connection comes back: the get gives up after about ``timeout``, as
    CacheUnavailable, or with ``fail_open`` as a plain fetch; it never hangs."""
    client = cachecow.connect(own_redis_server.url, timeout=0.3, max_connections=1)
    cache = Rows(client, fail_open=fail_open)
    held = client.connection_pool.get_connection()
    began = time.monotonic()
    if fail_open:
        assert cache.get("row", "id", 1) == {"id": 1}
        assert cache.fetches == 1
    else:
        with pytest.raises(CacheUnavailable, match="No connection available"):
            cache.get("row", "id", 1)
    elapsed = time.monotonic() - began
    assert 0.25 <= elapsed < 1.0, elapsed
    client.connection_pool.release(held)
    assert cache.get("row", "id", 2) == {"id": 2}  # the pool works again
    client.close()


def test_async_pool_wait_past_timeout_fails_promptly(own_redis_server: RedisServer) -> None:
    async def main() -> float:
        client = cachecow.connect_async(own_redis_server.url, timeout=0.3, max_connections=1)
        cache = AsyncRows(client)
        held = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        began = time.monotonic()
        with pytest.raises(CacheUnavailable, match="No connection available"):
            await cache.get("row", "id", 1)
        elapsed = time.monotonic() - began
        await client.connection_pool.release(held)
        assert await cache.get("row", "id", 1) == {"id": 1}
        await client.aclose()
        return elapsed

    assert 0.25 <= asyncio.run(main()) < 1.0


class _CountingPool(redis.BlockingConnectionPool):
    made = 0

    def make_connection(self) -> Any:
        type(self).made += 1
        return super().make_connection()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    "pool_class", [redis.BlockingConnectionPool, _CountingPool, redis.ConnectionPool]
)
def test_a_pool_class_of_ones_own(own_redis_server: RedisServer, pool_class: type) -> None:
    """``connection_pool_class`` through ``connect()`` (blocking or not, a subclass) is used,
    sized, and extra keyword arguments still reach the connections."""
    client = cachecow.connect(
        own_redis_server.url,
        max_connections=3,
        connection_pool_class=pool_class,
        client_name="own-pool",
    )
    assert type(client.connection_pool) is pool_class
    assert client.connection_pool.max_connections == 3
    cache = Rows(client)
    assert cache.get("row", "id", 1) == cache.get("row", "id", 1) == {"id": 1}
    cache.invalidate("row", "id", 1)
    with redis.Redis(port=own_redis_server.port) as admin:
        assert _clients(admin, "own-pool") == 1
    if pool_class is _CountingPool:
        assert _CountingPool.made == 1
    client.close()


def test_connect_sentinel_pool_waits(redis_sentinel_group: RedisSentinelGroup) -> None:
    """The Sentinel helper's pool blocks too: 50 threads on 4 connections, no errors."""
    group = redis_sentinel_group
    client = cachecow.connect_sentinel(
        group.sentinel_addresses, group.service_name, timeout=2.0, max_connections=4
    )
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    cache = Rows(client)
    errors: list[BaseException] = []

    def reader(n: int) -> None:
        for i in range(20):
            try:
                cache.get("sentinel-row", "id", (n * 20 + i) % 300)
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=reader, args=(n,)) for n in range(50)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    pool: Any = client.connection_pool
    assert errors == []
    assert len(pool._connections) <= 4
    client.close()


# -- ACL: no SCRIPT LOAD, maybe no EVALSHA ------------------------------------------------------


def test_the_docs_state_the_tested_acl() -> None:
    assert ACL_RULES in re.sub(r"\s+", " ", OPERATIONS.read_text(encoding="utf-8"))


def _acl_user(port: int, name: str, extra: str) -> str:
    """Create user ``name`` (password ``pw``) with :data:`ACL_RULES` and ``extra``; its URL."""
    with redis.Redis(port=port) as admin:
        admin.execute_command("ACL", "SETUSER", name, ">pw", *ACL_RULES.split(), *extra.split())
        admin.execute_command("ACL", "LOG", "RESET")
    return f"redis://{name}:pw@127.0.0.1:{port}/0"


def _refusals(port: int) -> dict[str, int]:
    """The ACL log: how many times each command was refused."""
    with redis.Redis(port=port, decode_responses=True) as admin:
        entries: Any = admin.execute_command("ACL", "LOG")
    found: dict[str, int] = {}
    for entry in entries:
        fields = (
            dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
        )
        found[str(fields["object"])] = found.get(str(fields["object"]), 0) + int(fields["count"])
    return found


@pytest.mark.parametrize(
    ("extra", "refused"),
    [("", "script|load"), ("-evalsha", "evalsha")],
    ids=["no-script", "no-evalsha"],
)
def test_an_acl_user_without_script_commands(
    own_redis_server: RedisServer, extra: str, refused: str
) -> None:
    """Gets (single and batched), hits, invalidations all work for a user without SCRIPT
    (and without EVALSHA); the refused command is tried once, then EVAL is used."""
    url = _acl_user(own_redis_server.port, "cow", extra)
    client = cachecow.connect(url)
    cache = Rows(client)
    for _ in range(3):
        assert cache.get("row", "id", 1) == {"id": 1}
    assert cache.fetches == 1  # cached: the miss committed, the rest were hits
    assert cache.get_many("row", "id", [1, 2, 3]) == [{"id": 1}, {"id": 2}, {"id": 3}]
    cache.invalidate("row", "id", 1)
    cache.invalidate_many("row", "id", [2, 3])
    assert cache.get("row", "id", 1) == {"id": 1}
    assert cache.fetches == 1 + 2 + 1
    assert cache.metrics.snapshot().redis_errors == 0
    assert _refusals(own_redis_server.port) == {refused: 1}  # remembered after one refusal
    with redis.Redis(port=own_redis_server.port) as admin:
        assert all(key.startswith(b"cachecow:") for key in admin.keys("*"))
    client.close()


def test_an_acl_user_without_script_commands_async(own_redis_server: RedisServer) -> None:
    url = _acl_user(own_redis_server.port, "acow", "-evalsha")

    async def main() -> None:
        client = cachecow.connect_async(url)
        cache = AsyncRows(client)
        for _ in range(3):
            assert await cache.get("row", "id", 1) == {"id": 1}
        assert await cache.get_many("row", "id", [1, 2]) == [{"id": 1}, {"id": 2}]
        await cache.invalidate("row", "id", 1)
        assert await cache.peek("row", "id", 1) is None
        assert await cache.get("row", "id", 1) == {"id": 1}
        assert cache.metrics.snapshot().redis_errors == 0
        await client.aclose()

    asyncio.run(main())
    assert _refusals(own_redis_server.port) == {"evalsha": 1}


def test_an_acl_that_refuses_the_keys_still_fails(own_redis_server: RedisServer) -> None:
    """EVAL refused too (keys outside the user's pattern): the error rises, and the cache
    does not switch to EVAL for good."""
    with redis.Redis(port=own_redis_server.port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "other", ">pw", "on", "resetkeys", "~elsewhere:*", "-@all",
            "+get", "+evalsha", "+eval",
        )  # fmt: skip
    client = cachecow.connect(f"redis://other:pw@127.0.0.1:{own_redis_server.port}/0")
    cache = Rows(client)
    with pytest.raises(CacheUnavailable):
        cache.get("row", "id", 1)
    assert not cache._io.eval_only
    client.close()


# -- TLS ----------------------------------------------------------------------------------------


def test_tls(redis_tls_server: RedisTLSServer) -> None:
    """``rediss://`` with the server's CA: get, hit, invalidate, over the blocking pool."""
    assert redis_tls_server.tls is not None
    client = cachecow.connect(
        redis_tls_server.tls_url, ssl_ca_certs=redis_tls_server.tls.ca_cert, max_connections=4
    )
    pool: Any = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert issubclass(pool.connection_class, redis.SSLConnection)
    cache = Rows(client)
    assert cache.get("row", "id", 1) == cache.get("row", "id", 1) == {"id": 1}
    assert cache.fetches == 1
    cache.invalidate("row", "id", 1)
    assert cache.peek("row", "id", 1) is None
    client.close()

    ca_cert = redis_tls_server.tls.ca_cert

    async def main() -> None:
        aclient = cachecow.connect_async(redis_tls_server.tls_url, ssl_ca_certs=ca_cert)
        assert isinstance(aclient.connection_pool, aredis.BlockingConnectionPool)
        acache = AsyncRows(aclient)
        assert await acache.get("row", "id", 2) == {"id": 2}
        await acache.invalidate("row", "id", 2)
        await aclient.aclose()

    asyncio.run(main())

    # Without the CA, the server's certificate is refused: CacheUnavailable, no plain text.
    untrusting = cachecow.connect(redis_tls_server.tls_url)
    with pytest.raises(CacheUnavailable):
        Rows(untrusting).get("row", "id", 1)
    untrusting.close()


def test_2000_tasks_share_one_async_cluster_client(
    redis_cluster_servers: RedisClusterServers,
) -> None:
    """redis-py's asyncio cluster client has no blocking pool: 2,000 tasks on one node pool of
    8 got MaxConnectionsError. The cache runs at most ``max_connections`` calls at a time, and
    the others wait their turn."""
    tasks_n, size = 2000, 8

    async def main() -> list[Any]:
        client = cachecow.connect_cluster_async(
            f"redis://127.0.0.1:{redis_cluster_servers.ports[0]}/0",
            timeout=2.0,
            max_connections=size,
        )
        cache = AsyncRows(client, prefix=f"cluster-load-{time.monotonic_ns()}:")
        try:
            return await asyncio.gather(
                *(cache.get("row", "id", n % 700) for n in range(tasks_n)),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    results = asyncio.run(main())
    errors = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    assert errors == Counter()
    assert results == [{"id": n % 700} for n in range(tasks_n)]


def test_a_cluster_connection_closed_during_checkout_is_a_connection_error(
    own_redis_server: RedisServer,
) -> None:
    """redis-py's cluster client disconnects a failed node's connections, those in use too; one
    closed between the checkout's connect() and its readiness poll made redis-py poll ``None``
    and raise TypeError, which the fault suite saw under failovers and resharding. The cluster
    pool turns it into the dropped connection it is (the cluster client retries those); redis-py
    8.2 raises that itself."""
    pool = ClusterBlockingPool(port=own_redis_server.port, max_connections=2, timeout=0.5)
    connection = pool.get_connection()
    pool.release(connection)

    def closed_meanwhile(timeout: float = 0) -> bool:
        # another thread's disconnect, caught halfway: the parser's socket is gone already,
        # its reader not yet
        connection._parser._sock = None
        return bool(connection._parser.can_read(timeout))

    connection.can_read = closed_meanwhile  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError, match=r"closed during checkout|closed by server"):
        pool.get_connection()
    pool.disconnect()
