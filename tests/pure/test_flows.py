"""The protocol's flows, branch by branch, against scripted replies: no Redis, no database.

Each test scripts what Redis and the database answer and checks what the flow sent and what
its caller got (see :mod:`cachecow.testing.flows`). The Lua side of the protocol is tested
against real Redis elsewhere (``tests/server/test_broken_protocol.py`` and the contract suite).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cachecow import CacheCow, CacheUnavailable, ConfigurationError, InvalidationFailed, NotFound
from cachecow._batch import BatchRead, read_many
from cachecow._flights import answer, land
from cachecow._ops import TOMBSTONE, PartialPipelineError
from cachecow.testing.contract import FakeClock
from cachecow.testing.flows import BUSY, LEASED, REFUSED, STORED, Scripted, ScriptError

ROW = {"id": 1, "name": "one"}
ROW_BYTES = b'{"id":1,"name":"one"}'


class Users(CacheCow):
    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        raise AssertionError("a scripted flow never calls fetch")


def cache(**options: Any) -> Users:
    """A cache whose client is never called (nothing listens on port 1)."""
    options.setdefault("clock", FakeClock())
    return Users(redis.Redis(port=1), **options)


def counts(c: CacheCow, *names: str) -> tuple[int, ...]:
    snap = c.metrics.snapshot().as_dict()
    return tuple(snap[name] for name in names)


def token_of(op: Any) -> str:
    """The lease token an operation carries (its first argument)."""
    return str(op.args[0])


# -- get: hits ------------------------------------------------------------------------------


def test_get_hit_is_one_lease_call() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [ROW_BYTES])
    assert run.names() == ["get_or_lease"]
    assert run.ops[0].keys == c.get_keys("user", "id", 1)
    assert run.value() == ROW
    assert counts(c, "hits", "misses") == (1, 0)


def test_get_tombstone_raises_not_found() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [TOMBSTONE])
    assert isinstance(run.error, NotFound)
    assert counts(c, "tombstone_hits") == (1,)


def test_get_unusable_bytes_are_discarded_in_the_next_lease_call() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [b"\xffnot json", LEASED, ROW, STORED])
    assert run.names() == ["get_or_lease", "get_or_lease", "fetch", "commit"]
    first, second = run.scripts("get_or_lease")
    assert second.args == (*first.args, b"\xffnot json")  # delete exactly these bytes
    assert run.value() == ROW
    assert counts(c, "decode_failures", "commits") == (1, 1)


def test_get_unusable_twice_is_served_from_fetch_uncached() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [b"\xff", b"\xfe", ROW])
    assert run.names() == ["get_or_lease", "get_or_lease", "fetch"]
    assert run.value() == ROW
    assert counts(c, "decode_failures", "commits") == (2, 0)


def test_get_hit_failing_verify_is_unusable() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [b'{"id":2}', LEASED, ROW, STORED])
    assert run.value() == ROW
    assert counts(c, "verify_failures", "commits") == (1, 1)


def test_get_hit_whose_verify_answer_cannot_be_a_bool_is_unusable() -> None:
    """A ``verify`` whose answer raises when taken as a bool fails like one that raises."""

    class Unsure:
        def __bool__(self) -> bool:
            raise RuntimeError("no answer")

    c = cache()
    c.verify = lambda *args: Unsure()  # type: ignore[method-assign]
    run = Scripted(c).get("user", "id", 1, [ROW_BYTES, LEASED, ROW, STORED])
    assert run.value() == ROW
    assert counts(c, "verify_failures") == (1,)


# -- get: the lease ---------------------------------------------------------------------------


def test_get_miss_commits_under_its_own_token() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [LEASED, ROW, STORED])
    assert run.names() == ["get_or_lease", "fetch", "commit"]
    lease, commit = run.scripts("get_or_lease")[0], run.scripts("commit")[0]
    assert token_of(commit) == token_of(lease)  # the commit is checked against this lease
    assert commit.args[1] == ROW_BYTES
    assert run.value() == ROW
    assert counts(c, "misses", "leases", "fetches", "commits") == (1, 1, 1, 1)


def test_each_get_has_a_token_of_its_own() -> None:
    c = cache()
    runs = [Scripted(c).get("user", "id", 1, [LEASED, ROW, STORED]) for _ in range(2)]
    assert token_of(runs[0].ops[0]) != token_of(runs[1].ops[0])


def test_get_commit_refused_still_answers_with_the_fetched_object() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [LEASED, ROW, REFUSED])
    assert run.value() == ROW
    assert counts(c, "commits", "stale_commits") == (0, 1)


@pytest.mark.parametrize("missing", [None, NotFound("gone")])
def test_get_of_nothing_commits_a_tombstone(missing: Any) -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [LEASED, missing, STORED])
    assert run.scripts("commit")[0].args[1] == TOMBSTONE
    assert isinstance(run.error, NotFound)


def test_get_fetch_error_releases_the_lease_and_raises_it_unchanged() -> None:
    c = cache()
    boom = RuntimeError("database down")
    run = Scripted(c).get("user", "id", 1, [LEASED, boom, 1])
    assert run.names() == ["get_or_lease", "fetch", "release"]
    assert token_of(run.scripts("release")[0]) == token_of(run.ops[0])
    assert run.error is boom


def test_get_release_failure_does_not_hide_the_fetch_error() -> None:
    c = cache()
    boom = RuntimeError("database down")
    run = Scripted(c).get("user", "id", 1, [LEASED, boom, RedisConnectionError("gone")])
    assert run.error is boom
    assert counts(c, "redis_errors") == (1,)


def test_get_serialize_error_releases_the_lease() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [LEASED, {"id": 1, "when": object()}, 1])
    assert run.names() == ["get_or_lease", "fetch", "release"]
    assert isinstance(run.error, TypeError)


def test_get_uncacheable_object_is_returned_and_its_lease_released() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [LEASED, {"id": 2}, 1])
    assert run.names() == ["get_or_lease", "fetch", "release"]
    assert run.value() == {"id": 2}
    assert counts(c, "uncacheable") == (1,)


def test_get_oversized_value_is_returned_and_its_lease_released() -> None:
    c = cache(max_value_bytes=8)
    run = Scripted(c).get("user", "id", 1, [LEASED, ROW, 1])
    assert run.names() == ["get_or_lease", "fetch", "release"]
    assert run.value() == ROW
    assert counts(c, "oversized_values") == (1,)


@pytest.mark.parametrize(("reply", "corrupt"), [(2, 1), (LEASED, 0)])
def test_get_lease_after_repairing_foreign_data_is_counted(reply: int, corrupt: int) -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [reply, ROW, STORED])
    assert run.value() == ROW
    assert counts(c, "corrupt_keys", "leases") == (corrupt, 1)


def test_get_unexpected_lease_reply_is_cache_unavailable() -> None:
    run = Scripted(cache()).get("user", "id", 1, [7])
    assert isinstance(run.error, CacheUnavailable)


# -- get: Redis failures ----------------------------------------------------------------------


def test_get_redis_error_at_the_lease_strict_raises() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [RedisConnectionError("down")])
    assert isinstance(run.error, CacheUnavailable)
    assert run.error.operation == "get"
    assert counts(c, "redis_errors") == (1,)


def test_get_redis_error_at_the_lease_fail_open_fetches() -> None:
    c = cache(fail_open=True)
    run = Scripted(c).get("user", "id", 1, [RedisConnectionError("down"), ROW])
    assert run.names() == ["get_or_lease", "fetch"]
    assert run.value() == ROW
    assert counts(c, "fail_open_fetches", "fetches") == (1, 1)


@pytest.mark.parametrize("fail_open", [False, True])
def test_get_commit_refused_by_redis_releases_the_lease(fail_open: bool) -> None:
    c = cache(fail_open=fail_open)
    oom = ResponseError("OOM command not allowed when used memory > 'maxmemory'")
    run = Scripted(c).get("user", "id", 1, [LEASED, ROW, oom, 1])
    assert run.names() == ["get_or_lease", "fetch", "commit", "release"]
    if fail_open:
        assert run.value() == ROW
    else:
        assert isinstance(run.error, CacheUnavailable)
        assert run.error.operation == "commit"
    assert counts(c, "redis_errors") == (1,)  # the release's success is not a second failure


def test_get_commit_timed_out_keeps_the_lease() -> None:
    """It may have landed; a release would wait on a stalled Redis as long again."""
    c = cache(fail_open=True)
    run = Scripted(c).get("user", "id", 1, [LEASED, ROW, RedisTimeoutError("slow")])
    assert run.names() == ["get_or_lease", "fetch", "commit"]
    assert run.value() == ROW


# -- get: interruptions -----------------------------------------------------------------------


def test_get_cancelled_with_the_lease_reply_in_flight_releases_briefly() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [asyncio.CancelledError(), 1])
    assert run.names() == ["get_or_lease", "timeboxed", "release"]
    assert token_of(run.scripts("release")[0]) == token_of(run.ops[0])
    assert isinstance(run.error, asyncio.CancelledError)


def test_get_cancelled_during_the_commit_releases_briefly() -> None:
    run = Scripted(cache()).get("user", "id", 1, [LEASED, ROW, asyncio.CancelledError(), 1])
    assert run.names() == ["get_or_lease", "fetch", "commit", "timeboxed", "release"]
    assert isinstance(run.error, asyncio.CancelledError)


def test_get_interrupted_by_keyboard_interrupt_releases_nothing() -> None:
    run = Scripted(cache()).get("user", "id", 1, [KeyboardInterrupt()])
    assert run.names() == ["get_or_lease"]
    assert isinstance(run.error, KeyboardInterrupt)


# -- get: busy --------------------------------------------------------------------------------


def test_get_busy_under_fetch_policy_fetches_uncached() -> None:
    c = cache(busy="fetch")
    run = Scripted(c).get("user", "id", 1, [BUSY, ROW])
    assert run.names() == ["get_or_lease", "fetch"]
    assert run.value() == ROW
    assert counts(c, "busy", "waits", "leases") == (1, 0, 0)


def test_get_busy_waits_then_finds_the_holders_value() -> None:
    c = cache()
    run = Scripted(c).get("user", "id", 1, [BUSY, BUSY, ROW_BYTES])
    assert run.names() == ["get_or_lease", "sleep", "get_or_lease", "sleep", "get_or_lease"]
    assert len({token_of(op) for op in run.scripts("get_or_lease")}) == 1
    assert run.value() == ROW
    assert counts(c, "busy", "waits", "hits") == (1, 1, 1)


def test_get_busy_takes_the_lease_over_when_the_holders_expires() -> None:
    run = Scripted(cache()).get("user", "id", 1, [BUSY, LEASED, ROW, STORED])
    assert run.names() == ["get_or_lease", "sleep", "get_or_lease", "fetch", "commit"]
    assert run.value() == ROW


def test_get_busy_wait_times_out_then_fetches_uncached() -> None:
    clock = FakeClock()
    c = cache(wait_timeout=0.05, clock=clock)

    def busy_past_the_deadline(op: Any) -> int:
        clock.now += 10  # the poll's reply comes after the wait is over
        return BUSY

    run = Scripted(c).get("user", "id", 1, [BUSY, busy_past_the_deadline, ROW])
    assert run.names() == ["get_or_lease", "sleep", "get_or_lease", "fetch"]
    assert run.value() == ROW
    assert counts(c, "wait_timeouts", "leases", "fetches") == (1, 0, 1)


def test_get_busy_fetch_of_nothing_raises_not_found_uncached() -> None:
    c = cache(busy="fetch")
    run = Scripted(c).get("user", "id", 1, [BUSY, NotFound("gone")])
    assert run.names() == ["get_or_lease", "fetch"]
    assert isinstance(run.error, NotFound)
    assert isinstance(run.error.__cause__, NotFound)


@pytest.mark.parametrize(("reply", "corrupt"), [(3, 1), (BUSY, 0)])
def test_get_busy_after_repairing_foreign_data_is_counted(reply: int, corrupt: int) -> None:
    c = cache(busy="fetch")
    run = Scripted(c).get("user", "id", 1, [reply, ROW])
    assert run.value() == ROW
    assert counts(c, "corrupt_keys", "busy") == (corrupt, 1)


# -- get: refresh ahead -----------------------------------------------------------------------

FRESH = {"id": 1, "name": "fresh"}
FRESH_BYTES = b'{"id":1,"name":"fresh"}'


def refresh(payload: bytes) -> list[Any]:
    """``get_or_lease``'s reply to a hit inside its refresh window: the bytes, and the lease."""
    return [payload, LEASED]


def test_get_lease_call_without_refresh_ahead_is_unchanged() -> None:
    run = Scripted(cache()).get("user", "id", 1, [ROW_BYTES])
    assert len(run.ops[0].args) == 2  # token, flag_ttl: no window, no reply of the new shape


def test_get_lease_call_sends_the_refresh_windows() -> None:
    c = cache(refresh_ahead=0.25, ttl=100, tombstone_ttl=8, ttl_jitter=0.1)
    run = Scripted(c).get("user", "id", 1, [ROW_BYTES])
    assert run.ops[0].args[2:] == ("", 25_000, 2_000)  # no discard; value and tombstone windows
    run = Scripted(c).get("user", "id", 1, [b"\xff", ROW_BYTES])
    assert run.ops[1].args[2:] == (b"\xff", 25_000, 2_000)  # the discard keeps its place


def test_get_refresh_fetches_commits_and_returns_the_fresh_object() -> None:
    c = cache(refresh_ahead=0.1)
    run = Scripted(c).get("user", "id", 1, [refresh(ROW_BYTES), FRESH, STORED])
    assert run.names() == ["get_or_lease", "fetch", "commit"]
    lease, commit = run.scripts("get_or_lease")[0], run.scripts("commit")[0]
    assert token_of(commit) == token_of(lease)  # refused like any commit once the lease is gone
    assert commit.args[1] == FRESH_BYTES
    assert run.value() == FRESH
    names = ("hits", "misses", "leases", "refreshes", "fetches", "commits", "refresh_failures")
    assert counts(c, *names) == (1, 0, 1, 1, 1, 1, 0)


def test_get_refresh_refused_at_commit_returns_its_fetched_object() -> None:
    c = cache(refresh_ahead=0.1)
    run = Scripted(c).get("user", "id", 1, [refresh(ROW_BYTES), FRESH, REFUSED])
    assert run.value() == FRESH  # current when it was read; nothing was cached
    assert counts(c, "commits", "stale_commits") == (0, 1)


def test_get_refresh_whose_fetch_fails_returns_the_cached_object() -> None:
    c = cache(refresh_ahead=0.1)
    run = Scripted(c).get("user", "id", 1, [refresh(ROW_BYTES), RuntimeError("db down"), 1])
    assert run.names() == ["get_or_lease", "fetch", "release"]
    assert token_of(run.scripts("release")[0]) == token_of(run.ops[0])
    assert run.value() == ROW
    assert counts(c, "refreshes", "refresh_failures", "hits") == (1, 1, 1)


def test_get_refresh_interrupted_releases_and_raises() -> None:
    run = Scripted(cache(refresh_ahead=0.1)).get(
        "user", "id", 1, [refresh(ROW_BYTES), KeyboardInterrupt(), 1]
    )
    assert run.names() == ["get_or_lease", "fetch", "release"]
    assert isinstance(run.error, KeyboardInterrupt)


def test_get_refresh_of_a_tombstone() -> None:
    c = cache(refresh_ahead=0.1)
    run = Scripted(c).get("user", "id", 1, [refresh(TOMBSTONE), ROW, STORED])
    assert run.value() == ROW  # the row exists now
    run = Scripted(c).get("user", "id", 1, [refresh(TOMBSTONE), None, STORED])
    assert run.scripts("commit")[0].args[1] == TOMBSTONE
    assert isinstance(run.error, NotFound)
    run = Scripted(c).get("user", "id", 1, [refresh(TOMBSTONE), RuntimeError("db down"), 1])
    assert isinstance(run.error, NotFound)  # the cached answer
    assert counts(c, "tombstone_hits", "refreshes", "refresh_failures") == (3, 3, 1)


def test_get_refresh_of_unusable_bytes_is_a_miss_under_the_lease_it_holds() -> None:
    c = cache(refresh_ahead=0.1)
    run = Scripted(c).get("user", "id", 1, [refresh(b"\xff"), ROW, STORED])
    assert run.names() == ["get_or_lease", "fetch", "commit"]  # no discard: the commit replaces
    assert run.value() == ROW
    assert counts(c, "decode_failures", "misses", "refreshes", "commits") == (1, 1, 0, 1)


@pytest.mark.parametrize("reply", [[ROW_BYTES], [ROW_BYTES, 0], [1, 1], [ROW_BYTES, 1, 1]])
def test_get_lease_reply_of_a_wrong_shape_is_cache_unavailable(reply: Any) -> None:
    run = Scripted(cache(refresh_ahead=0.1)).get("user", "id", 1, [reply])
    assert isinstance(run.error, CacheUnavailable)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"refresh_ahead": 1.0}, r"refresh_ahead must be a fraction in \[0, 1\)"),
        ({"refresh_ahead": -0.1}, "refresh_ahead must be a fraction"),
        ({"refresh_ahead": True}, "refresh_ahead must be a fraction"),
        ({"refresh_ahead": 0.5, "ttl_jitter": 0.5}, "refresh_ahead \\+ ttl_jitter must be below 1"),
    ],
)
def test_bad_refresh_ahead_is_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        cache(**options)


# -- peek -------------------------------------------------------------------------------------


def test_peek_hit_miss_and_tombstone() -> None:
    c = cache()
    run = Scripted(c).peek("user", "id", 1, [ROW_BYTES])
    assert (run.names(), run.value()) == (["GET"], ROW)
    assert Scripted(c).peek("user", "id", 1, [None]).value() is None
    assert isinstance(Scripted(c).peek("user", "id", 1, [TOMBSTONE]).error, NotFound)
    assert Scripted(c).peek("user", "id", 1, [b"\xff"]).value() is None  # unusable: a miss
    assert counts(c, "hits", "misses", "tombstone_hits", "decode_failures") == (1, 1, 1, 1)


def test_peek_foreign_data_is_a_counted_miss() -> None:
    c = cache()
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert Scripted(c).peek("user", "id", 1, [wrongtype]).value() is None
    assert counts(c, "corrupt_keys", "misses", "redis_errors") == (1, 1, 0)


@pytest.mark.parametrize("fail_open", [False, True])
def test_peek_redis_error(fail_open: bool) -> None:
    run = Scripted(cache(fail_open=fail_open)).peek("user", "id", 1, [RedisTimeoutError("slow")])
    if fail_open:
        assert run.value() is None
    else:
        assert isinstance(run.error, CacheUnavailable)


# -- get_many ---------------------------------------------------------------------------------


def row(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"n{i}"}


def row_bytes(i: int) -> bytes:
    return f'{{"id":{i},"name":"n{i}"}}'.encode()


def test_get_many_hits_in_one_call_in_order_with_duplicates() -> None:
    c = cache()
    run = Scripted(c).get_many("user", "id", [2, 1, 2], [[row_bytes(2), row_bytes(1)]])
    assert run.names() == ["get_or_lease_many"]
    assert run.ops[0].keys == (*c.get_keys("user", "id", 2), *c.get_keys("user", "id", 1))
    assert run.value() == [row(2), row(1), row(2)]
    assert counts(c, "hits") == (2,)


def test_get_many_misses_fetch_once_and_commit_under_the_batch_token() -> None:
    c = cache()
    replies = [[LEASED, TOMBSTONE, LEASED], {1: row(1)}, b"10"]
    run = Scripted(c).get_many("user", "id", [1, 2, 3], replies)
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many"]
    assert run.ops[1].id_vals == (1, 3)
    lease, commit = run.ops[0], run.ops[2]
    assert token_of(commit) == token_of(lease)
    assert commit.args[1] == ROW_BYTES.replace(b"one", b"n1")
    assert commit.args[3] == TOMBSTONE  # 3 was not found
    assert run.value() == [row(1), None, None]
    assert counts(c, "commits", "stale_commits", "tombstone_hits") == (1, 1, 1)


def test_get_many_fetch_many_error_releases_every_lease() -> None:
    boom = RuntimeError("database down")
    run = Scripted(cache()).get_many("user", "id", [1, 2], [[LEASED, LEASED], boom, b"00"])
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many"]
    release = run.ops[2]
    assert release.args[1:] == (b"", 0, b"", 0)  # empty payloads: give the leases back
    assert run.error is boom


def test_get_many_fetch_many_must_return_a_mapping() -> None:
    run = Scripted(cache()).get_many("user", "id", [1], [[LEASED], [row(1)], b"0"])
    assert isinstance(run.error, TypeError)


def test_get_many_busy_under_fetch_policy_rides_along_uncached() -> None:
    c = cache(busy="fetch")
    replies = [[LEASED, BUSY], {1: row(1), 2: row(2)}, b"1"]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    assert run.ops[1].id_vals == (1, 2)
    assert len(run.ops[2].keys) == 2  # only key 1 is committed
    assert run.value() == [row(1), row(2)]


def test_get_many_fills_its_own_leases_before_waiting_for_busy_ones() -> None:
    c = cache()
    replies = [[LEASED, BUSY], {1: row(1)}, b"1", [row_bytes(2)]]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    names = ["get_or_lease_many", "fetch_many", "commit_many", "sleep", "get_or_lease_many"]
    assert run.names() == names
    assert run.ops[4].keys == c.get_keys("user", "id", 2)  # the poll asks only for key 2
    assert run.value() == [row(1), row(2)]
    assert counts(c, "waits", "hits") == (1, 1)


def test_get_many_unusable_bytes_are_discarded_in_the_next_call() -> None:
    c = cache()
    replies = [[b"\xff", row_bytes(2)], [LEASED], {1: row(1)}, b"1"]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    assert run.ops[1].args[4:] == (b"\xff",)  # the discard rides in the lease call
    assert run.value() == [row(1), row(2)]


@pytest.mark.parametrize("fail_open", [False, True])
def test_get_many_redis_error_at_the_lease(fail_open: bool) -> None:
    c = cache(fail_open=fail_open)
    replies = [RedisConnectionError("down")] + ([{1: row(1)}] if fail_open else [])
    run = Scripted(c).get_many("user", "id", [1], replies)
    if fail_open:
        assert run.value() == [row(1)]
        assert counts(c, "fail_open_fetches") == (1,)
    else:
        assert isinstance(run.error, CacheUnavailable)


def test_get_many_commit_failure_releases_and_polls_no_more() -> None:
    c = cache(fail_open=True)
    replies = [[LEASED, BUSY], {1: row(1), 2: row(2)}, RedisConnectionError("gone"), b"0"]
    replies.append({2: row(2)})
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    names = ["get_or_lease_many", "fetch_many", "commit_many", "commit_many", "fetch_many"]
    assert run.names() == names  # commit, its release, then key 2 from the database
    assert run.value() == [row(1), row(2)]
    assert counts(c, "redis_errors", "waits") == (1, 0)


def test_get_many_partial_pipeline_gives_back_the_leases_won() -> None:
    """On Redis Cluster the driver splits a batch script's call by node; when some nodes
    answer and others fail, it raises PartialPipelineError with one reply per lookup."""
    c = cache(fail_open=True)
    partial = PartialPipelineError(RedisConnectionError("node down"), [LEASED, RedisError()])
    run = Scripted(c).get_many("user", "id", [1, 2], [partial, [1], {1: row(1), 2: row(2)}])
    assert run.names() == ["get_or_lease_many", "commit_many", "fetch_many"]
    (lease, release) = run.scripts("get_or_lease_many") + run.scripts("commit_many")
    assert lease.shared == len(lease.args)  # the token, flag_ttl...: nothing per lookup
    assert release.keys == c.get_keys("user", "id", 1)  # only the lease won is given back
    assert run.value() == [row(1), row(2)]


def test_get_many_cancelled_releases_briefly() -> None:
    run = Scripted(cache()).get_many("user", "id", [1], [asyncio.CancelledError(), b"0"])
    assert run.names() == ["get_or_lease_many", "timeboxed", "commit_many"]
    assert isinstance(run.error, asyncio.CancelledError)


def test_get_many_unexpected_reply_is_cache_unavailable() -> None:
    run = Scripted(cache()).get_many("user", "id", [1], [[7]])
    assert isinstance(run.error, CacheUnavailable)


def test_get_many_unusable_twice_is_served_uncached() -> None:
    c = cache()
    run = Scripted(c).get_many("user", "id", [1], [[b"\xff"], [b"\xfe"], {1: row(1)}])
    assert run.names() == ["get_or_lease_many", "get_or_lease_many", "fetch_many"]
    assert run.value() == [row(1)]
    assert counts(c, "decode_failures", "fetches") == (2, 1)


def test_get_many_counts_repaired_keys_and_each_miss_once() -> None:
    c = cache()
    replies = [[2, 3], {1: row(1)}, b"1", [BUSY], [row_bytes(2)]]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    assert run.value() == [row(1), row(2)]
    # key 2: busy twice (a miss, a wait), then the holder's value
    assert counts(c, "corrupt_keys", "misses", "busy", "waits", "hits") == (2, 2, 1, 1, 1)


def test_get_many_wait_times_out_then_fetches_uncached() -> None:
    clock = FakeClock()
    c = cache(wait_timeout=0.05, clock=clock)

    def busy_past_the_deadline(op: Any) -> list[int]:
        clock.now += 10
        return [BUSY]

    run = Scripted(c).get_many("user", "id", [1], [[BUSY], busy_past_the_deadline, {1: row(1)}])
    assert run.names() == ["get_or_lease_many", "sleep", "get_or_lease_many", "fetch_many"]
    assert run.value() == [row(1)]
    assert counts(c, "wait_timeouts", "leases") == (1, 0)


def test_get_many_discard_and_busy_poll_together_without_sleeping() -> None:
    c = cache()
    replies = [[b"\xff", BUSY], [LEASED, row_bytes(2)], {1: row(1)}, b"1"]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    # a discard is sent again at once (no sleep), with the busy key's poll
    assert run.names() == ["get_or_lease_many", "get_or_lease_many", "fetch_many", "commit_many"]
    assert run.value() == [row(1), row(2)]


def test_get_many_partial_pipeline_without_leases_releases_nothing() -> None:
    c = cache(fail_open=True)
    partial = PartialPipelineError(RedisConnectionError("node down"), [row_bytes(1), RedisError()])
    run = Scripted(c).get_many("user", "id", [1, 2], [partial, {1: row(1), 2: row(2)}])
    assert run.names() == ["get_or_lease_many", "fetch_many"]
    assert run.value() == [row(1), row(2)]


def test_get_many_commit_timed_out_keeps_the_leases() -> None:
    c = cache(fail_open=True)
    replies = [[LEASED], {1: row(1)}, RedisTimeoutError("slow")]
    run = Scripted(c).get_many("user", "id", [1], replies)
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many"]
    assert run.value() == [row(1)]


def test_get_many_commit_cancelled_releases_briefly() -> None:
    replies = [[LEASED], {1: row(1)}, asyncio.CancelledError(), b"0"]
    run = Scripted(cache()).get_many("user", "id", [1], replies)
    assert run.names() == [
        "get_or_lease_many",
        "fetch_many",
        "commit_many",
        "timeboxed",
        "commit_many",
    ]
    assert isinstance(run.error, asyncio.CancelledError)


def test_get_many_uncacheable_objects_are_released_not_stored() -> None:
    c = cache()
    replies = [[LEASED, LEASED], {1: {"id": 9}, 2: row(2)}, b"01"]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    assert run.ops[2].args[1:3] == (b"", 0)  # key 1: an empty payload gives its lease back
    assert run.value() == [{"id": 9}, row(2)]
    assert counts(c, "uncacheable", "commits", "stale_commits") == (1, 1, 0)


def test_get_many_release_failure_is_logged_and_counted() -> None:
    c = cache()
    boom = RuntimeError("database down")
    run = Scripted(c).get_many("user", "id", [1], [[LEASED], boom, RedisConnectionError("x")])
    assert run.error is boom
    assert counts(c, "redis_errors") == (1,)


def test_get_many_commit_reply_of_the_wrong_shape_is_cache_unavailable() -> None:
    replies = [[LEASED], {1: row(1)}, b"11", b"0"]  # then the lease is given back
    run = Scripted(cache()).get_many("user", "id", [1], replies)
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many", "commit_many"]
    assert isinstance(run.error, CacheUnavailable)


def test_get_many_with_keys_of_a_custom_get_keys() -> None:
    class Custom(Users):
        def get_keys(self, cls: Any, id_field: Any, id_val: Any) -> tuple[str, str]:
            return f"u:{{{id_val}}}", f"u:{{{id_val}}}:lease"

    c = Custom(redis.Redis(port=1), clock=FakeClock())
    run = Scripted(c).get_many("user", "id", [1], [[row_bytes(1)]])
    assert run.ops[0].keys == ("u:{1}", "u:{1}:lease")
    assert run.value() == [row(1)]


def test_get_commit_error_with_a_failing_release_counts_one_error() -> None:
    c = cache(fail_open=True)
    replies = [LEASED, ROW, RedisConnectionError("gone"), RedisConnectionError("still")]
    run = Scripted(c).get("user", "id", 1, replies)
    assert run.value() == ROW
    assert counts(c, "redis_errors") == (1,)


def test_get_many_all_refused_counts_no_commit() -> None:
    c = cache()
    run = Scripted(c).get_many("user", "id", [1], [[LEASED], {1: row(1)}, b"0"])
    assert run.value() == [row(1)]
    assert counts(c, "commits", "stale_commits") == (0, 1)


def test_get_many_commit_error_with_a_failing_release_counts_one_error() -> None:
    c = cache(fail_open=True)
    replies = [[LEASED], {1: row(1)}, RedisConnectionError("gone"), RedisConnectionError("x")]
    run = Scripted(c).get_many("user", "id", [1], replies)
    assert run.value() == [row(1)]
    assert counts(c, "redis_errors") == (1,)


def test_get_many_refreshes_ride_in_the_misses_fetch_and_commit() -> None:
    c = cache(refresh_ahead=0.1, ttl=100, tombstone_ttl=10)
    replies = [[[row_bytes(1), LEASED], LEASED, row_bytes(3)], {1: FRESH, 2: row(2)}, b"11"]
    run = Scripted(c).get_many("user", "id", [1, 2, 3], replies)
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many"]
    assert run.ops[0].args[1:4] == (c.options.flag_ttl_ms, 10_000, 1_000)
    assert run.ops[1].id_vals == (2, 1)  # the miss, then the refresh
    assert run.value() == [FRESH, row(2), row(3)]
    names = ("hits", "misses", "leases", "refreshes", "fetches", "commits")
    assert counts(c, *names) == (2, 1, 2, 1, 2, 2)


def test_get_many_fetch_error_with_only_refreshes_answers_the_cached_objects() -> None:
    c = cache(refresh_ahead=0.1)
    boom = RuntimeError("database down")
    replies = [[[row_bytes(1), LEASED], [TOMBSTONE, LEASED]], boom, b"00"]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many"]
    assert run.ops[2].args[1:] == (b"", 0, b"", 0)  # both leases given back
    assert run.value() == [row(1), None]
    assert counts(c, "refreshes", "refresh_failures") == (2, 2)


def test_get_many_fetch_error_with_a_miss_raises_it() -> None:
    c = cache(refresh_ahead=0.1)
    boom = RuntimeError("database down")
    replies = [[[row_bytes(1), LEASED], LEASED], boom, b"00"]
    run = Scripted(c).get_many("user", "id", [1, 2], replies)
    assert run.error is boom
    assert counts(c, "refresh_failures") == (0,)


def test_get_many_refresh_of_unusable_bytes_is_a_miss_under_its_lease() -> None:
    c = cache(refresh_ahead=0.1)
    run = Scripted(c).get_many("user", "id", [1], [[[b"\xff", LEASED]], {1: row(1)}, b"1"])
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many"]
    assert run.value() == [row(1)]
    assert counts(c, "decode_failures", "misses", "refreshes") == (1, 1, 0)


def test_get_many_partial_pipeline_gives_back_refresh_leases_too() -> None:
    c = cache(fail_open=True, refresh_ahead=0.1)
    # As on Redis Cluster: the node of key 1 answered (a hit inside its window, and its
    # lease), the node of key 2 failed.
    answered = [row_bytes(1), LEASED]
    partial = PartialPipelineError(RedisConnectionError("node down"), [answered, RedisError()])
    run = Scripted(c).get_many("user", "id", [1, 2], [partial, b"1", {1: row(1), 2: row(2)}])
    assert run.names() == ["get_or_lease_many", "commit_many", "fetch_many"]
    assert run.ops[1].keys == c.get_keys("user", "id", 1)  # the refresh lease, given back
    assert run.value() == [row(1), row(2)]


# -- get_many in single flight (see cachecow/_flights.py) --------------------------------------


def led_elsewhere(c: CacheCow, key: int) -> Any:
    """The flight of ``key``, as if another reader of the process were reading it."""
    flight, index = c._flights.join(c.get_keys("user", "id", key)[0], "another reader")
    assert index == -1
    return flight


def lands(c: CacheCow, flight: Any, obj: Any = None, error: BaseException | None = None) -> Any:
    """A reply for the follower's Wait: the other reader's read decided after the follower
    came (its followers covered), then landed with ``obj`` or ``error``."""

    def reply(op: Any) -> bool:
        flight.covered = flight.joined
        land(c, flight, ("user", "id", obj), obj, error)
        return True

    return reply


def test_a_batch_leads_its_new_keys_then_takes_a_followed_ones_result() -> None:
    c = cache()
    other = led_elsewhere(c, 2)
    replies = [[LEASED], {1: row(1)}, b"1", lands(c, other, row(2))]
    run = Scripted(c).get_many("user", "id", [1, 2], replies, reader="me")
    assert run.names() == ["get_or_lease_many", "fetch_many", "commit_many", "wait"]
    assert run.ops[0].keys == c.get_keys("user", "id", 1)  # key 2 is not asked for
    assert run.value() == [row(1), row(2)]
    assert counts(c, "joined") == (1,)
    assert c._flights.by_key == {}  # its own flight landed


def test_a_batch_follower_gets_none_for_a_missing_object_and_the_error_of_a_failure() -> None:
    c = cache()
    run = Scripted(c).get_many("user", "id", [2], [lands(c, led_elsewhere(c, 2))], reader="me")
    assert run.value() == [None]
    boom = RuntimeError("database down")
    failing = lands(c, led_elsewhere(c, 2), error=boom)
    assert Scripted(c).get_many("user", "id", [2], [failing], reader="me").error is boom


def test_a_batch_follower_that_waited_in_vain_fetches_uncached() -> None:
    c = cache()
    led_elsewhere(c, 2)
    run = Scripted(c).get_many("user", "id", [2], [False, {2: row(2)}], reader="me")
    assert run.names() == ["wait", "fetch_many"]
    assert run.value() == [row(2)]
    assert counts(c, "wait_timeouts", "fetches") == (1, 1)


def test_a_batch_follower_too_late_for_a_result_reads_again_in_the_next_flight() -> None:
    c = cache()
    other = led_elsewhere(c, 2)

    def landed_before_covering(op: Any) -> bool:  # decided before the follower came
        land(c, other, ("user", "id", 2), row(2), None)
        return True

    run = Scripted(c).get_many(
        "user", "id", [2], [landed_before_covering, [row_bytes(2)]], reader="me"
    )
    assert run.names() == ["wait", "get_or_lease_many"]  # it leads the next flight
    assert run.value() == [row(2)]
    assert c._flights.by_key == {}


def test_a_batch_follower_of_an_object_that_cannot_be_shared_reads_alone() -> None:
    c = cache()
    other = led_elsewhere(c, 2)

    def landed_unserializable(op: Any) -> bool:
        other.covered = other.joined
        land(c, other, ("user", "id", 2), {"id": 2, "x": object()}, None)
        return True

    run = Scripted(c).get_many(
        "user", "id", [2], [landed_unserializable, [row_bytes(2)]], reader="me"
    )
    assert run.names() == ["wait", "get_or_lease_many"]
    assert run.value() == [row(2)]


def test_a_batch_whose_redis_failed_reads_a_retried_key_uncached() -> None:
    """Under fail_open, a batch whose own lease call failed does not lead a followed key's
    next flight: that would wait on the failed Redis a second time in one call."""
    c = cache(fail_open=True)
    other = led_elsewhere(c, 2)

    def landed_before_covering(op: Any) -> bool:  # nothing to take: it would read again
        land(c, other, ("user", "id", 2), row(2), None)
        return True

    replies = [RedisTimeoutError("slow"), {1: row(1)}, landed_before_covering, {2: row(2)}]
    run = Scripted(c).get_many("user", "id", [1, 2], replies, reader="me")
    assert run.names() == ["get_or_lease_many", "fetch_many", "wait", "fetch_many"]
    assert run.value() == [row(1), row(2)]
    assert counts(c, "redis_errors", "fail_open_fetches") == (1, 2)


def test_followers_of_a_batchs_key_take_its_fetch_or_its_error() -> None:
    c = cache()
    key = c.get_keys("user", "id", 1)[0]
    places: list[Any] = []

    def joined_before_the_fetch(op: Any) -> list[int]:
        places.append(c._flights.join(key, "follower"))
        return [LEASED]

    replies = [joined_before_the_fetch, {1: row(1)}, b"1"]
    assert Scripted(c).get_many("user", "id", [1], replies, reader="me").value() == [row(1)]
    flight, index = places[0]
    assert (index, flight.covered) == (0, 1)
    assert answer(c, ("user", "id", 1), flight, index, many=True) == row(1)
    boom = RuntimeError("database down")
    replies = [joined_before_the_fetch, boom, b"0"]
    assert Scripted(c).get_many("user", "id", [1], replies, reader="me").error is boom
    flight, index = places[1]
    with pytest.raises(RuntimeError):
        answer(c, ("user", "id", 1), flight, index)


# -- invalidation -----------------------------------------------------------------------------


def test_invalidate_deletes_value_and_flag_in_one_command() -> None:
    c = cache()
    run = Scripted(c).invalidate("user", "id", 1, [2])
    assert run.ops[0].args == ("DEL", *c.get_keys("user", "id", 1))
    assert counts(c, "invalidations") == (1,)


def test_invalidate_failure_raises_invalidation_failed() -> None:
    run = Scripted(cache()).invalidate("user", "id", 1, [RedisTimeoutError("slow")])
    assert isinstance(run.error, InvalidationFailed)


@pytest.mark.parametrize(("acked", "ok"), [(1, True), (0, False)])
def test_invalidate_waits_for_replicas(acked: int, ok: bool) -> None:
    c = cache(wait_replicas=1)
    run = Scripted(c).invalidate("user", "id", 1, [acked])
    assert run.names() == ["replicated_write"]
    assert (run.error is None) is ok


def test_invalidate_many_is_one_command_and_nothing_for_none() -> None:
    c = cache()
    run = Scripted(c).invalidate_many("user", "id", [1, 2], [4])
    assert run.names() == ["DEL"]
    assert len(run.ops[0].args) == 5
    assert Scripted(c).invalidate_many("user", "id", [], []).ops == []


@pytest.mark.parametrize(("acked", "ok"), [(1, True), (0, False)])
def test_invalidate_many_waits_for_replicas(acked: int, ok: bool) -> None:
    run = Scripted(cache(wait_replicas=1)).invalidate_many("user", "id", [1, 2], [acked])
    assert run.names() == ["replicated_write"]
    assert (run.error is None) is ok


def test_invalidate_many_on_a_cluster_is_a_pipeline_of_one_del_per_slot() -> None:
    c = cache()
    c._group_by_slot = True
    run = Scripted(c).invalidate_many("user", "id", [1, 2], [[2, 2]])
    assert run.names() == ["pipeline"]
    assert [op.args[0] for op in run.ops[0].ops] == ["DEL", "DEL"]
    failed = Scripted(c).invalidate_many("user", "id", [1, 2], [RedisConnectionError("down")])
    assert isinstance(failed.error, InvalidationFailed)


def test_invalidate_many_partial_pipeline_raises_its_first_error() -> None:
    c = cache()
    c._group_by_slot = True
    down = RedisConnectionError("node down")
    run = Scripted(c).invalidate_many("user", "id", [1, 2], [PartialPipelineError(down, [2, down])])
    assert isinstance(run.error, InvalidationFailed)
    assert run.error.__cause__ is down


# -- a flow closed mid-way (its caller gone) -----------------------------------------------------


@pytest.mark.parametrize(
    ("call", "replies"),
    [
        ("get", []),  # at the lease call
        ("get", [LEASED]),  # at the fetch
        ("get", [LEASED, ROW]),  # at the commit
        ("get_many", []),
        ("get_many", [[LEASED]]),
        ("get_many", [[LEASED], {1: row(1)}]),
    ],
)
def test_a_closed_flow_yields_nothing_more(call: str, replies: list[Any]) -> None:
    """A flow closed while it waits (its generator collected) ends at once: no release or
    other operation, which no driver would perform (Python raises if a closing generator
    yields)."""
    c = cache()
    flow = (
        c._get_flow(("user", "id", 1))
        if call == "get"
        else read_many(BatchRead(c, "user", "id"), [1], [c.get_keys("user", "id", 1)], None)
    )
    op = next(flow)
    for reply in replies:
        op = flow.send(reply)
    assert op is not None
    flow.close()  # RuntimeError("generator ignored GeneratorExit") if it yielded


# -- the helper itself ------------------------------------------------------------------------


def test_a_script_too_short_or_too_long_fails_the_run() -> None:
    with pytest.raises(ScriptError, match="no reply left"):
        Scripted(cache()).get("user", "id", 1, [LEASED])
    with pytest.raises(ScriptError, match="unused"):
        Scripted(cache()).get("user", "id", 1, [ROW_BYTES, ROW_BYTES])


# -- reads that expect a hit (a plain GET first) ----------------------------------------------


def hot(c: CacheCow) -> CacheCow:
    c._hit_scores[c.model_label("user")] = 2 * c.plain_reads_from
    return c


def test_a_plain_miss_takes_the_lease() -> None:
    c = hot(cache())
    run = Scripted(c).get("user", "id", 1, [None, LEASED, row(1), b"1"])
    assert run.names() == ["GET", "get_or_lease", "fetch", "commit"]
    assert run.value() == row(1)
