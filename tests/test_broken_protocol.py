"""The race tests can fail: run their scenarios against a deliberately broken commit script.

The protection under test is the token comparison in ``commit.lua``. Replacing it with a bare
"the flag exists" check (the original cachecow's script) must let a stale value into the cache
in the ABA and expired-lease scenarios, and removing the check altogether must let one in
even when the invalidation comes between fetch and commit. If these tests ever pass against
the broken scripts, the scenarios have stopped testing anything.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from cachecow import CacheCow
from cachecow._scripts import script_source
from tests import test_contract_dict

TOKEN_CHECK = "if redis.call('GET', flag_key) ~= token then"
EXISTENCE_CHECK = "if redis.call('EXISTS', flag_key) == 0 then"
NO_CHECK = "if false then"


def test_commit_script_compares_the_token() -> None:
    assert TOKEN_CHECK in script_source("commit")


class BrokenCommit(test_contract_dict.TestDictCacheContract):
    """The dict contract, with the commit script's token check replaced by ``check``."""

    __test__ = False  # the contract's own tests are not meant to pass here
    check = EXISTENCE_CHECK

    def make_cache(self, redis: redis.Redis, **options: Any) -> CacheCow:
        cache = super().make_cache(redis, **options)
        source = script_source("commit").replace(TOKEN_CHECK, self.check)
        assert source != script_source("commit")
        cache._scripts["commit"] = redis.register_script(source)
        return cache


@pytest.fixture
def existence_check(redis_client: redis.Redis) -> BrokenCommit:
    suite = BrokenCommit()
    suite.redis = redis_client
    return suite


@pytest.fixture
def no_check(redis_client: redis.Redis) -> BrokenCommit:
    suite = BrokenCommit()
    suite.check = NO_CHECK
    suite.redis = redis_client
    return suite


def test_aba_scenario_catches_an_existence_check(existence_check: BrokenCommit) -> None:
    s = existence_check
    out = s.scenario_aba(s.cache(), s.cache(), s.cache())
    assert out.cached_after["A commits"] == "v1"  # A's stale value got in under B's lease
    assert out.final == "v1"  # and stays: B's commit then finds no flag
    assert out.stale_commits == 0


def test_expired_lease_scenario_catches_an_existence_check(existence_check: BrokenCommit) -> None:
    s = existence_check
    out = s.scenario_lease_expires(s.cache(flag_ttl=0.2), s.cache())
    assert out.cached_after["A commits"] == "v1"
    assert out.final == "v1"


def test_invalidate_scenario_catches_a_missing_check(no_check: BrokenCommit) -> None:
    s = no_check
    out = s.scenario_invalidate_before_commit(s.cache(), s.cache())
    assert out.cached_after["A commits"] == "v1"
    assert out.final == "v1"
