"""The race tests can fail: run them against deliberately broken commit scripts.

The protection under test is the token comparison in ``commit.lua`` and ``commit_many.lua``.
Replacing it with a bare "the flag exists" check (the original cachecow's script) must let a
stale value into the cache in the ABA and expired-lease races, for the sync and the async class
alike, and removing the check altogether must let one in even when the invalidation comes
between fetch and commit. If these tests ever pass against the broken scripts, the race tests
have stopped testing anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import redis
import redis.asyncio as aredis

from cachecow import AsyncCacheCow, CacheCow
from cachecow._client import ScriptCall
from cachecow._scripts import script_source
from cachecow.testing.contract import CacheCowContract
from tests.server import test_contract_dict

TOKEN_CHECK = "if redis.call('GET', flag_key) ~= token then"
EXISTENCE_CHECK = "if redis.call('EXISTS', flag_key) == 0 then"
NO_CHECK = "if false then"
BATCH_TOKEN_CHECK = "if flags[n] == token then"
BATCH_EXISTENCE_CHECK = "if flags[n] then"


def broken(name: str, good: str, bad: str) -> str:
    source = script_source(name)
    assert good in source, f"{name}.lua no longer has the check this test breaks"
    return source.replace(good, bad)


class Breaks:
    """Mixin: caches whose commit scripts are replaced by ``self.scripts``."""

    scripts: ClassVar[dict[str, str]] = {}

    def install(self, cache: Any) -> None:
        for name, source in self.scripts.items():
            cache._io.scripts[name] = ScriptCall(name, source)  # every path sends these


class BrokenSync(Breaks, test_contract_dict.TestDictCacheContract):
    __test__ = False  # the contract's own tests are not meant to pass here

    def make_cache(self, redis: redis.Redis, **options: Any) -> CacheCow:
        cache = super().make_cache(redis, **options)
        self.install(cache)
        return cache


class BrokenAsync(Breaks, test_contract_dict.TestAsyncDictCacheContract):
    __test__ = False

    def make_async_cache(self, redis: aredis.Redis, **options: Any) -> AsyncCacheCow:
        cache = super().make_async_cache(redis, **options)
        self.install(cache)
        return cache


EXISTENCE = {
    "commit": broken("commit", TOKEN_CHECK, EXISTENCE_CHECK),
    "commit_many": broken("commit_many", BATCH_TOKEN_CHECK, BATCH_EXISTENCE_CHECK),
}
NOTHING = {"commit": broken("commit", TOKEN_CHECK, NO_CHECK)}


@pytest.fixture(params=[BrokenSync, BrokenAsync], ids=["sync", "async"])
def suite(request: pytest.FixtureRequest, redis_client: redis.Redis) -> Iterator[Any]:
    """A contract instance set up as pytest would, with broken scripts installed later."""
    instance: CacheCowContract = request.param()
    fixtures = [instance._contract_redis.__wrapped__(instance, redis_client)]  # type: ignore[attr-defined]
    if isinstance(instance, BrokenAsync):
        fixtures.append(instance._event_loop_thread.__wrapped__(instance))  # type: ignore[attr-defined]
    for fixture in fixtures:
        next(fixture)
    yield instance
    for fixture in reversed(fixtures):
        next(fixture, None)


def cached(suite: Any, key: int) -> str | None:
    """What the cache holds for ``key`` right now (read straight from Redis)."""
    return suite.cached_payload(suite.cache(), key)  # type: ignore[no-any-return]


RACES = ["test_race_aba", "test_race_fetch_outlives_flag_ttl", "test_get_many_race_aba"]


@pytest.mark.parametrize("race", RACES)
def test_races_catch_an_existence_check(suite: Any, race: str) -> None:
    suite.scripts = EXISTENCE
    with pytest.raises(AssertionError):
        getattr(suite, race)()
    assert cached(suite, 1) == "v1"  # it failed because the stale value was cached


def test_invalidate_race_catches_a_missing_check(suite: Any) -> None:
    suite.scripts = NOTHING
    with pytest.raises(AssertionError):
        suite.test_race_invalidate_between_fetch_and_commit()
    assert cached(suite, 1) == "v1"


def test_aba_scenario_caches_the_stale_value_under_an_existence_check(suite: Any) -> None:
    """Not only does the test fail: the broken script does what the seed's did."""
    suite.scripts = EXISTENCE
    out = suite.scenario_aba(suite.cache(), suite.cache(), suite.cache())
    assert out.cached_after["A commits"] == "v1"  # A's stale value got in under B's lease
    assert out.final == "v1"  # and stays: B's commit then finds no flag
    assert out.stale_commits == 0


@pytest.mark.parametrize("race", [*RACES, "test_race_invalidate_between_fetch_and_commit"])
def test_the_unbroken_scripts_pass_the_same_races(suite: Any, race: str) -> None:
    suite.scripts = {}
    getattr(suite, race)()
