"""The SQLAlchemy example exits 0, shows its claims and leaves nothing behind.

Run (a) uses fakeredis because that is the example's embedded default: with no REDIS_URL it
needs no service at all. Run (b) uses the plugin's private Redis, run (c) a real PostgreSQL.
"""

from __future__ import annotations

import re

import pytest
import redis

from cachecow.testing.plugin import in_ci
from tests.support.examples import ROOT, run_script

EXAMPLE = ROOT / "examples" / "sqlalchemy_app.py"
POSTGRES_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"


def run_example(**env_vars: str) -> str:
    return run_script(EXAMPLE, without=("REDIS_URL", "DATABASE_URL"), **env_vars)


def assert_key_lines(out: str) -> None:
    assert "EXAMPLE FAILED" not in out
    for line in [
        # 1: a miss runs one SELECT, a hit none
        "ok: the miss ran 1 SELECT and cached the row",
        "ok: the hit ran 0 SELECTs",
        "ok: the datetime round-trips exactly, microseconds included",
        # 2: unique and composite lookups, in any field order
        "ok: the email lookup finds Grace",
        "ok: ('org_id', 'user_id'), (7, 1) is a hit",
        # 3: a non-unique lookup is refused, naming the valid ones
        "InvalidLookup: User: 'name' is not a unique lookup; valid lookups are 'id', 'email'",
        # 4: a watched commit invalidates the old and the new email
        "session: user.email = 'ada@lovelace.org'; commit -> 3 lookups invalidated",
        "ok: the old email: NotFound",
        "ok: the new email finds user 1 (its tombstone is gone)",
        # 5: a rollback invalidates nothing
        "ok: the cache was not touched",
        # 6: a bulk update invalidates every affected row
        "ok: 50 misses cost one SELECT ... IN",
        "update(User).where(email LIKE 'm1%'); commit -> 100 lookups invalidated",
        "ok: every member has its new name",
        # 7: a cached object joins a session without a query
        "ok: attached and updated with 0 SELECTs",
        "ok: the next get reads the new name",
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
    assert counters["invalidations"] >= 100


def tables_of(out: str) -> str:
    match = re.search(r"\(tables (cachecow_example_[0-9a-f]+)_\*, dropped at the end\)", out)
    assert match, f"no table prefix in the example's output:\n{out}"
    return match.group(1)


def test_example_with_no_services() -> None:
    out = run_example()
    assert out.startswith("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    assert "Database: sqlite:///" in out
    assert_key_lines(out)


def test_example_with_real_redis_leaves_no_keys(redis_url: str) -> None:
    out = run_example(REDIS_URL=redis_url)
    match = re.match(
        rf"Redis: {re.escape(redis_url)} \(keys under (cachecow-sqla:[0-9a-f]+:),", out
    )
    assert match, f"unexpected first line:\n{out}"
    assert_key_lines(out)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        assert list(client.scan_iter(match=f"{match.group(1)}*")) == []
    finally:
        client.close()


def test_example_with_postgresql_leaves_no_tables() -> None:
    import psycopg

    plain_url = POSTGRES_URL.replace("+psycopg", "")
    try:
        psycopg.connect(plain_url, connect_timeout=3).close()
        unreachable = ""
    except psycopg.Error as exc:
        unreachable = f"PostgreSQL unreachable at {plain_url}: {exc}"
    if unreachable and in_ci():
        pytest.fail(f"{unreachable} (CI=true: a missing database is a failure)", pytrace=False)
    if unreachable:
        pytest.skip(unreachable)
    out = run_example(DATABASE_URL=POSTGRES_URL)
    assert "Database: postgresql+psycopg://root@127.0.0.1:5432/test (tables" in out
    assert_key_lines(out)
    with psycopg.connect(plain_url, connect_timeout=3) as conn:
        left = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE %s",
            (tables_of(out) + "%",),
        ).fetchall()
    assert left == [], f"the example left tables behind: {left}"
