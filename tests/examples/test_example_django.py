"""The Django example exits 0, shows its claims and leaves nothing behind.

The example runs as a subprocess, as a user would run it: ``python examples/django_app/run.py``
from the repository root. It configures Django itself (examples/django_app/settings.py), so the
child's environment has no DJANGO_SETTINGS_MODULE (pytest-django sets it to the adapter tests'
settings in this process) and no REDIS_URL. This module needs no database: it only starts
subprocesses, so none of its tests has the django_db marker.

Run (a) uses fakeredis because that is the example's embedded default: with no REDIS_URL it
needs no service at all. Run (b) uses the plugin's private Redis and checks that no key is left
under the example's random prefix.
"""

from __future__ import annotations

import re
from pathlib import Path

import redis

from tests.support.examples import ROOT, run_script

EXAMPLE = ROOT / "examples" / "django_app" / "run.py"


def run_example(**env_vars: str) -> str:
    return run_script(EXAMPLE, without=("DJANGO_SETTINGS_MODULE", "REDIS_URL"), **env_vars)


def assert_key_lines(out: str) -> None:
    assert "EXAMPLE FAILED" not in out
    for line in [
        # 1: a miss runs one query, a hit none; the hit behaves as a loaded object
        "ok: the miss ran 1 query and cached the row",
        "ok: the hit ran 0 queries",
        "ok: it behaves as loaded: _state.adding is False, _state.db is 'default'",
        # 2: a non-unique lookup goes to the database and caches nothing
        "Customer.cached.get(name='Grace') -> Grace <grace@example.com> (1 query)",
        "ok: and cached nothing: no new key in Redis, no counter moved",
        # 3: a save in an atomic block invalidates on commit, not before
        "ok: the cache still holds the old entry",
        "ok: nothing is invalidated before the commit",
        "commit -> 3 lookups invalidated",
        "ok: the old email raises Customer.DoesNotExist",
        "ok: the new email finds Ada (its tombstone is gone)",
        # 4: a rollback invalidates nothing
        "ok: the rollback dropped the queued invalidations",
        "ok: Grace is still a hit",
        # 5: the cached queryset's update() invalidates every affected row
        "Customer.cached.filter(email__startswith='m').update(name='VIP') -> 3 rows",
        "ok: the id and email lookups of all 3 rows were invalidated",
        "ok: every member reads its new name",
        # 6: a cascading delete invalidates the orders too
        "-> {'shop.Order': 2, 'shop.Customer': 1}",
        "ok: Order.cached.get(number=...) raises Order.DoesNotExist for both orders",
        "All claims held.",
    ]:
        assert line in out, f"missing {line!r} in the example's output:\n{out}"
    counters = {
        parts[0]: int(parts[1])
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 2 and parts[1].isdigit()
    }
    assert counters["hits"] >= 3
    assert counters["stale_commits"] == 0
    assert counters["redis_errors"] == 0
    assert counters["invalidations"] >= 15


def database_dir(out: str) -> Path:
    match = re.search(r"^Database: SQLite in (\S+) \(deleted at the end\)$", out, re.MULTILINE)
    assert match, f"no database line in the example's output:\n{out}"
    return Path(match.group(1)).parent


def test_example_with_no_services() -> None:
    out = run_example()
    assert out.startswith("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    assert_key_lines(out)
    assert not database_dir(out).exists(), "the example left its SQLite directory behind"


def test_example_with_real_redis_leaves_no_keys(redis_url: str) -> None:
    out = run_example(REDIS_URL=redis_url)
    match = re.match(
        rf"Redis: {re.escape(redis_url)} \(keys under (cachecow-django:[0-9a-f]+:),", out
    )
    assert match, f"unexpected first line:\n{out}"
    assert_key_lines(out)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        assert list(client.scan_iter(match=f"{match.group(1)}*")) == []
    finally:
        client.close()
