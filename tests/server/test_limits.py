"""Hardening: foreign data under cachecow's keys, leases given back when a commit fails (out of
memory, a value over proto-max-bulk-len), and values too large to cache (``max_value_bytes``).
Batches of any size: ``tests/scale``.

Each test runs on a real redis-server: the session's, or one of its own where it needs a
setting (``maxmemory`` with ``noeviction``, ``proto-max-bulk-len``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import redis

import cachecow
from cachecow import CacheCow, CacheUnavailable, ConfigurationError
from cachecow.testing import RedisServer
from cachecow.testing.plugin import require_server


class Rows(CacheCow):
    """Rows ``{"id": i}`` for every id in ``ids`` (all of them unless set), fetched in one call."""

    def __init__(self, redis: redis.Redis, **options: Any) -> None:
        super().__init__(redis, **options)
        self.ids: set[int] | None = None
        self.extra: dict[str, Any] = {}  # more fields for every row (to make it large)
        self.fetches = 0
        self.on_fetch: Any = None  # called before fetch / fetch_many return

    def row(self, id_val: Any) -> dict[str, Any] | None:
        if self.ids is not None and id_val not in self.ids:
            return None
        return {"id": id_val, **self.extra}

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.fetches += 1
        if self.on_fetch is not None:
            self.on_fetch()
        return self.row(id_val)

    def fetch_many(self, cls: Any, id_field: Any, id_vals: Sequence[Any]) -> Mapping[Any, Any]:
        if self.on_fetch is not None:
            self.on_fetch()
        return {v: row for v in id_vals if (row := self.row(v)) is not None}


def flags_left(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match="*:lease", count=10_000))


# -- foreign data under cachecow's keys ------------------------------------------------------


def test_a_hash_at_the_value_key_is_removed_by_get(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    value_key, flag_key = cache.get_keys("row", "id", 1)
    redis_client.hset(value_key, "foreign", "data")
    assert cache.get("row", "id", 1) == {"id": 1}
    assert redis_client.type(value_key) == b"string"  # replaced by the value
    assert not redis_client.exists(flag_key)
    assert cache.get("row", "id", 1) == {"id": 1}
    snap = cache.metrics.snapshot()
    assert (snap.corrupt_keys, snap.leases, snap.commits, snap.hits) == (1, 1, 1, 1)
    redis_client.delete(value_key)
    redis_client.hset(value_key, "foreign", "data")
    assert cache.peek("row", "id", 1) is None  # a miss, not WRONGTYPE
    assert redis_client.type(value_key) == b"hash"  # peek leaves it to get
    snap = cache.metrics.snapshot()
    assert (snap.corrupt_keys, snap.misses, snap.redis_errors) == (2, 2, 0)


def test_a_list_at_the_value_key_while_another_reader_holds_the_lease(
    redis_client: redis.Redis,
) -> None:
    cache = Rows(redis_client, busy="fetch")
    value_key, flag_key = cache.get_keys("row", "id", 1)
    redis_client.rpush(value_key, "foreign")
    redis_client.set(flag_key, "another reader's token", px=10_000)
    assert cache.get("row", "id", 1) == {"id": 1}  # busy: fetched, not cached
    assert not redis_client.exists(value_key)  # deleted all the same
    snap = cache.metrics.snapshot()
    assert (snap.corrupt_keys, snap.busy, snap.redis_errors) == (1, 1, 0)


def test_a_hash_at_the_flag_key_is_replaced_by_this_readers_lease(
    redis_client: redis.Redis,
) -> None:
    cache = Rows(redis_client)
    value_key, flag_key = cache.get_keys("row", "id", 1)
    redis_client.hset(flag_key, "foreign", "data")
    assert cache.get("row", "id", 1) == {"id": 1}
    assert not redis_client.exists(flag_key)
    assert redis_client.exists(value_key)
    snap = cache.metrics.snapshot()
    assert (snap.corrupt_keys, snap.leases, snap.commits, snap.waits) == (1, 1, 1, 0)


def test_foreign_data_in_a_batch(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    keys = {i: cache.get_keys("row", "id", i) for i in (1, 2, 3)}
    redis_client.hset(keys[1][1], "foreign", "flag")  # a hash at a flag key
    redis_client.sadd(keys[2][0], "foreign value")  # a set at a value key
    assert cache.get_many("row", "id", [1, 2, 3]) == [{"id": 1}, {"id": 2}, {"id": 3}]
    for value_key, flag_key in keys.values():
        assert redis_client.type(value_key) == b"string"
        assert not redis_client.exists(flag_key)
    snap = cache.metrics.snapshot()
    # The flag key and the value key of another type, each deleted and counted.
    assert (snap.corrupt_keys, snap.commits, snap.redis_errors) == (2, 3, 0)


def test_a_hash_at_the_flag_key_written_during_the_fetch(redis_client: redis.Redis) -> None:
    """commit.lua and release.lua meet the foreign flag: refused and untouched, not WRONGTYPE."""
    cache = Rows(redis_client)
    value_key, flag_key = cache.get_keys("row", "id", 1)

    def foreign_flag() -> None:
        redis_client.delete(flag_key)
        redis_client.hset(flag_key, "foreign", "data")

    cache.on_fetch = foreign_flag
    assert cache.get("row", "id", 1) == {"id": 1}  # the commit is refused
    assert not redis_client.exists(value_key)
    cache.extra = {"x": "y" * 100}
    # now the lease is released instead of committed
    cache.options = dataclasses.replace(cache.options, max_value_bytes=10)
    assert cache.get("row", "id", 1) == {"id": 1, "x": "y" * 100}
    snap = cache.metrics.snapshot()
    assert (snap.stale_commits, snap.corrupt_keys, snap.redis_errors) == (1, 1, 0)
    assert redis_client.type(flag_key) == b"hash"  # release.lua left the new foreign one alone


def test_a_flag_without_ttl_gets_one_and_does_not_block_readers(
    redis_client: redis.Redis,
) -> None:
    cache = Rows(redis_client, flag_ttl=0.2, wait_timeout=5.0)
    value_key, flag_key = cache.get_keys("row", "id", 1)
    redis_client.set(flag_key, "written by someone else")  # no TTL: a lease forever
    start = time.monotonic()
    assert cache.get("row", "id", 1) == {"id": 1}
    assert time.monotonic() - start < 2.0  # waited about flag_ttl, not wait_timeout
    assert redis_client.exists(value_key)  # the reader leased once the flag expired
    assert not redis_client.exists(flag_key)
    snap = cache.metrics.snapshot()
    assert (snap.corrupt_keys, snap.busy, snap.leases, snap.commits) == (1, 1, 1, 1)
    assert snap.wait_timeouts == 0


def test_a_flag_without_ttl_in_a_batch(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client, flag_ttl=10.0, busy="fetch")
    flag_key = cache.get_keys("row", "id", 1)[1]
    redis_client.set(flag_key, "written by someone else")
    assert cache.get_many("row", "id", [1, 2]) == [{"id": 1}, {"id": 2}]
    assert 0 < redis_client.pttl(flag_key) <= 10_000
    snap = cache.metrics.snapshot()
    assert (snap.corrupt_keys, snap.busy, snap.commits) == (1, 1, 1)


# -- 3. a failed commit gives its lease back ----------------------------------------------------


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    """A server that refuses writes when full (``noeviction``) and takes values of 1 MB at
    most (``proto-max-bulk-len``)."""
    server = require_server(
        RedisServer(
            extra_args=(
                "--maxmemory", "64mb",
                "--maxmemory-policy", "noeviction",
                "--proto-max-bulk-len", "1mb",
            )
        )
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def fill_memory(client: redis.Redis) -> None:
    """Out of memory: maxmemory brought below what the server uses (no filler to write, whose
    own query buffer would make the OOM come and go)."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used // 2)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "x")


def free_memory(client: redis.Redis) -> None:
    client.config_set("maxmemory", "64mb")


def test_out_of_memory_at_commit_releases_the_lease(small_redis: RedisServer) -> None:
    client = cachecow.connect(small_redis.url, timeout=2.0)
    admin = redis.Redis(port=small_redis.port)
    cache = Rows(client, wait_timeout=5.0)
    value_key, flag_key = cache.get_keys("row", "id", 1)
    cache.on_fetch = lambda: fill_memory(admin)
    with pytest.raises(CacheUnavailable, match="OutOfMemoryError"):
        cache.get("row", "id", 1)
    assert not admin.exists(flag_key)  # given back, not left for flag_ttl
    free_memory(admin)
    cache.on_fetch = None
    start = time.monotonic()
    assert cache.get("row", "id", 1) == {"id": 1}
    assert time.monotonic() - start < 1.0
    snap = cache.metrics.snapshot()
    assert (snap.leases, snap.busy, snap.waits, snap.commits) == (2, 0, 0, 1)
    assert admin.exists(value_key)


def test_out_of_memory_at_a_batch_commit_releases_the_leases(small_redis: RedisServer) -> None:
    client = cachecow.connect(small_redis.url, timeout=2.0)
    admin = redis.Redis(port=small_redis.port)
    cache = Rows(client, fail_open=True)
    cache.on_fetch = lambda: fill_memory(admin)
    ids = list(range(50))
    assert cache.get_many("row", "id", ids) == [{"id": i} for i in ids]  # served, not cached
    assert flags_left(admin) == 0
    free_memory(admin)
    cache.on_fetch = None
    assert cache.get_many("row", "id", ids) == [{"id": i} for i in ids]
    snap = cache.metrics.snapshot()
    assert (snap.leases, snap.busy, snap.commits) == (100, 0, 50)


def test_a_value_over_proto_max_bulk_len_releases_the_lease(small_redis: RedisServer) -> None:
    """Redis answers a bulk string over proto-max-bulk-len with a protocol error and drops
    the connection: the commit failed, and the release goes over a new connection."""
    client = cachecow.connect(small_redis.url, timeout=2.0)
    admin = redis.Redis(port=small_redis.port)
    cache = Rows(client, fail_open=True, max_value_bytes=None, wait_timeout=5.0)
    cache.extra = {"blob": "b" * 1_100_000}  # over 1 MB serialized
    value_key, flag_key = cache.get_keys("row", "id", 1)
    assert cache.get("row", "id", 1)["id"] == 1
    assert not admin.exists(flag_key)
    start = time.monotonic()
    assert cache.get("row", "id", 1)["id"] == 1
    assert time.monotonic() - start < 1.0  # leased at once, not a wait for the first lease
    assert cache.get_many("row", "id", [2, 3])[1]["id"] == 3
    assert flags_left(admin) == 0
    snap = cache.metrics.snapshot()
    assert (snap.leases, snap.busy, snap.commits) == (4, 0, 0)
    assert not admin.exists(value_key)


# -- 4. max_value_bytes -------------------------------------------------------------------------


def test_an_oversized_value_is_returned_but_not_cached(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Rows(redis_client, max_value_bytes=1000)
    cache.extra = {"blob": "b" * 2000}
    with caplog.at_level(logging.WARNING, logger="cachecow"):
        assert cache.get("row", "id", 1)["blob"] == "b" * 2000
        assert cache.get("row", "id", 1)["id"] == 1
        assert [row["id"] for row in cache.get_many("row", "id", [2, 3])] == [2, 3]
    assert redis_client.dbsize() == 0  # no value, and every lease given back
    snap = cache.metrics.snapshot()
    assert (snap.oversized_values, snap.commits, snap.fetches) == (4, 0, 4)
    warnings = [r for r in caplog.records if "max_value_bytes" in r.getMessage()]
    assert len(warnings) == 1  # once per model and field
    cache.extra = {}
    assert cache.get("row", "id", 1) == {"id": 1}  # small again: cached
    assert cache.metrics.snapshot().commits == 1


def test_max_value_bytes_defaults_to_one_mebibyte(redis_client: redis.Redis) -> None:
    cache = Rows(redis_client)
    assert cache.options.max_value_bytes == 1_048_576
    cache.extra = {"blob": "b" * 1_048_576}
    cache.get("row", "id", 1)
    assert redis_client.dbsize() == 0
    assert cache.metrics.snapshot().oversized_values == 1
    unlimited = Rows(redis_client, max_value_bytes=None)
    unlimited.extra = cache.extra
    unlimited.get("row", "id", 1)
    assert unlimited.metrics.snapshot().commits == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1000"])
def test_max_value_bytes_is_validated(redis_client: redis.Redis, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_value_bytes"):
        Rows(redis_client, max_value_bytes=bad)
