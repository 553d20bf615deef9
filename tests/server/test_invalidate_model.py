"""``invalidate_model``: every entry of one model deleted (values, tombstones and leases), none of
another's; and the interleaving a single ``SCAN`` cannot close, forced: a reader that read the
old data before the call commits it while the scan runs, on a key the scan has passed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachecow import ConfigurationError, InvalidationFailed
from cachecow.testing.contract import FakeClock, FetchProbe
from cachecow.testing.plugin import async_twin
from tests.server.test_contract_dict import AsyncDictCache, DictCache


def rows(version: int = 0) -> dict[int, dict[str, Any]]:
    return {i: {"id": i, "payload": f"p{i}:{version}"} for i in range(1, 31)}


def fill(cache: Any, model: str, ids: range) -> None:
    for i in ids:
        try:
            cache.get(model, "id", i)
        except Exception:  # a tombstone is an entry too
            pass


def entries(client: redis.Redis, cache: Any, model: str) -> int:
    return len(list(client.scan_iter(match=cache.model_keys_pattern(model), count=1000)))


def test_deletes_one_models_values_tombstones_and_leases_only(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows())
    cache.scan_count = 7  # several SCAN steps and deletes
    fill(cache, "row", range(1, 41))  # 30 values and 10 tombstones
    fill(cache, "other", range(1, 6))
    flag_key = cache.get_keys("row", "id", 99)[1]
    redis_client.set(flag_key, "someone's lease", px=10_000)
    assert entries(redis_client, cache, "row") == 41
    assert cache.invalidate_model("row", settle=False) == 41
    assert entries(redis_client, cache, "row") == 0
    assert entries(redis_client, cache, "other") == 5
    assert cache.metrics.snapshot().invalidations == 41


def test_a_model_label_is_matched_literally(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows())
    fill(cache, "a*", range(1, 3))
    fill(cache, "ab", range(1, 3))
    assert cache.model_keys_pattern("a*").endswith("a\\*:*")
    assert cache.invalidate_model("a*", settle=False) == 2
    assert entries(redis_client, cache, "ab") == 2


def test_a_lease_in_flight_cannot_commit_after_it(redis_client: redis.Redis) -> None:
    db = rows()
    cache = DictCache(redis_client, db)
    probe = FetchProbe.of(cache)
    probe.gate_next()
    reader = threading.Thread(target=cache.get, args=("row", "id", 1))
    reader.start()
    probe.wait_fetched()  # the reader holds the lease and has read version 0
    db.update(rows(1))  # a data migration commits
    cache.invalidate_model("row", settle=False)
    probe.release()
    reader.join(10)
    assert cache.metrics.snapshot().stale_commits == 1
    assert cache.get("row", "id", 1)["payload"] == "p1:1"


class MissingScan:
    """The first SCAN of the model misses key 1 (SCAN may miss a key written while it runs),
    and the reader holding key 1's lease commits the old row while that scan is under way."""

    def __init__(self, cache: Any, commit: threading.Event, committed: threading.Event) -> None:
        self.cache, self.real = cache, cache._io.scan
        self.commit, self.committed = commit, committed
        self.passes = 0

    def __call__(self, pattern: str, count: int) -> Iterator[bytes]:
        self.passes += 1
        hidden = {key.encode() for key in self.cache.get_keys("row", "id", 1)}
        for key in self.real(pattern, count):
            if self.passes == 1 and key in hidden:
                continue
            yield key
        if self.passes == 1:  # the scan has passed key 1: now the reader commits
            self.commit.set()
            assert self.committed.wait(10)


@pytest.mark.parametrize("settle", [True, False])
def test_a_commit_the_scan_missed_is_deleted_once_old_leases_expired(
    redis_client: redis.Redis, settle: bool
) -> None:
    db = rows()
    cache = DictCache(redis_client, db, flag_ttl=1.0)
    fill(cache, "row", range(2, 11))
    probe = FetchProbe.of(cache)
    probe.gate_next()
    reader = threading.Thread(target=cache.get, args=("row", "id", 1))
    reader.start()
    probe.wait_fetched()  # read version 0 before the migration
    db.update(rows(1))  # the migration commits, then the model is invalidated
    commit, committed = threading.Event(), threading.Event()

    def reader_commits() -> None:
        assert commit.wait(10)
        probe.release()
        reader.join(10)
        committed.set()

    threading.Thread(target=reader_commits).start()
    cache._io.scan = MissingScan(cache, commit, committed)
    cache.invalidate_model("row", settle=settle)
    cached = redis_client.get(cache.get_keys("row", "id", 1)[0])
    if settle:  # the second scan, after every old lease expired, finds the old row
        assert cached is None
        assert cache.get("row", "id", 1)["payload"] == "p1:1"
    else:  # without it, the old row stays cached: what settle is for
        assert cached is not None
        assert b"p1:0" in cached


def test_settle_waits_for_the_leases_taken_before_the_call(redis_client: redis.Redis) -> None:
    clock = FakeClock()  # stands still while the first pass runs
    cache = DictCache(redis_client, rows(), flag_ttl=2.0, clock=clock)
    cache.invalidate_model("row")
    assert clock.sleeps == [pytest.approx(2.0 * 1.01 + 0.01)]


def test_a_failed_scan_raises_invalidation_failed(redis_client: redis.Redis) -> None:
    cache = DictCache(redis_client, rows())

    def broken(pattern: str, count: int) -> Iterator[bytes]:
        raise redis.ConnectionError("down")
        yield b""  # pragma: no cover

    cache._io.scan = broken
    with pytest.raises(InvalidationFailed, match="run it again"):
        cache.invalidate_model("row", settle=False)


def test_overridden_keys_need_their_own_pattern(redis_client: redis.Redis) -> None:
    class OwnKeys(DictCache):
        def get_keys(self, cls: Any, id_field: Any, id_val: Any) -> tuple[str, str]:
            return f"mine:{{{id_val}}}", f"mine:{{{id_val}}}:lease"

    with pytest.raises(ConfigurationError, match="model_keys_pattern"):
        OwnKeys(redis_client, rows()).invalidate_model("row")


def test_the_async_class_invalidates_a_model(redis_client: redis.Redis) -> None:
    async def run() -> int:
        cache = AsyncDictCache(async_twin(redis_client), rows(), flag_ttl=0.05)
        for i in range(1, 11):
            await cache.get("row", "id", i)
        deleted = await cache.invalidate_model("row")
        await cache.redis.aclose()
        return deleted

    assert asyncio.run(run()) == 10
    assert entries(redis_client, DictCache(redis_client, rows()), "row") == 0
