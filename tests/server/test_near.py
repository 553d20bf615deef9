"""The near cache against a real redis-server: hits without a round trip, invalidations of
other clients delivered by Redis's tracking messages, the process's own at once, and each race
between a message and a reply in flight forced in order (gates in the cache's Redis I/O, the
one place between a reply's arrival and its store).

The writer in these tests is a second cache of the same server (as another process would be):
its invalidation reaches the near cache only through Redis's message."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from cachecow import AsyncCacheCow, CacheCow, ConfigurationError, NotFound
from cachecow._near import NearCache
from cachecow._ops import Command, Script
from cachecow.testing import RedisServer
from cachecow.testing.plugin import CountingRedis

NEAR = {"near_bytes": 1 << 20, "prefix": "near:"}


class Rows(CacheCow):
    """Rows of a dict: ``{"id": i, "version": v}``."""

    def __init__(self, redis: Any, db: dict[int, dict[str, Any]], **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        row = self.db.get(id_val)
        return None if row is None else dict(row)


class AsyncRows(AsyncCacheCow):
    def __init__(self, redis: Any, db: dict[int, dict[str, Any]], **options: Any) -> None:
        super().__init__(redis, **options)
        self.db = db

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        row = self.db.get(id_val)
        return None if row is None else dict(row)


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {condition}")
        time.sleep(0.001)


def near_of(cache: Any) -> NearCache:
    near = cache._near
    assert near is not None
    return near


def tracking(cache: Any) -> NearCache:
    """The cache's near cache, its tracker started and its channel up."""
    near = near_of(cache)
    near.get("")  # a miss starts the tracker
    assert near.tracker is not None
    assert near.tracker.connected.wait(5)
    return near


@pytest.fixture
def db() -> dict[int, dict[str, Any]]:
    return {i: {"id": i, "version": 1} for i in range(1, 11)}


@pytest.fixture
def writer(redis_client: redis.Redis, db: dict[int, dict[str, Any]]) -> Rows:
    """Another client's cache of the same rows, without a near cache."""
    return Rows(redis_client, db, prefix="near:")


@pytest.fixture
def cache(redis_client: redis.Redis, db: dict[int, dict[str, Any]]) -> Iterator[Rows]:
    cache = Rows(redis_client, db, **NEAR)
    tracking(cache)
    yield cache
    cache.close()


def write(writer: Rows, row_id: int) -> None:
    """A committed write of a row, then its invalidation, by the other client."""
    writer.db[row_id] = {"id": row_id, "version": writer.db[row_id]["version"] + 1}
    writer.invalidate("Row", "id", row_id)


def kept(cache: Rows, row_id: int) -> Any:
    """Read a row until the near cache holds it."""
    key = cache.get_keys("Row", "id", row_id)[0]
    wait_until(lambda: cache.get("Row", "id", row_id) and key in near_of(cache).entries)
    return cache.get("Row", "id", row_id)


def test_a_hit_is_answered_without_a_round_trip(
    redis_server: RedisServer, db: dict[int, dict[str, Any]]
) -> None:
    client = CountingRedis(redis_server.port)
    client.flushall()
    cache = Rows(client, db, **NEAR)
    try:
        tracking(cache)
        kept(cache, 1)
        client.reset_round_trips()
        before = cache.metrics.snapshot()
        for _ in range(100):
            assert cache.get("Row", "id", 1) == {"id": 1, "version": 1}
        assert cache.get_many("Row", "id", [1, 1]) == [{"id": 1, "version": 1}] * 2
        assert cache.peek("Row", "id", 1) == {"id": 1, "version": 1}
        assert client.round_trips == 0
        after = cache.metrics.snapshot()
        assert after.near_hits - before.near_hits == 102
        assert after.hits - before.hits == 102
    finally:
        cache.close()
        client.close()


def test_each_hit_is_a_new_object(cache: Rows) -> None:
    first = kept(cache, 1)
    first["version"] = 99  # a caller changing what it got changes nothing cached
    assert cache.get("Row", "id", 1) == {"id": 1, "version": 1}
    assert cache.get("Row", "id", 1) is not cache.get("Row", "id", 1)


def test_another_clients_invalidation_reaches_the_near_cache(cache: Rows, writer: Rows) -> None:
    kept(cache, 1)
    write(writer, 1)
    key = cache.get_keys("Row", "id", 1)[0]
    wait_until(lambda: key not in near_of(cache).entries)
    assert cache.get("Row", "id", 1)["version"] == 2


def test_the_process_own_invalidation_is_seen_at_once(cache: Rows) -> None:
    for _ in range(50):  # no waiting for a message: never the old value after it returns
        version = kept(cache, 1)["version"]
        cache.db[1] = {"id": 1, "version": version + 1}
        cache.invalidate("Row", "id", 1)
        assert cache.get("Row", "id", 1)["version"] == version + 1


def test_not_found_is_kept_near_too(cache: Rows, writer: Rows) -> None:
    key = cache.get_keys("Row", "id", 99)[0]
    for _ in range(2):
        with pytest.raises(NotFound):
            cache.get("Row", "id", 99)
    wait_until(
        lambda: cache.get_many("Row", "id", [99]) == [None] and key in near_of(cache).entries
    )
    assert cache.get_many("Row", "id", [99]) == [None]
    writer.db[99] = {"id": 99, "version": 1}
    writer.invalidate("Row", "id", 99)
    wait_until(lambda: key not in near_of(cache).entries)
    assert cache.get("Row", "id", 99) == {"id": 99, "version": 1}


# -- the race: a message handled before the reply it voids is stored -------------------------


def gate_after(cache: Any, names: tuple[str, ...], then: Callable[[], None]) -> None:
    """Run ``then`` once, after the first reply of a Redis call ``names`` lists arrives and
    before the cache goes on with it."""
    perform = cache._io.perform
    done = False

    def gated(op: Any) -> Any:
        nonlocal done
        reply = perform(op)
        name = op.name if isinstance(op, Script) else op.args[0] if isinstance(op, Command) else ""
        if not done and name in names:
            done = True
            then()
        return reply

    cache._io.perform = gated


def invalidated_meanwhile(cache: Any, writer: Rows, row_id: int) -> Callable[[], None]:
    """The writer's write and invalidation of ``row_id``, and the near cache handling its
    message: all between the reader's reply and its store."""
    key = cache.get_keys("Row", "id", row_id)[0]
    near = near_of(cache)

    def then() -> None:
        before = near._seq
        write(writer, row_id)
        wait_until(lambda: near._dropped.get(key, -1) > before)

    return then


def settled(cache: Any, client: redis.Redis) -> None:
    """Wait until every message of a write made so far has reached the near cache: a marker
    key written now is named in a message after theirs (one connection, in order)."""
    marker = f"near:marker:{time.monotonic_ns()}"
    client.set(marker, 1)
    wait_until(lambda: marker in near_of(cache)._dropped)


def committed(cache: Any, row_id: int) -> None:
    """Read a row into Redis, wait until the message of its commit came, and leave the row out
    of the near cache (as another process's commit would): the next read keeps it."""
    cache.get("Row", "id", row_id)
    settled(cache, cache.redis)
    near_of(cache).drop([cache.get_keys("Row", "id", row_id)[0]])


READS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "get": (("get_or_lease",), lambda c: c.get("Row", "id", 1)),
    "get_many": (("get_or_lease_many",), lambda c: c.get_many("Row", "id", [1, 2])[0]),
    "peek": (("GET",), lambda c: c.peek("Row", "id", 1)),
}


@pytest.mark.parametrize("read", list(READS))
def test_a_reply_read_before_an_invalidation_is_not_kept_after_its_message(
    cache: Rows, writer: Rows, read: str
) -> None:
    names, call = READS[read]
    committed(cache, 1)  # in Redis, not yet near: the next read would keep it
    gate_after(cache, names, invalidated_meanwhile(cache, writer, 1))
    assert call(cache)["version"] == 1  # read before the write: the caller may have it
    assert cache.get_keys("Row", "id", 1)[0] not in near_of(cache).entries
    assert cache.get("Row", "id", 1)["version"] == 2


def test_without_the_ticket_check_that_reply_is_kept_stale(
    cache: Rows, writer: Rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving above is real: with every ticket taken as fresh, the old value stays
    near after the write's message has come and gone."""
    committed(cache, 1)
    keep = NearCache.keep
    monkeypatch.setattr(
        NearCache, "keep", lambda self, key, ticket, *rest: keep(self, key, self._seq, *rest)
    )
    gate_after(cache, ("get_or_lease",), invalidated_meanwhile(cache, writer, 1))
    cache.get("Row", "id", 1)
    assert cache.get("Row", "id", 1)["version"] == 1  # stale, from the near cache


# -- a commit's value, kept near through its own message -----------------------------------------


def held(near: NearCache) -> threading.Event:
    """Hold the tracker's thread before it handles each message, until the event is set: what
    Redis sends meanwhile queues on the connection."""
    go = threading.Event()
    drop = near.drop

    def gated(keys: Any, *, heard: bool = False) -> list[str]:
        if heard:
            go.wait(10)
        return drop(keys, heard=heard)

    near.drop = gated  # type: ignore[method-assign]
    return go


@pytest.mark.parametrize("read", ["get", "get_many"])
def test_a_commit_is_kept_near_through_its_own_message(
    redis_server: RedisServer, db: dict[int, dict[str, Any]], writer: Rows, read: str
) -> None:
    client = CountingRedis(redis_server.port)
    cache = Rows(client, db, **NEAR)
    try:
        tracking(cache)
        key = cache.get_keys("Row", "id", 1)[0]
        assert (
            cache.get("Row", "id", 1) if read == "get" else cache.get_many("Row", "id", [1])[0]
        ) == {"id": 1, "version": 1}  # a miss: fetched and committed
        assert key in near_of(cache).entries
        settled(cache, writer.redis)  # the commit's own message came: the entry stays
        client.reset_round_trips()
        assert cache.get("Row", "id", 1) == {"id": 1, "version": 1}
        assert client.round_trips == 0
        write(writer, 1)  # a write after the commit: its message drops the entry
        wait_until(lambda: key not in near_of(cache).entries)
        assert cache.get("Row", "id", 1) == {"id": 1, "version": 2}
    finally:
        cache.close()


def test_an_invalidation_of_this_process_right_after_its_commit(cache: Rows, writer: Rows) -> None:
    """The commit's own message still queued when the process invalidates: the entry goes at
    once and nothing brings it back. Fails if the process's own drop is let through as the
    commit's message."""
    near = near_of(cache)
    key = cache.get_keys("Row", "id", 1)[0]
    go = held(near)
    assert cache.get("Row", "id", 1)["version"] == 1  # committed and kept, its message held
    assert key in near.entries
    cache.db[1] = {"id": 1, "version": 2}
    cache.invalidate("Row", "id", 1)
    assert key not in near.entries  # at once, every message still held
    assert cache.get("Row", "id", 1)["version"] == 2
    go.set()
    settled(cache, writer.redis)
    assert cache.get("Row", "id", 1)["version"] == 2


def test_a_write_after_the_commit_whose_message_came_before_the_store(
    cache: Rows, writer: Rows
) -> None:
    """Between the commit's reply and its store, another client writes and its message (after
    the commit's own) is handled: the value is not kept. Fails with a ticket taken after the
    commit's reply: the write's message would be let through as the commit's."""
    near = near_of(cache)

    def then() -> None:
        write(writer, 1)
        settled(cache, writer.redis)  # the commit's own message handled, then the write's

    gate_after(cache, ("commit",), then)
    assert cache.get("Row", "id", 1)["version"] == 1  # fetched before the write
    assert cache.get_keys("Row", "id", 1)[0] not in near.entries
    assert cache.get("Row", "id", 1)["version"] == 2


def test_a_reply_read_before_the_channel_was_lost_is_not_kept(cache: Rows, writer: Rows) -> None:
    near = near_of(cache)
    tracker = near.tracker
    assert tracker is not None
    committed(cache, 1)

    def lost_and_back() -> None:
        # The channel drops; the write's message is lost with it; the channel comes back.
        writer.redis.client_kill_filter(_id=tracker.client_id)
        wait_until(lambda: tracker.outages == 1)
        write(writer, 1)
        wait_until(tracker.connected.is_set)

    gate_after(cache, ("get_or_lease",), lost_and_back)
    assert cache.get("Row", "id", 1)["version"] == 1
    assert cache.get_keys("Row", "id", 1)[0] not in near.entries
    assert cache.get("Row", "id", 1)["version"] == 2


# -- the channel --------------------------------------------------------------------------------


def test_a_killed_channel_empties_the_near_cache_until_it_is_back(
    cache: Rows, writer: Rows
) -> None:
    near = near_of(cache)
    tracker = near.tracker
    assert tracker is not None
    kept(cache, 1)
    writer.redis.client_kill_filter(_id=tracker.client_id)
    wait_until(lambda: tracker.outages == 1)
    write(writer, 1)  # while no message can come
    assert cache.get("Row", "id", 1)["version"] == 2
    wait_until(tracker.connected.is_set)
    assert kept(cache, 1)["version"] == 2
    print(f"\nCLIENT KILL: near cache off for {tracker.downtimes[0] * 1000:.1f} ms")


def test_a_flush_of_the_database_empties_the_near_cache(cache: Rows, writer: Rows) -> None:
    kept(cache, 1)
    writer.redis.flushdb()
    wait_until(lambda: not near_of(cache).entries)


def test_a_restarted_empty_server_leaves_nothing_near(
    own_redis_server: RedisServer, db: dict[int, dict[str, Any]]
) -> None:
    client = redis.Redis(port=own_redis_server.port, socket_timeout=5)
    cache = Rows(client, db, **NEAR)
    try:
        near = tracking(cache)
        kept(cache, 1)
        own_redis_server.restart()
        db[1] = {"id": 1, "version": 2}  # written while Redis was away: no invalidation
        wait_until(lambda: not near.entries)
        assert cache.get("Row", "id", 1)["version"] == 2
        wait_until(lambda: near.tracker is not None and near.tracker.connected.is_set())
        assert near.tracker is not None
        print(f"\nrestarted empty: near cache off for {near.tracker.downtimes[0] * 1000:.1f} ms")
    finally:
        cache.close()
        client.close()


def test_close_stops_the_tracker(redis_client: redis.Redis, db: dict[int, dict[str, Any]]) -> None:
    cache = Rows(redis_client, db, **NEAR)
    near = tracking(cache)
    kept(cache, 1)
    tracker = near.tracker
    assert tracker is not None
    cache.close()
    assert not tracker.thread.is_alive()
    assert not near.entries
    assert cache.get("Row", "id", 1)["version"] == 1  # from Redis
    assert near.tracker is tracker
    assert not near.live


def _read_in_child(cache: Rows, queue: Any) -> None:
    near = near_of(cache)
    inherited = (len(near.entries), near.tracker is None, near.live)
    row = cache.get("Row", "id", 1)
    tracker = near.tracker
    started = tracker is not None and tracker.connected.wait(5)
    queue.put((inherited, row, started))


def test_a_forked_child_starts_empty_with_a_tracker_of_its_own(cache: Rows) -> None:
    kept(cache, 1)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(cache, queue))
    child.start()
    inherited, row, started = queue.get(timeout=10)
    child.join(10)
    assert inherited == (0, True, False)
    assert row == {"id": 1, "version": 1}
    assert started


# -- what is near-cached ------------------------------------------------------------------------


def test_only_the_models_named_are_kept(
    redis_client: redis.Redis, db: dict[int, dict[str, Any]]
) -> None:
    cache = Rows(redis_client, db, near_models=["Row"], **NEAR)
    try:
        tracking(cache)
        kept(cache, 1)
        for _ in range(3):
            cache.get("Other", "id", 1)
        other = cache.get_keys("Other", "id", 1)[0]
        assert other not in near_of(cache).entries
        assert cache.metrics.by_model()["Other"].near_hits == 0
    finally:
        cache.close()


def test_function_results_are_kept_near(cache: Rows) -> None:
    calls: list[int] = []

    @cache.cached(name="square")
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    wait_until(lambda: square(3) == 9 and cache.metrics.by_model().get("square"))
    wait_until(lambda: square(3) == 9 and cache.metrics.by_model()["square"].near_hits > 0)
    square.invalidate(3)
    calls.clear()
    assert square(3) == 9
    assert calls == [3]


def test_options_are_checked(redis_client: redis.Redis, db: dict[int, dict[str, Any]]) -> None:
    for options, message in [
        ({"near_bytes": -1}, "near_bytes must be"),
        ({"near_bytes": 1.5}, "near_bytes must be"),
        ({"near_bytes": 1, "near_ttl": 0}, "near_ttl must be"),
        ({"near_bytes": 1, "near_models": "Row"}, "near_models must be"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            Rows(redis_client, db, **options)

    class OwnKeys(Rows):
        def get_keys(self, cls: Any, id_field: Any, id_val: Any) -> tuple[str, str]:
            return f"own:{{{id_val}}}", f"own:{{{id_val}}}:lease"

    with pytest.raises(ConfigurationError, match="needs the default keys"):
        OwnKeys(redis_client, db, near_bytes=1 << 20)


# -- asyncio --------------------------------------------------------------------------------------


def test_asyncio_hits_and_the_race(redis_server: RedisServer, writer: Rows) -> None:
    async def body() -> None:
        client = aredis.Redis(port=redis_server.port)
        cache = AsyncRows(client, writer.db, **NEAR)
        try:
            near = near_of(cache)
            near.get("")
            assert near.tracker is not None
            assert await asyncio.to_thread(near.tracker.connected.wait, 5)
            key = cache.get_keys("Row", "id", 1)[0]
            for _ in range(1000):  # until a read is not voided by the message of the commit
                await cache.get("Row", "id", 1)
                if key in near.entries:
                    break
                await asyncio.sleep(0.001)
            assert key in near.entries
            hits = cache.metrics.snapshot().near_hits
            assert await cache.get("Row", "id", 1) == {"id": 1, "version": 1}
            assert cache.metrics.snapshot().near_hits == hits + 1

            # Own invalidation, then a reply read before another client's write, stored
            # after its message.
            await cache.invalidate("Row", "id", 2)
            await cache.get("Row", "id", 2)
            await asyncio.to_thread(settled, cache, writer.redis)
            near.drop([cache.get_keys("Row", "id", 2)[0]])  # in Redis only, as in committed()
            perform = cache._io.perform

            async def gated(op: Any) -> Any:
                reply = await perform(op)
                if isinstance(op, Script) and op.name == "get_or_lease":
                    await asyncio.to_thread(invalidated_meanwhile(cache, writer, 2))
                return reply

            cache._io.perform = gated  # type: ignore[method-assign]
            assert (await cache.get("Row", "id", 2))["version"] == 1
            cache._io.perform = perform  # type: ignore[method-assign]
            assert cache.get_keys("Row", "id", 2)[0] not in near.entries
            assert (await cache.get("Row", "id", 2))["version"] == 2
        finally:
            cache.close()
            await client.aclose()

    asyncio.run(body())


def test_shared_objects_are_handed_out_as_kept(
    redis_client: redis.Redis, db: dict[int, dict[str, Any]], writer: Rows
) -> None:
    cache = Rows(redis_client, db, near_shared=True, **NEAR)
    try:
        tracking(cache)
        first = kept(cache, 1)
        assert cache.get("Row", "id", 1) is first  # no decoding: the one object
        with pytest.raises(NotFound):
            cache.get("Row", "id", 99)
        wait_until(lambda: cache.get_many("Row", "id", [99, 1]) == [None, first])
        write(writer, 1)
        key = cache.get_keys("Row", "id", 1)[0]
        wait_until(lambda: key not in near_of(cache).entries)
        assert cache.get("Row", "id", 1)["version"] == 2
    finally:
        cache.close()


def test_labels_in_any_spelling_are_tracked(
    redis_client: redis.Redis, db: dict[int, dict[str, Any]], writer: Rows
) -> None:
    """Keys spell a label's braces and spaces as ``_``; a label that extends another (``Row``,
    ``Row:archive``) shares its tracked prefix (Redis refuses overlapping ones)."""
    labels = ["my Row{1}", "Row", "Row:archive"]
    cache = Rows(redis_client, db, near_models=labels, **NEAR)
    other = Rows(redis_client, db, prefix="near:")
    try:
        tracking(cache)
        for label in labels:
            key = cache.get_keys(label, "id", 1)[0]
            wait_until(lambda k=key, m=label: cache.get(m, "id", 1) and k in near_of(cache).entries)
            db[1] = {"id": 1, "version": db[1]["version"] + 1}
            other.invalidate(label, "id", 1)  # another client: only its message can drop it
            wait_until(lambda k=key: k not in near_of(cache).entries)
    finally:
        cache.close()


def test_invalidate_model_finds_labels_in_any_spelling(
    redis_client: redis.Redis, db: dict[int, dict[str, Any]]
) -> None:
    cache = Rows(redis_client, db, prefix="near:")
    cache.get("my Row{1}", "id", 1)
    assert cache.invalidate_model("my Row{1}", settle=False) == 1
