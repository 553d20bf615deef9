"""Batches: object invalidation over old and new unique values, cluster-slot grouping, Redis
commands per operation (INFO commandstats), and edge inputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from cachecow import CacheCow, InvalidLookup, NotFound
from cachecow.keys import Field
from cachecow.testing import free_port
from cachecow.testing.contract import FetchProbe
from cachecow.testing.plugin import CountingRedis


class Users(CacheCow):
    """Users with two unique lookups: ``id`` and ``email``."""

    def __init__(self, redis: redis.Redis, **options: Any) -> None:
        super().__init__(redis, **options)
        self.rows: dict[int, dict[str, Any]] = {}

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        for row in self.rows.values():
            if row[id_field] == id_val:
                return dict(row)
        return None

    def unique_lookups(self, obj: Any) -> Iterable[tuple[Field, Any]]:
        return [("id", obj["id"]), ("email", obj["email"])]


def test_invalidate_object_clears_old_and_new_unique_values(redis_client: redis.Redis) -> None:
    cache = Users(redis_client)
    cache.rows[1] = {"id": 1, "email": "old@x.io", "name": "Ada"}
    old = cache.get("user", "email", "old@x.io")
    assert cache.get("user", "id", 1) == old
    with pytest.raises(NotFound):
        cache.get("user", "email", "new@x.io")  # a tombstone under the new email
    cache.rows[1] = {"id": 1, "email": "new@x.io", "name": "Ada"}  # the write, committed
    new = dict(cache.rows[1])
    cache.invalidate_object(new, previous=old, model="user")
    assert cache.get("user", "email", "new@x.io") == new  # the tombstone is gone
    assert cache.get("user", "id", 1) == new
    with pytest.raises(NotFound):
        cache.get("user", "email", "old@x.io")  # the old lookup no longer finds the row


def test_invalidate_object_without_previous_misses_the_old_value(redis_client: redis.Redis) -> None:
    """Why ``previous`` matters: without it the old email's entry survives the write."""
    cache = Users(redis_client)
    cache.rows[1] = {"id": 1, "email": "old@x.io"}
    old = cache.get("user", "email", "old@x.io")
    cache.rows[1] = {"id": 1, "email": "new@x.io"}
    cache.invalidate_object(dict(cache.rows[1]), model="user")
    assert cache.get("user", "email", "old@x.io") == old  # stale until its TTL


def test_invalidate_object_is_one_round_trip(redis_server: Any) -> None:
    client = CountingRedis(redis_server.port)
    cache = Users(client)
    cache.invalidate_object({"id": 1, "email": "a"}, previous={"id": 1, "email": "b"}, model="u")
    client.reset_round_trips()
    cache.invalidate_object({"id": 1, "email": "a"}, previous={"id": 1, "email": "b"}, model="u")
    assert client.round_trips == 1
    assert cache.metrics.snapshot().invalidations == 2 * 3  # id, new email, old email (deduped)


def test_unique_lookups_is_required_for_invalidate_object(redis_client: redis.Redis) -> None:
    class Plain(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            return None

    with pytest.raises(NotImplementedError, match="unique_lookups"):
        Plain(redis_client).invalidate_object({"id": 1})


def test_slot_groups_keep_each_slot_together(redis_client: redis.Redis) -> None:
    cache = Users(redis_client)
    cache._group_by_slot = True
    keys = [cache.get_keys("user", "id", i)[0] for i in range(300)]
    groups = cache._slot_groups(keys)
    assert sorted(k for g in groups for k in g) == sorted(keys)
    for group in groups:
        assert len({key_slot(k.encode()) for k in group}) == 1
    assert len(groups) == len({key_slot(k.encode()) for k in keys}) > 200
    cache._group_by_slot = False
    assert cache._slot_groups(keys) == [keys]  # a standalone client sends one call


def test_slot_grouped_batches_work_end_to_end(redis_client: redis.Redis) -> None:
    """The cluster code path (one script call per slot, in one pipeline) on a real server."""
    cache = Users(redis_client)
    cache._group_by_slot = True
    for i in range(1, 41):
        cache.rows[i] = {"id": i, "email": f"{i}@x.io"}
    probe = FetchProbe(cache)
    ids = list(range(1, 41))
    assert [u["id"] for u in cache.get_many("user", "id", ids)] == ids
    assert [u["id"] for u in cache.get_many("user", "id", ids)] == ids
    assert probe.many_calls == 1
    snap = cache.metrics.snapshot()
    assert (snap.commits, snap.hits) == (40, 40)
    cache.invalidate_many("user", "id", ids)
    assert redis_client.dbsize() == 0


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def delta(client: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    after = commandstats(client)
    out = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    out.pop("info", None)
    return out


def test_redis_commands_per_operation(redis_client: redis.Redis) -> None:
    """What each operation costs the server, from INFO commandstats (commands run inside a
    script are counted too)."""
    cache = Users(redis_client)
    for i in range(1, 101):
        cache.rows[i] = {"id": i, "email": f"{i}@x.io"}
    cache.rows[1000] = {"id": 1000, "email": "warm@x.io"}
    cache.get("user", "id", 1000)  # load the scripts
    cache.get_many("user", "id", [1000])
    ids = list(range(1, 101))
    measured = {}
    for name, call in [
        ("get miss", lambda: cache.get("user", "id", 1)),
        ("get hit", lambda: cache.get("user", "id", 1)),
        ("invalidate", lambda: cache.invalidate("user", "id", 1)),
        ("get_many 100 misses", lambda: cache.get_many("user", "id", ids)),
        ("get_many 100 hits", lambda: cache.get_many("user", "id", ids)),
        ("invalidate_many 100", lambda: cache.invalidate_many("user", "id", ids)),
    ]:
        before = commandstats(redis_client)
        call()
        measured[name] = delta(redis_client, before)
    print()
    for name, counts in measured.items():
        print(f"{name:22} {counts}")
    assert measured["get miss"] == {"evalsha": 2, "get": 2, "set": 2, "del": 1}
    assert measured["get hit"] == {"evalsha": 1, "get": 1}
    assert measured["invalidate"] == {"del": 1}
    misses = {"evalsha": 2, "mget": 2, "exists": 100, "set": 200, "del": 1}
    assert measured["get_many 100 misses"] == misses
    assert measured["get_many 100 hits"] == {"evalsha": 1, "mget": 1}
    assert measured["invalidate_many 100"] == {"del": 1}


def test_batch_inputs(redis_client: redis.Redis) -> None:
    cache = Users(redis_client)
    cache.rows[1] = {"id": 1, "email": "a@x.io"}
    assert cache.get_many("user", "id", []) == []
    assert cache.get_many("user", "id", iter([1])) == [cache.rows[1]]
    cache.invalidate_many("user", "id", [])
    with pytest.raises(InvalidLookup, match="iterable"):
        cache.get_many("user", "id", "123")
    with pytest.raises(InvalidLookup, match="iterable"):
        cache.get_many("user", "id", 5)


def test_composite_batch_in_any_field_order(redis_client: redis.Redis) -> None:
    calls: list[tuple[Any, Any]] = []

    class Members(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            calls.append((id_field, id_val))
            org, user = id_val
            return {"org": org, "user": user}

    cache = Members(redis_client)
    got = cache.get_many("m", ("user", "org"), [(2, 1), (3, 1)])
    assert got == [{"org": 1, "user": 2}, {"org": 1, "user": 3}]
    assert calls == [(("org", "user"), (1, 2)), (("org", "user"), (1, 3))]
    assert cache.get_many("m", ("org", "user"), [(1, 3), (1, 2)]) == got[::-1]
    assert len(calls) == 2  # hits, whatever the field order


def test_undecodable_values_in_a_batch_are_repaired(redis_client: redis.Redis) -> None:
    cache = Users(redis_client)
    for i in (1, 2):
        cache.rows[i] = {"id": i, "email": f"{i}@x.io"}
    cache.get_many("user", "id", [1, 2])
    redis_client.set(cache.get_keys("user", "id", 1)[0], b"\xff garbage")
    assert cache.get_many("user", "id", [1, 2]) == [cache.rows[1], cache.rows[2]]
    snap = cache.metrics.snapshot()
    assert (snap.decode_failures, snap.commits, snap.hits) == (1, 3, 1)
    assert cache.get_many("user", "id", [1, 2]) == [cache.rows[1], cache.rows[2]]
    assert cache.metrics.snapshot().hits == 3


def test_batch_fail_open_on_a_closed_port() -> None:
    import cachecow

    cache = Users(
        cachecow.connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3), fail_open=True
    )
    cache.rows[1] = {"id": 1, "email": "a"}
    assert cache.get_many("user", "id", [1, 2]) == [cache.rows[1], None]
    snap = cache.metrics.snapshot()
    assert (snap.fail_open_fetches, snap.redis_errors) == (2, 1)
