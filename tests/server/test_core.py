"""CacheCow behaviour beyond the contract: lookups, hooks, serializers, config, metrics."""

from __future__ import annotations

import linecache
import logging
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import cachecow
from cachecow import (
    CacheCow,
    ConfigurationError,
    InvalidLookup,
    MsgpackSerializer,
    NotFound,
    PickleSerializer,
)


@dataclass
class Member:
    org_id: int
    user_id: int
    role: str


class MemberCache(CacheCow):
    """Rows keyed by (org_id, user_id), fetched from a dict; records the lookups it got."""

    def __init__(self, redis: redis.Redis, **options: Any) -> None:
        super().__init__(redis, **options)
        self.rows = {(1, 2): {"org_id": 1, "user_id": 2, "role": "admin"}}
        self.lookups: list[tuple[Any, Any]] = []

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.lookups.append((id_field, id_val))
        if id_field == ("org_id", "user_id"):
            return self.rows.get(id_val)
        if id_field == "id":
            return {"id": id_val} if isinstance(id_val, int) and id_val < 100 else None
        raise AssertionError(f"unexpected lookup {id_field!r}")


def test_composite_lookup_field_order_never_changes_the_entry(redis_client: redis.Redis) -> None:
    cache = MemberCache(redis_client)
    assert cache.get(Member, ("org_id", "user_id"), (1, 2))["role"] == "admin"
    assert cache.get(Member, ("user_id", "org_id"), (2, 1))["role"] == "admin"
    assert cache.get(Member, ["user_id", "org_id"], [2, 1])["role"] == "admin"
    assert cache.lookups == [(("org_id", "user_id"), (1, 2))]  # fetched once, canonical order
    assert cache.metrics.snapshot().hits == 2
    cache.rows[(1, 2)]["role"] = "owner"
    cache.invalidate(Member, ("user_id", "org_id"), (2, 1))
    assert cache.get(Member, ("org_id", "user_id"), (1, 2))["role"] == "owner"


def test_composite_lookup_errors(redis_client: redis.Redis) -> None:
    cache = MemberCache(redis_client)
    with pytest.raises(InvalidLookup, match="needs a tuple of 2 values"):
        cache.get(Member, ("org_id", "user_id"), (1,))
    with pytest.raises(InvalidLookup, match="twice"):
        cache.get(Member, ("org_id", "org_id"), (1, 1))
    with pytest.raises(InvalidLookup):
        cache.invalidate(Member, "", 1)
    assert cache.lookups == []
    assert redis_client.dbsize() == 0


def test_unencodable_lookup_value_fails_before_touching_redis(redis_client: redis.Redis) -> None:
    cache = MemberCache(redis_client)
    with pytest.raises(InvalidLookup, match="no stable text form"):
        cache.get(Member, "id", object())
    assert cache.lookups == []


def test_wrong_type_lookup_is_served_but_never_cached(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """get('id', '5') for an integer id: a correct answer, no entry invalidate(5) would miss."""

    class Coercing(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            return {"id": int(id_val)}  # as an ORM coerces '5' to 5

    cache = Coercing(redis_client)
    with caplog.at_level(logging.WARNING, logger="cachecow"):
        assert cache.get("user", "id", "5") == {"id": 5}
        assert cache.get("user", "id", "5") == {"id": 5}
    assert redis_client.dbsize() == 0  # no value, and the lease was released
    snap = cache.metrics.snapshot()
    assert (snap.uncacheable, snap.fetches, snap.commits) == (2, 2, 0)
    assert len([r for r in caplog.records if "fails verify" in r.getMessage()]) == 1
    assert cache.get("user", "id", 5) == {"id": 5}
    assert cache.get_keys("user", "id", 5) != cache.get_keys("user", "id", "5")
    assert redis_client.exists(cache.get_keys("user", "id", 5)[0])


def test_fetch_returning_none_is_not_found(redis_client: redis.Redis) -> None:
    cache = MemberCache(redis_client)
    with pytest.raises(NotFound) as raised:
        cache.get(Member, "id", 500)
    assert (raised.value.model, raised.value.field, raised.value.value) == (Member, "id", 500)
    assert isinstance(raised.value, LookupError)
    with pytest.raises(NotFound):
        cache.get(Member, "id", 500)
    assert len(cache.lookups) == 1


def test_not_found_hook_gives_the_same_exception_type_both_times(
    redis_client: redis.Redis,
) -> None:
    class DoesNotExist(Exception):
        pass

    class OrmCache(MemberCache):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            self.lookups.append((id_field, id_val))
            raise NotFound(cls, id_field, id_val)

        def not_found(self, cls: Any, id_field: Any, id_val: Any) -> BaseException:
            return DoesNotExist(f"{id_field}={id_val}")

    cache = OrmCache(redis_client)
    for _ in range(3):
        with pytest.raises(DoesNotExist, match="id=7"):
            cache.get(Member, "id", 7)
    assert len(cache.lookups) == 1
    assert cache.metrics.snapshot().tombstone_hits == 2


def test_hits_never_call_fetch(redis_client: redis.Redis) -> None:
    cache = MemberCache(redis_client)
    cache.get(Member, "id", 1)

    def broken(*args: Any) -> Any:
        raise AssertionError("fetch on a hit")

    cache.fetch = broken  # type: ignore[method-assign]
    assert cache.get(Member, "id", 1) == {"id": 1}


def test_base_class_without_fetch(redis_client: redis.Redis) -> None:
    cache = CacheCow(redis_client)
    with pytest.raises(NotImplementedError, match="must implement fetch"):
        cache.get("thing", "id", 1)
    assert redis_client.dbsize() == 0  # the lease was released


def test_pickle_serializer_signature_failure_is_a_miss(redis_client: redis.Redis) -> None:
    class PickledCache(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            return Member(org_id=id_val, user_id=0, role="r")

    key = b"k" * 32
    cache = PickledCache(redis_client, serializer=PickleSerializer(key))
    assert cache.get(Member, "org_id", 3) == Member(3, 0, "r")
    value_key = cache.get_keys(Member, "org_id", 3)[0]
    assert redis_client.get(value_key) == PickleSerializer(key).dumps(Member(3, 0, "r"))
    forged = PickleSerializer(b"x" * 32).dumps(Member(3, 0, "forged"))
    redis_client.set(value_key, forged)
    assert cache.get(Member, "org_id", 3) == Member(3, 0, "r")
    assert cache.metrics.snapshot().decode_failures == 1
    assert redis_client.get(value_key) != forged  # repaired


def test_msgpack_serializer_round_trip(redis_client: redis.Redis) -> None:
    class BinCache(CacheCow):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            return {"id": id_val, "blob": b"\x00\xff", "tags": ["a", "b"], "n": None}

    cache = BinCache(redis_client, serializer=MsgpackSerializer())
    first = cache.get("bin", "id", 1)
    assert (
        cache.get("bin", "id", 1)
        == first
        == {
            "id": 1,
            "blob": b"\x00\xff",
            "tags": ["a", "b"],
            "n": None,
        }
    )
    assert cache.metrics.snapshot().hits == 1


def test_custom_get_keys_and_prefix(redis_client: redis.Redis) -> None:
    class Custom(MemberCache):
        def get_keys(self, cls: Any, id_field: Any, id_val: Any) -> tuple[str, str]:
            return f"my:{{{id_val}}}", f"my:{{{id_val}}}:f"

    Custom(redis_client).get(Member, "id", 4)
    assert redis_client.exists("my:{4}")
    MemberCache(redis_client, prefix="app1:").get(Member, "id", 4)
    assert list(redis_client.keys("app1:*")) == [
        MemberCache(redis_client, prefix="app1:").get_keys(Member, "id", 4)[0].encode()
    ]
    key = MemberCache(redis_client).get_keys(Member, "id", 4)[0]
    assert key.startswith(f"cachecow:{Member.__module__}.Member:id:{{")


def test_metrics_hook_sees_every_increment(redis_client: redis.Redis) -> None:
    events: list[tuple[str, int]] = []
    cache = MemberCache(redis_client, metrics_hook=lambda name, n: events.append((name, n)))
    cache.get(Member, "id", 1)
    cache.get(Member, "id", 1)
    cache.invalidate(Member, "id", 1)
    names = [name for name, _ in events]
    assert names == ["misses", "leases", "fetches", "commits", "hits", "invalidations"]
    snap = cache.metrics.snapshot().as_dict()
    assert {k: v for k, v in snap.items() if v} == dict.fromkeys(names, 1)
    cache.metrics.reset()
    assert not any(cache.metrics.snapshot().as_dict().values())


def test_client_with_decode_responses_is_refused(redis_server: Any) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        MemberCache(client)
    with pytest.raises(ConfigurationError, match="redis-py client"):
        MemberCache("redis://localhost")  # type: ignore[arg-type]


def test_a_client_of_the_other_kind_is_refused_at_construction(redis_server: Any) -> None:
    import redis.asyncio as aredis

    sync_client = redis.Redis(port=redis_server.port)
    async_client = aredis.Redis(port=redis_server.port)
    with pytest.raises(ConfigurationError, match="an asyncio client: use AsyncCacheCow"):
        MemberCache(async_client)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="a synchronous client: use CacheCow"):
        cachecow.AsyncCacheCow(sync_client)  # type: ignore[arg-type]


def test_connect_builds_a_bounded_client(redis_url: str) -> None:
    client = cachecow.connect(redis_url, timeout=0.25)
    kwargs = client.get_connection_kwargs()
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
    retry = kwargs["retry"]
    assert retry.get_retries() == 1
    assert redis.TimeoutError not in retry._supported_errors
    assert client.ping()


def test_tombstone_is_not_a_hit_and_invalidate_clears_it(redis_client: redis.Redis) -> None:
    cache = MemberCache(redis_client, tombstone_ttl=2.0)
    with pytest.raises(NotFound):
        cache.get(Member, "id", 200)
    cache.invalidate(Member, "id", 200)
    assert redis_client.dbsize() == 0
    snap = cache.metrics.snapshot()
    assert (snap.hits, snap.tombstone_hits, snap.commits) == (0, 0, 1)


def test_a_raising_metrics_hook_changes_nothing(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(name: str, amount: int) -> None:
        raise RuntimeError(f"exporter down at {name}")

    cache = MemberCache(redis_client, metrics_hook=hook)
    with caplog.at_level(logging.ERROR, logger="cachecow"):
        assert cache.get(Member, "id", 1) == {"id": 1}
        assert cache.get(Member, "id", 1) == {"id": 1}
        cache.invalidate(Member, "id", 1)
    assert redis_client.dbsize() == 0  # no lease left behind, the invalidation happened
    assert cache.metrics.snapshot().hits == 1
    assert len([r for r in caplog.records if "metrics hook raised" in r.getMessage()]) == 1


def test_peek_reads_the_cache_only(redis_client: redis.Redis) -> None:
    cache = MemberCache(redis_client)
    assert cache.peek(Member, "id", 1) is None  # not cached: no fetch, no lease
    assert cache.lookups == []
    assert redis_client.dbsize() == 0
    cache.get(Member, "id", 1)
    assert cache.peek(Member, "id", 1) == {"id": 1}
    with pytest.raises(NotFound):
        cache.get(Member, "id", 500)
    with pytest.raises(NotFound):
        cache.peek(Member, "id", 500)  # a tombstone answers like get
    redis_client.set(cache.get_keys(Member, "id", 1)[0], b"\xff garbage")
    assert cache.peek(Member, "id", 1) is None  # unusable: a miss, left for get to repair
    assert len(cache.lookups) == 2


def test_the_sync_class_inside_a_running_event_loop_warns_once(redis_client: redis.Redis) -> None:
    import asyncio
    import warnings

    cache = MemberCache(redis_client)
    cache.get(Member, "id", 1)  # outside a loop: no warning (warnings are errors here)

    async def inside() -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.get(Member, "id", 1)  # the line the warning points at
            cache.get_many(Member, "id", [1, 2])
            cache.invalidate(Member, "id", 1)
        return caught

    caught = asyncio.run(inside())
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "called inside a running asyncio event loop" in str(caught[0].message)
    assert caught[0].filename == __file__
    assert "the line the warning points at" in linecache.getline(__file__, caught[0].lineno)
    other = MemberCache(redis_client)  # once per cache
    with pytest.warns(RuntimeWarning, match="Use cachecow.AsyncCacheCow"):
        asyncio.run(_call_in_loop(other))


async def _call_in_loop(cache: CacheCow) -> None:
    cache.invalidate(Member, "id", 1)
