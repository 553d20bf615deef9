"""Refresh ahead (``refresh_ahead``) against a real redis-server: a hot key is refreshed by one
reader before it expires while every other reader keeps getting hits, and a refresh keeps the
lease's promise: its commit is refused after an invalidation, like any other.

The races are forced in order with gates inside ``fetch``. A value is put inside its refresh
window by shortening its time to live (``PEXPIRE``), so no test waits for a window to come.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from cachecow import AsyncCacheCow, CacheCow, NotFound
from cachecow._client import ScriptCall
from cachecow._ops import TOMBSTONE
from cachecow._scripts import script_source
from cachecow.testing.plugin import async_twin

Row = dict[str, Any]
REFRESH = {"ttl": 60.0, "refresh_ahead": 0.1, "ttl_jitter": 0.0}  # a window of 6 s
INSIDE_MS = 5_000  # a time to live inside that window


class Rows(CacheCow):
    """Rows of a dict; ``gate``, when set, is called inside ``fetch`` after the row is read."""

    def __init__(self, redis: Any, db: dict[int, Row], **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db
        self.fetched: list[Row | None] = []
        self.gate: Any = None
        self.lock = threading.Lock()

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        row = self.db.get(id_val)
        row = None if row is None else dict(row)
        with self.lock:
            self.fetched.append(row)
        if self.gate is not None:
            self.gate()
        return row


class AsyncRows(AsyncCacheCow):
    def __init__(self, redis: Any, db: dict[int, Row], **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db
        self.fetched: list[Row | None] = []
        self.gate: Any = None

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        await asyncio.sleep(0)
        row = self.db.get(id_val)
        row = None if row is None else dict(row)
        self.fetched.append(row)
        if self.gate is not None:
            await self.gate()
        return row


def counts(cache: Any, *names: str) -> tuple[int, ...]:
    snap = cache.metrics.snapshot().as_dict()
    return tuple(snap[name] for name in names)


def into_window(client: redis.Redis, cache: Any, key: int, ms: int = INSIDE_MS) -> None:
    """Shorten the cached value's time to live into its refresh window."""
    assert client.pexpire(cache.get_keys("row", "id", key)[0], ms)


def cached(client: redis.Redis, cache: Any, key: int) -> bytes | None:
    value: bytes | None = client.get(cache.get_keys("row", "id", key)[0])
    return value


def flag(client: redis.Redis, cache: Any, key: int) -> bytes | None:
    value: bytes | None = client.get(cache.get_keys("row", "id", key)[1])
    return value


class Gate:
    """A gate inside ``fetch``: ``entered`` once a fetch reached it, then it waits for ``go``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.go.wait(10), "the test never opened the gate"


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # pragma: no cover - reported by the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


# -- (1) a hot key across its expiries ---------------------------------------------------------


@pytest.mark.parametrize("instances", [1, 32], ids=["one-cache", "a-cache-per-thread"])
def test_a_hot_key_never_misses_at_expiry(redis_client: redis.Redis, instances: int) -> None:
    """32 threads read one key for about 2.5 TTLs. With one cache they share its single flight;
    with a cache each they are as 32 processes. No reader misses, finds a lease or waits: one
    reader per refresh fetches (exactly one fetch per refresh, each committed)."""
    db = {1: {"id": 1, "version": 0}}
    options = {"ttl": 0.8, "ttl_jitter": 0.0, "refresh_ahead": 0.5}  # a window of 400 ms

    class Versioned(Rows):
        def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
            with self.lock:
                db[1]["version"] += 1  # each fetch reads a newer row
            time.sleep(0.01)  # a 10 ms query
            return super().fetch(cls, id_field, id_val)

    caches = [Versioned(redis_client, db, **options) for _ in range(instances)]
    caches[0].get("row", "id", 1)  # cached at version 1
    for cache in caches:
        cache.metrics.reset()
        cache.fetched.clear()
    stop = time.monotonic() + 2.0
    seen: list[list[int]] = [[] for _ in range(32)]

    def reader(n: int) -> None:
        cache = caches[n % instances]
        while time.monotonic() < stop:
            seen[n].append(cache.get("row", "id", 1)["version"])

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    totals = {
        name: sum(counts(cache, name)[0] for cache in caches)
        for name in ("misses", "busy", "waits", "refreshes", "fetches", "commits", "leases")
    }
    fetched = sum(len(cache.fetched) for cache in caches)
    assert totals["misses"] == totals["busy"] == totals["waits"] == 0, totals
    assert totals["refreshes"] >= 2, totals  # the value lived 2.5 TTLs, refreshed each time
    assert fetched == totals["fetches"] == totals["refreshes"] == totals["leases"], totals
    assert totals["commits"] == totals["refreshes"], totals  # one commit per refresh
    for versions in seen:  # each reader saw the refreshes in order, never an older version
        assert versions == sorted(versions)
    assert max(max(versions) for versions in seen) == 1 + totals["refreshes"]


def test_without_refresh_ahead_the_hot_key_misses_at_expiry(redis_client: redis.Redis) -> None:
    """The same load without the option: the readers of each expiry miss and wait."""
    db = {1: {"id": 1}}
    caches = [Rows(redis_client, db, ttl=0.3, ttl_jitter=0.0) for _ in range(8)]
    caches[0].get("row", "id", 1)
    stop = time.monotonic() + 0.7

    def reader(cache: Rows) -> None:
        while time.monotonic() < stop:
            cache.get("row", "id", 1)

    threads = [threading.Thread(target=reader, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts(cache, "misses")[0] for cache in caches) >= 2


# -- (2) an invalidation between the refresh lease and its commit ------------------------------


def test_a_refresh_commit_after_an_invalidation_is_refused(redis_client: redis.Redis) -> None:
    """The refresher holds the refresh lease and has read v1; the row is written (v2) and
    invalidated; its commit is refused, v1 never comes back, and the next read gets v2. Other
    readers got hits all along, from Redis (another process) and in this process."""
    db = {1: {"id": 1, "v": "v1"}}
    refresher = Rows(redis_client, db, **REFRESH)
    other = Rows(redis_client, db, **REFRESH)  # another process
    writer = Rows(redis_client, db, **REFRESH)
    assert refresher.get("row", "id", 1) == {"id": 1, "v": "v1"}
    into_window(redis_client, refresher, 1)
    gate = Gate()
    refresher.gate = gate
    thread, out = in_thread(lambda: refresher.get("row", "id", 1))
    assert gate.entered.wait(10)
    assert flag(redis_client, refresher, 1) is not None  # the refresh lease, held
    # Meanwhile every other reader gets the cached value, without a fetch or a wait:
    assert other.get("row", "id", 1) == {"id": 1, "v": "v1"}
    for _ in range(3):  # readers of the refresher's own cache, in threads of its process
        reader, got = in_thread(lambda: refresher.get("row", "id", 1))
        reader.join(5)
        assert not reader.is_alive(), "a reader waited for the refresh's fetch"
        assert got == [{"id": 1, "v": "v1"}]
    assert counts(other, "hits", "misses", "fetches", "refreshes") == (1, 0, 0, 0)
    db[1] = {"id": 1, "v": "v2"}
    writer.invalidate("row", "id", 1)  # deletes the value and voids the refresh lease
    refresher.gate = None
    gate.go.set()
    thread.join(10)
    assert cached(redis_client, refresher, 1) is None  # v1 never came back
    assert flag(redis_client, refresher, 1) is None
    assert out == [{"id": 1, "v": "v1"}]  # what it read, current when it read it
    assert counts(refresher, "refreshes", "commits", "stale_commits") == (1, 1, 1)
    assert other.get("row", "id", 1) == {"id": 1, "v": "v2"}
    assert counts(other, "misses") == (1,)


def test_the_refresh_race_catches_a_commit_without_the_token_check(
    redis_client: redis.Redis,
) -> None:
    """The race above can fail: with commit.lua's token check taken out, the refresher's v1
    is stored after the invalidation, and served as if current."""
    source = script_source("commit")
    check = "if redis.call('GET', flag_key) ~= token then"
    assert check in source
    db = {1: {"id": 1, "v": "v1"}}
    refresher = Rows(redis_client, db, **REFRESH)
    refresher._io.scripts["commit"] = ScriptCall("commit", source.replace(check, "if false then"))
    refresher.get("row", "id", 1)
    into_window(redis_client, refresher, 1)
    gate = Gate()
    refresher.gate = gate
    thread, _ = in_thread(lambda: refresher.get("row", "id", 1))
    assert gate.entered.wait(10)
    db[1] = {"id": 1, "v": "v2"}
    Rows(redis_client, db).invalidate("row", "id", 1)
    refresher.gate = None
    gate.go.set()
    thread.join(10)
    assert cached(redis_client, refresher, 1) == b'{"id":1,"v":"v1"}'  # stale, after the write
    assert Rows(redis_client, db).get("row", "id", 1) == {"id": 1, "v": "v1"}


# -- (3) an invalidation before the refresh lease; a second refresher -------------------------


def test_an_invalidation_before_the_refresh_lease_leaves_a_plain_miss(
    redis_client: redis.Redis,
) -> None:
    db = {1: {"id": 1, "v": "v1"}}
    cache = Rows(redis_client, db, **REFRESH)
    cache.get("row", "id", 1)
    into_window(redis_client, cache, 1)
    db[1] = {"id": 1, "v": "v2"}
    cache.invalidate("row", "id", 1)
    cache.metrics.reset()
    assert cache.get("row", "id", 1) == {"id": 1, "v": "v2"}
    assert counts(cache, "misses", "leases", "refreshes", "commits") == (1, 1, 0, 1)
    ttl = redis_client.pttl(cache.get_keys("row", "id", 1)[0])
    assert ttl > 59_000  # a fresh value, out of the window


def test_a_second_refresher_takes_over_only_an_expired_lease(redis_client: redis.Redis) -> None:
    """While the first refresher's lease lives, other readers get hits and do not refresh.
    Once it expires (a fetch that outlives flag_ttl) a second reader refreshes; the first
    one's commit is then refused, and the second one's value stays."""
    db = {1: {"id": 1, "v": "v1"}}
    first = Rows(redis_client, db, flag_ttl=0.3, **REFRESH)
    second = Rows(redis_client, db, flag_ttl=0.3, **REFRESH)
    first.get("row", "id", 1)
    into_window(redis_client, first, 1)
    gate = Gate()
    first.gate = gate
    thread, out = in_thread(lambda: first.get("row", "id", 1))
    assert gate.entered.wait(10)
    assert second.get("row", "id", 1) == {"id": 1, "v": "v1"}  # a hit: the lease is held
    assert counts(second, "refreshes", "fetches") == (0, 0)
    db[1] = {"id": 1, "v": "v2"}  # a write no invalidation saw (the TTL bounds it)
    deadline = time.monotonic() + 5
    while flag(redis_client, first, 1) is not None:  # the first lease expires
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert second.get("row", "id", 1) == {"id": 1, "v": "v2"}  # it refreshed
    assert counts(second, "refreshes", "commits") == (1, 1)
    first.gate = None
    gate.go.set()
    thread.join(10)
    assert cached(redis_client, first, 1) == b'{"id":1,"v":"v2"}'  # the second's stays
    assert out == [{"id": 1, "v": "v1"}]
    assert counts(first, "refreshes", "stale_commits") == (1, 1)


# -- (4) the asyncio twin of (2) ---------------------------------------------------------------


def test_async_refresh_commit_after_an_invalidation_is_refused(redis_client: redis.Redis) -> None:
    async def body() -> None:
        client = async_twin(redis_client)
        db = {1: {"id": 1, "v": "v1"}}
        refresher = AsyncRows(client, db, **REFRESH)
        other = AsyncRows(client, db, **REFRESH)
        assert await refresher.get("row", "id", 1) == {"id": 1, "v": "v1"}
        into_window(redis_client, refresher, 1)
        entered, go = asyncio.Event(), asyncio.Event()

        async def gate() -> None:
            entered.set()
            await asyncio.wait_for(go.wait(), 10)

        refresher.gate = gate
        task = asyncio.create_task(refresher.get("row", "id", 1))
        await asyncio.wait_for(entered.wait(), 10)
        assert flag(redis_client, refresher, 1) is not None
        assert await other.get("row", "id", 1) == {"id": 1, "v": "v1"}
        # a task of the refresher's own cache gets the hit, not the refresh's fetch
        got = await asyncio.wait_for(refresher.get("row", "id", 1), 5)
        assert got == {"id": 1, "v": "v1"}
        db[1] = {"id": 1, "v": "v2"}
        await other.invalidate("row", "id", 1)
        refresher.gate = None
        go.set()
        assert await task == {"id": 1, "v": "v1"}
        assert cached(redis_client, refresher, 1) is None  # v1 never came back
        assert counts(refresher, "refreshes", "commits", "stale_commits") == (1, 1, 1)
        assert await other.get("row", "id", 1) == {"id": 1, "v": "v2"}
        await client.aclose()

    asyncio.run(body())


def test_async_hot_key_refresh_and_get_many(redis_client: redis.Redis) -> None:
    async def body() -> None:
        client = async_twin(redis_client)
        db = {i: {"id": i, "v": "v1"} for i in (1, 2, 3)}
        cache = AsyncRows(client, db, **REFRESH)
        await cache.get_many("row", "id", [1, 2, 3])
        for key in (1, 2, 3):
            db[key]["v"] = "v2"
        into_window(redis_client, cache, 1)
        into_window(redis_client, cache, 3)
        cache.fetched.clear()
        got = await cache.get_many("row", "id", [1, 2, 3])
        assert [row["v"] for row in got] == ["v2", "v1", "v2"]  # 1 and 3 refreshed
        assert len(cache.fetched) == 2
        assert await cache.get("row", "id", 2) == {"id": 2, "v": "v1"}  # outside its window
        await client.aclose()

    asyncio.run(body())


# -- get_many, tombstones, failures, the near cache --------------------------------------------


def test_get_many_refreshes_in_its_one_fetch_many(redis_client: redis.Redis) -> None:
    db = {i: {"id": i, "v": "v1"} for i in (1, 2, 3)}

    class Batches(Rows):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.batches: list[tuple[Any, ...]] = []

        def fetch_many(self, cls: Any, id_field: Any, id_vals: Any) -> Any:
            self.batches.append(tuple(id_vals))
            return {v: dict(db[v]) for v in id_vals if v in db}

    cache = Batches(redis_client, db, **REFRESH)
    cache.get_many("row", "id", [1, 2])
    for key in (1, 2, 3):
        db[key]["v"] = "v2"
    into_window(redis_client, cache, 1)
    cache.metrics.reset()
    got = cache.get_many("row", "id", [1, 2, 3])
    assert [row["v"] for row in got] == ["v2", "v1", "v2"]  # 1 refreshed, 2 a hit, 3 a miss
    assert cache.batches[-1] == (3, 1)  # the miss and the refresh, in one fetch_many
    assert counts(cache, "hits", "misses", "refreshes", "commits") == (2, 1, 1, 2)
    assert redis_client.pttl(cache.get_keys("row", "id", 1)[0]) > 59_000
    assert flag(redis_client, cache, 1) is None


def test_get_many_refresh_commit_after_an_invalidation_is_refused(
    redis_client: redis.Redis,
) -> None:
    db = {1: {"id": 1, "v": "v1"}}
    cache = Rows(redis_client, db, **REFRESH)
    cache.get_many("row", "id", [1])
    into_window(redis_client, cache, 1)
    gate = Gate()
    cache.gate = gate
    thread, out = in_thread(lambda: cache.get_many("row", "id", [1]))
    assert gate.entered.wait(10)
    assert Rows(redis_client, db).get("row", "id", 1) == {"id": 1, "v": "v1"}  # a hit
    reader, got = in_thread(lambda: cache.get("row", "id", 1))  # of the batch's own cache
    reader.join(5)
    assert not reader.is_alive(), "a reader waited for the batch's refresh"
    assert got == [{"id": 1, "v": "v1"}]
    db[1] = {"id": 1, "v": "v2"}
    cache.invalidate("row", "id", 1)
    cache.gate = None
    gate.go.set()
    thread.join(10)
    assert cached(redis_client, cache, 1) is None  # v1 never came back
    assert out == [[{"id": 1, "v": "v1"}]]
    assert counts(cache, "refreshes", "stale_commits") == (1, 1)


def test_a_tombstone_is_refreshed_inside_its_own_window(redis_client: redis.Redis) -> None:
    """A tombstone's window is refresh_ahead of tombstone_ttl (3 s here), not of the value's
    TTL (60 s here): a tombstone with 30 s left is no refresh."""
    db: dict[int, Row] = {}
    cache = Rows(redis_client, db, ttl=600, refresh_ahead=0.1, tombstone_ttl=30, ttl_jitter=0)
    with pytest.raises(NotFound):
        cache.get("row", "id", 1)
    assert cached(redis_client, cache, 1) == TOMBSTONE
    db[1] = {"id": 1, "v": "v1"}  # inserted, its invalidation lost
    with pytest.raises(NotFound):
        cache.get("row", "id", 1)  # 30 s left: inside the value window, not the tombstone's
    assert counts(cache, "refreshes") == (0,)
    assert cache.get_many("row", "id", [1]) == [None]  # the batch script alike
    assert counts(cache, "refreshes") == (0,)
    into_window(redis_client, cache, 1, 2_000)  # inside the tombstone window (3 s)
    assert cache.get("row", "id", 1) == {"id": 1, "v": "v1"}
    assert counts(cache, "refreshes", "commits") == (1, 2)
    with pytest.raises(NotFound):
        cache.get("row", "id", 3)  # a tombstone for 3
    db[3] = {"id": 3, "v": "v1"}
    into_window(redis_client, cache, 3, 2_000)
    assert cache.get_many("row", "id", [3]) == [{"id": 3, "v": "v1"}]
    assert counts(cache, "refreshes") == (2,)


def test_a_refresh_whose_fetch_fails_returns_the_cached_value(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    db = {1: {"id": 1, "v": "v1"}}
    cache = Rows(redis_client, db, **REFRESH)
    cache.get("row", "id", 1)
    into_window(redis_client, cache, 1)

    def down() -> None:
        raise RuntimeError("database down")

    cache.gate = down
    for _ in range(2):
        assert cache.get("row", "id", 1) == {"id": 1, "v": "v1"}
    assert counts(cache, "refreshes", "refresh_failures", "commits") == (2, 2, 1)
    assert flag(redis_client, cache, 1) is None  # each lease given back at once
    assert redis_client.pttl(cache.get_keys("row", "id", 1)[0]) <= INSIDE_MS  # not extended
    warnings = [r for r in caplog.records if "refreshing" in r.getMessage()]
    assert len(warnings) == 1  # once per model and field
    cache.gate = None
    assert cache.get("row", "id", 1) == {"id": 1, "v": "v1"}
    assert counts(cache, "refreshes", "commits") == (3, 2)


def test_a_refresh_drops_the_value_from_near_caches(redis_client: redis.Redis) -> None:
    """A refresh's commit writes the value key: near caches drop the old value and read the
    fresh one from Redis (a write no invalidation saw, brought in by the refresh)."""
    db = {1: {"id": 1, "v": "v1"}}
    options = {"ttl": 1.0, "refresh_ahead": 0.5, "ttl_jitter": 0.0}
    near = Rows(redis_client, db, near_bytes=1 << 20, **options)
    refresher = Rows(redis_client, db, **options)
    try:
        tracking = near._near
        assert tracking is not None
        tracking.get("")  # a miss starts the tracker
        assert tracking.tracker is not None
        assert tracking.tracker.connected.wait(5)
        refresher.get("row", "id", 1)
        value_key = refresher.get_keys("row", "id", 1)[0]
        deadline = time.monotonic() + 5
        while value_key not in tracking.entries:  # a Redis hit, kept once the commit's
            assert near.get("row", "id", 1) == {"id": 1, "v": "v1"}  # message is handled
            assert time.monotonic() < deadline
        near.metrics.reset()
        assert near.get("row", "id", 1) == {"id": 1, "v": "v1"}
        assert counts(near, "near_hits", "refreshes") == (1, 0)
        db[1]["v"] = "v2"
        while redis_client.pttl(value_key) > 400:  # wait for the refresh window (500 ms)
            time.sleep(0.01)
        assert refresher.get("row", "id", 1) == {"id": 1, "v": "v2"}
        assert counts(refresher, "refreshes", "commits") == (1, 2)
        deadline = time.monotonic() + 5
        while near.get("row", "id", 1)["v"] != "v2":  # the commit's message drops it
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        near.close()


# -- the scripts' replies ------------------------------------------------------------------------


def test_the_lease_scripts_reply_shapes(redis_client: redis.Redis) -> None:
    """Without windows the scripts answer as before (a hit is the bytes, even inside what would
    be the window); with them, a hit inside its window that wins the lease is ``[bytes, 1]``, a
    call sent again with the same token finds its lease, and another token gets the bytes."""
    one, many = script_source("get_or_lease"), script_source("get_or_lease_many")
    redis_client.set("v", b"x", px=1_000)
    keys = ("v", "v:lease")
    assert redis_client.eval(one, 2, *keys, "t1", 10_000) == b"x"
    assert redis_client.eval(one, 2, *keys, "t1", 10_000, b"other") == b"x"
    assert redis_client.eval(many, 2, *keys, "t1", 10_000) == [b"x"]
    assert redis_client.eval(one, 2, *keys, "t1", 10_000, "", 500, 500) == b"x"  # 1 s left
    assert redis_client.eval(many, 2, *keys, "t1", 10_000, 0, 0) == [b"x"]
    assert redis_client.exists("v:lease") == 0
    assert redis_client.eval(one, 2, *keys, "t1", 10_000, "", 2_000, 0) == [b"x", 1]
    assert redis_client.get("v:lease") == b"t1"
    assert redis_client.eval(one, 2, *keys, "t1", 10_000, "", 2_000, 0) == [b"x", 1]  # again
    assert redis_client.eval(one, 2, *keys, "t2", 10_000, "", 2_000, 0) == b"x"
    assert redis_client.eval(many, 2, *keys, "t1", 10_000, 2_000, 0) == [[b"x", 1]]
    assert redis_client.eval(many, 2, *keys, "t2", 10_000, 2_000, 0) == [b"x"]
    assert redis_client.pttl("v") <= 1_000  # the value's TTL untouched by any of them
    redis_client.set("t", TOMBSTONE, px=1_000)
    tomb = ("t", "t:lease")
    assert redis_client.eval(one, 2, *tomb, "t1", 10_000, "", 2_000, 500) == TOMBSTONE
    assert redis_client.eval(many, 2, *tomb, "t1", 10_000, 2_000, 2_000) == [[TOMBSTONE, 1]]
    redis_client.set("n", b"y")  # no time to live (foreign data): never refreshed
    assert redis_client.eval(one, 2, "n", "n:lease", "t1", 10_000, "", 2_000, 0) == b"y"
    redis_client.set("u", b"\xff", px=60_000)  # unusable bytes, discarded with windows sent
    assert redis_client.eval(one, 2, "u", "u:lease", "t1", 10_000, b"\xff", 2_000, 0) == 1
    assert redis_client.exists("u") == 0


def test_a_cached_function_is_refreshed_with_its_own_ttl(redis_client: redis.Redis) -> None:
    """Decorated functions share their cache's options: a result inside its window (a tenth
    of the decorator's TTL) is recomputed by one call, and the fresh result returned."""
    cache = CacheCow(redis_client, refresh_ahead=0.1, ttl_jitter=0.0)
    rates = {"eur": 1}
    rate = cache.cached(100, name="rate")(lambda code: rates[code])
    assert rate("eur") == 1
    rates["eur"] = 2
    (key,) = [k for k in redis_client.keys("cachecow:rate:*") if not k.endswith(b":lease")]
    assert rate("eur") == 1  # 100 s left: outside its 10 s window
    assert redis_client.pexpire(key, 9_000)
    assert rate("eur") == 2  # refreshed
    assert rate("eur") == 2
    assert counts(cache, "misses", "refreshes", "commits") == (1, 1, 2)
