"""The command line for operators (``cachecow keys|show|stats|flush|audit``) against a real
Redis and PostgreSQL: each command's output, and the audit's stale count, 0 on a consistent
cache and exactly the number of entries corrupted on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import cachecow
from cachecow.adapters.sqlalchemy import SQLAlchemyCache
from cachecow.cli import main
from tests.adapters import cli_app, without_ttls
from tests.adapters.sa_env import Database, Membership, User, open_database

ROOT = Path(__file__).resolve().parents[2]
USER = "tests.adapters.sa_env.User"
APP = ["--cache", "tests.adapters.cli_app:cache"]


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from open_database("postgresql", tmp_path_factory.mktemp("postgresql"))


@pytest.fixture
def cache(pg: Database, redis_client: redis.Redis, redis_server: Any) -> Iterator[SQLAlchemyCache]:
    """The application's cache (``tests.adapters.cli_app:cache``) with 20 users cached by id,
    one by email, and a tombstone. Nothing watches the database: a write made now is one no
    invalidation saw."""
    pg.clear()
    pg.Session = sessionmaker(pg.engine)
    with pg.Session() as session:
        session.add_all(User(id=i, email=f"u{i}@x.io", name=f"user {i}") for i in range(1, 21))
        session.add(Membership(id=1, org_id=7, user_id=3, role="admin"))
        session.commit()
    with pg.engine.begin() as conn:  # the inserts' invalidations: delivered, and nothing cached
        conn.exec_driver_sql("DELETE FROM cachecow_outbox")
    client = cachecow.connect(redis_server.url)
    cache = cli_app.cache = SQLAlchemyCache(client, pg.Session, flag_ttl=0.3)
    cache.get_many(User, "id", range(1, 21))
    cache.get(User, "email", "u3@x.io")
    with pytest.raises(cachecow.NotFound):
        cache.get(User, "id", 99)
    yield cache
    cli_app.cache = None
    client.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def value_key(cache: SQLAlchemyCache, model: Any, field: Any, value: Any) -> str:
    return cache.get_keys(model, field, value)[0]


def console_script() -> str:
    script = Path(sys.executable).with_name("cachecow")
    if not script.exists():
        pytest.skip("no cachecow console script next to this interpreter (pip install -e .)")
    return str(script)


def test_every_command_has_help_in_the_console_script() -> None:
    script = console_script()
    top = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    for command in ("keys", "show", "stats", "counters", "flush", "audit", "relay"):
        assert command in top.stdout
        shown = subprocess.run(
            [script, command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: cachecow {command}")


def test_keys_shows_the_value_and_lease_keys_their_ttls_and_presence(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_server: Any
) -> None:
    code, out, _ = run(capsys, "keys", USER, "id", "1", *APP)
    key = value_key(cache, User, "id", 1)
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == f"lookup  {USER} id=1 (int)"
    assert lines[1].startswith(f"value   {key}  present, ")
    assert " bytes, ttl " in lines[1]
    assert lines[2] == f"lease   {key}:lease  absent"
    # The application's cache converts "1" to the integer key's 1, like get() does ...
    typed = run(capsys, "keys", USER, "id", "1", "--type", "str", *APP)[1]
    assert without_ttls(typed) == without_ttls(out)
    # ... a bare Redis cannot: "1" and 1 are two lookups, two keys.
    code, bare, _ = run(capsys, "keys", USER, "id", "1", "--redis", redis_server.url)
    assert code == 0
    assert without_ttls(bare.splitlines()[1]) == without_ttls(lines[1])
    code, text, _ = run(capsys, "keys", USER, "id", '"1"', "--redis", redis_server.url)
    assert text.splitlines()[0] == f"lookup  {USER} id='1' (str)"
    assert text.splitlines()[1].endswith("  absent")
    code, missing, _ = run(capsys, "keys", USER, "id", "99", *APP)
    assert "present, tombstone, ttl " in missing.splitlines()[1]


def test_keys_shows_a_lease_in_flight(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_client: redis.Redis
) -> None:
    value, flag = cache.get_keys(User, "id", 50)
    redis_client.set(flag, b"a-token", px=5000)
    out = run(capsys, "keys", "tests.adapters.sa_env:User", "id", "50", *APP)[1]
    assert out.splitlines()[1] == f"value   {value}  absent"
    assert out.splitlines()[2].startswith(f"lease   {flag}  present (a read in flight), ttl ")


def test_show_decodes_the_object_a_tombstone_or_nothing(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_server: Any
) -> None:
    code, out, _ = run(capsys, "show", USER, "email", "u3@x.io", *APP)
    assert code == 0
    assert out.splitlines()[0] == (
        f"{USER} email='u3@x.io' (str): {value_key(cache, User, 'email', 'u3@x.io')}"
    )
    assert out.splitlines()[1].startswith("cached object, ")
    assert out.splitlines()[2:] == [
        "  id: 3",
        "  email: 'u3@x.io'",
        "  name: 'user 3'",
        "  org_id: None",
    ]
    code, out, _ = run(capsys, "show", USER, "id", "99", *APP)
    assert (code, out.splitlines()[1]) == (0, "tombstone: no such row, cached (ttl 30.0 s)")
    code, out, _ = run(capsys, "show", USER, "id", "98", *APP)
    assert (code, out.splitlines()[1]) == (1, "not cached")
    # A composite lookup, in any order of its fields.
    cache.get(Membership, ("org_id", "user_id"), (7, 3))
    code, out, _ = run(
        capsys, "show", "tests.adapters.sa_env.Membership", "user_id,org_id", "[3, 7]", *APP
    )
    assert code == 0
    assert "(org_id, user_id)=(7, 3)" in out.splitlines()[0]
    assert "  role: 'admin'" in out.splitlines()
    # Without the application: the serializer's own decoding of the row.
    code, out, _ = run(capsys, "show", USER, "id", "2", "--redis", redis_server.url)
    assert code == 0
    assert out.splitlines()[2].startswith("  value: [")
    assert "'u2@x.io', 'user 2'" in out


def test_stats_counts_values_tombstones_and_leases_by_field(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_client: redis.Redis
) -> None:
    redis_client.set(cache.get_keys(User, "id", 50)[1], b"a-token", px=5000)
    code, out, _ = run(capsys, "stats", USER, *APP)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{USER}: 23 keys"
    assert lines[1].split() == [
        "model",
        "field",
        "values",
        "tombstones",
        "leases",
        "value",
        "bytes",
    ]
    email, by_id, total = (line.split() for line in lines[2:5])
    assert email[:5] == [USER, "email", "1", "0", "0"]
    assert by_id[:5] == [USER, "id", "20", "1", "1"]
    assert total[:4] == ["total", "21", "1", "1"]
    assert int(total[4]) == int(email[5]) + int(by_id[5]) > 0
    assert lines[5].startswith("memory: about ")
    assert "MEMORY USAGE of 23 of 23 keys" in lines[5]
    # Every model under the prefix, from a bare Redis.
    cache.get(Membership, "id", 1)
    url = f"redis://127.0.0.1:{redis_client.connection_pool.connection_kwargs['port']}/0"
    code, out, _ = run(capsys, "stats", "--redis", url, "--prefix", "cachecow:")
    assert out.splitlines()[0] == "every model under 'cachecow:': 24 keys"
    assert [line.split()[:3] for line in out.splitlines()[2:5]] == [
        ["tests.adapters.sa_env.Membership", "id", "1"],
        [USER, "email", "1"],
        [USER, "id", "20"],
    ]


def test_flush_deletes_every_entry_of_the_model(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_client: redis.Redis
) -> None:
    cache.get(Membership, "id", 1)
    code, out, _ = run(capsys, "flush", USER, "--no-settle", *APP)
    assert (code, out) == (0, f"deleted 22 entries of {USER}\n")
    assert [k.decode() for k in redis_client.keys("*")] == [value_key(cache, Membership, "id", 1)]
    cache.get(User, "id", 1)
    code, out, err = run(capsys, "flush", USER, *APP)  # settles: flag_ttl is 0.3 s here
    assert (code, out) == (0, f"deleted 1 entries of {USER}\n")
    assert "a wait of 0.3 s for the leases in flight" in err


def test_flush_of_a_label_from_a_bare_redis(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_server: Any
) -> None:
    argv = ["flush", USER, "--no-settle", "--redis", redis_server.url]
    assert run(capsys, *argv)[:2] == (0, f"deleted 22 entries of {USER}\n")
    assert cache.peek(User, "id", 1) is None


def test_audit_of_a_consistent_cache_reports_no_stale_entry(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "audit", USER, "--sample", "100", *APP)
    assert code == 0
    assert out.splitlines() == [
        f"audit of {USER}: 22 sampled of 22 cached entries",
        "checked      21",
        "fresh        21",
        "stale        0",
        "stale rate   0.00%",
        "vanished     0  (invalidated or expired while audited)",
        "tombstones   1  (not checked: a tombstone names no row)",
        "undecodable  0",
        "misplaced    0  (under a key none of its lookups reaches)",
    ]
    assert f"audited 22/22 entries of {USER}, 0 suspect" in err


def test_audit_samples_at_most_n_entries(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "audit", USER, "--sample", "5", "--seed", "1", *APP)
    assert code == 0
    assert out.splitlines()[0] == f"audit of {USER}: 5 sampled of 22 cached entries"


def test_audit_counts_exactly_the_entries_corrupted_in_redis(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_client: redis.Redis
) -> None:
    """K = 3 entries rewritten with an older version of their row: 3 stale, listed, exit 1.
    Another row's bytes under a key, and garbage, are not stale (a get never serves them: it
    verifies and decodes first) but misplaced and undecodable."""
    stale = [value_key(cache, User, "id", i) for i in (2, 5, 11)]
    for i, key in zip((2, 5, 11), stale, strict=True):
        old = cache.get(User, "id", i)
        old.name = "before the migration"
        redis_client.set(key, cache.serialize(old), keepttl=True)
    other = cache.serialize(cache.get(User, "id", 8))
    redis_client.set(value_key(cache, User, "id", 7), other, keepttl=True)
    redis_client.set(value_key(cache, User, "id", 9), b"\xff not a row", keepttl=True)
    code, out, err = run(capsys, "audit", USER, "--sample", "100", "--grace", "0.1", *APP)
    assert code == 1
    lines = out.splitlines()
    assert lines[1:5] == [
        "checked      19",
        "fresh        16",
        "stale        3",
        "stale rate   15.79%",
    ]
    assert lines[7] == "undecodable  1"
    assert lines[8].startswith("misplaced    1")
    assert sorted(lines[9:]) == sorted(
        f"stale: {key}  {USER} id={i} (int)" for i, key in zip((2, 5, 11), stale, strict=True)
    )
    assert "re-checking 3 suspect entries in 0.1 s" in err


def test_audit_counts_rows_written_behind_the_caches_back_until_the_relay_delivers(
    cache: SQLAlchemyCache, pg: Database, capsys: pytest.CaptureFixture[str], redis_server: Any
) -> None:
    """2 rows updated by another service, whose invalidation waits in the outbox: K = 3 stale
    entries (row 3 is cached by id and by email, row 4 by id); once ``cachecow relay --once``
    has delivered it, 0."""
    with pg.outside.begin() as conn:
        conn.execute(sa.update(User).where(User.id.in_([3, 4])).values(name="renamed"))
    code, out, _ = run(capsys, "audit", USER, "--sample", "100", "--grace", "0", *APP)
    assert code == 1
    assert out.splitlines()[3] == "stale        3"
    assert {line.split("  ")[-1] for line in out.splitlines()[9:]} == {
        f"{USER} id=3 (int)",
        f"{USER} id=4 (int)",
        f"{USER} email='u3@x.io' (str)",
    }
    url = pg.engine.url.update_query_dict({"options": f"-csearch_path={pg.schema}"})
    database = url.render_as_string(hide_password=False)
    relay = ["relay", "--once", "--database", database, "--redis", redis_server.url]
    assert run(capsys, *relay)[:2] == (0, "delivered 1 rows\n")  # one statement, one row
    code, out, _ = run(capsys, "audit", USER, "--sample", "100", *APP)
    assert (code, out.splitlines()[3]) == (0, "stale        0")


def test_audit_counts_an_entry_invalidated_while_audited_as_vanished(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write and its invalidation between the audit's read of the entry and its fetch: the
    entry differs from the row, but it is gone when read again, never stale."""
    fetch = cache.fetch

    def racing_fetch(cls: Any, id_field: Any, id_val: Any) -> Any:
        if id_val == 6:
            with cache.session_factory() as session:
                session.execute(sa.update(User).where(User.id == 6).values(name="new"))
                session.commit()
            cache.invalidate(User, "id", 6)
        return fetch(cls, id_field, id_val)

    monkeypatch.setattr(cache, "fetch", racing_fetch)
    code, out, _ = run(capsys, "audit", USER, "--sample", "100", *APP)
    assert code == 0
    assert out.splitlines()[3:6] == [
        "stale        0",
        "stale rate   0.00%",
        "vanished     1  (invalidated or expired while audited)",
    ]


def test_audit_from_the_console_script_builds_the_application_cache(
    cache: SQLAlchemyCache, pg: Database, redis_server: Any
) -> None:
    env = dict(os.environ, CLI_APP_REDIS=redis_server.url, CLI_APP_SCHEMA=pg.schema or "")
    env["CLI_APP_DATABASE"] = pg.engine.url.render_as_string(hide_password=False)
    command = [console_script(), "audit", USER, "--sample", "50"]
    command += ["--cache", "tests.adapters.cli_app:make"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:4] == ["checked      21", "fresh        21", "stale        0"]


def test_usage_errors_exit_2_with_a_message(
    cache: SQLAlchemyCache, capsys: pytest.CaptureFixture[str], redis_server: Any
) -> None:
    code, _, err = run(capsys, "audit", USER, "--redis", redis_server.url)
    assert (code, err) == (
        2,
        "cachecow audit: audit reads the database: name the application's cache (--cache)\n",
    )
    code, _, err = run(capsys, "keys", USER, "id", "1", "--cache", "tests.adapters.cli_app")
    assert code == 2
    assert "--cache takes module:attribute" in err
    code, _, err = run(capsys, "keys", USER, "id", "1", "--cache", "tests.adapters.nope:cache")
    assert code == 2
    assert "No module named 'tests.adapters.nope'" in err
    code, _, err = run(capsys, "keys", "tests.adapters.sa_env.Nope", "id", "1", *APP)
    assert code == 2
    assert "no model 'tests.adapters.sa_env.Nope'" in err
    code, _, err = run(capsys, "keys", USER, "nickname", "1", *APP)
    assert code == 2
    assert "'nickname' is not a unique lookup" in err
    code, _, err = run(capsys, "keys", USER, "id", "x", "--type", "int", *APP)
    assert (code, err) == (2, "cachecow keys: 'x' is not a int value\n")
    code, _, err = run(capsys, "keys", USER, "id", "1", *APP, "--redis", redis_server.url)
    assert code == 2
    assert "--redis and --prefix are the cache's own with --cache" in err
