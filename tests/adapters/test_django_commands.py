"""The management commands for operators (``cachecow_keys``, ``cachecow_show``,
``cachecow_stats``, ``cachecow_flush``, ``cachecow_audit``) on PostgreSQL and real Redis, with
the default cache and ``app_label.ModelName`` labels."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.db import connections

from cachecow.adapters.django import DjangoCache, set_default_cache
from cachecow.adapters.django._triggers import close_raw_connections
from tests.adapters import without_ttls
from tests.adapters.djapp.models import Person

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.parametrize("alias", ["pg"], indirect=True),
]

LABEL = "tests.adapters.djapp.models.Person"
COMMANDS = ["cachecow_keys", "cachecow_show", "cachecow_stats", "cachecow_flush", "cachecow_audit"]


def write_outside(alias: str, sql: str) -> None:
    """A write on a connection Django knows nothing of (another service, psql)."""
    connection = connections[alias]
    other = connection.get_new_connection(connection.get_connection_params())
    try:
        other.cursor().execute(sql)
        other.commit()
    finally:
        other.close()


@pytest.fixture
def cache(alias: str, redis_client: redis.Redis) -> Iterator[DjangoCache]:
    """The default cache, with 10 people cached by id and one by email; nothing relays (a
    write made outside Django stays in the outbox)."""
    write_outside(alias, "DELETE FROM cachecow_outbox")
    cache = DjangoCache(redis_client, using=alias, flag_ttl=0.3)
    set_default_cache(cache)
    people = [Person(email=f"p{i}@x.io", name=f"person {i}") for i in range(10)]
    Person.objects.using(alias).bulk_create(people)
    cache.drain(alias)
    for person in Person.objects.using(alias).all():
        cache.get(Person, "id", person.pk)
    cache.get(Person, "email", "p0@x.io")
    yield cache
    set_default_cache(None)
    cache.close_relays()
    close_raw_connections()


def command(name: str, *args: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_every_command_has_help(alias: str) -> None:
    for name in COMMANDS:
        text = load_command_class("cachecow.adapters.django", name).create_parser("manage.py", name)
        assert "app_label.ModelName" in text.format_help()


def test_keys_and_show(cache: DjangoCache, alias: str) -> None:
    person = Person.objects.using(alias).get(email="p0@x.io")
    value, flag = cache.get_keys(Person, "id", person.pk)
    out, _ = command("cachecow_keys", "djapp.Person", "id", str(person.pk))
    lines = out.splitlines()
    assert lines[0] == f"lookup  {LABEL} id={person.pk} (int)"
    assert lines[1].startswith(f"value   {value}  present, ")
    assert lines[2] == f"lease   {flag}  absent"
    # "5" is read as the integer key's 5 by the field, as a get reads it.
    typed = command("cachecow_keys", "djapp.Person", "id", str(person.pk), "--type", "str")[0]
    assert without_ttls(typed) == without_ttls(out)
    out, _ = command("cachecow_show", "djapp.Person", "email", "p0@x.io")
    assert out.splitlines()[2:] == [
        f"  id: {person.pk}",
        "  email: 'p0@x.io'",
        "  name: 'person 0'",
        "  org_id: None",
    ]
    out, _ = command("cachecow_show", "djapp.Person", "email", "nobody@x.io")
    assert out.splitlines()[1] == "not cached"
    with pytest.raises(CommandError, match=r"no model 'djapp\.Nobody'"):
        command("cachecow_show", "djapp.Nobody", "id", "1")
    with pytest.raises(CommandError, match="'name' is not a unique lookup"):
        command("cachecow_show", "djapp.Person", "name", "x")


def test_stats_and_flush(cache: DjangoCache, alias: str, redis_client: redis.Redis) -> None:
    out, _ = command("cachecow_stats", "djapp.Person")
    lines = out.splitlines()
    assert lines[0] == f"{LABEL}: 11 keys"
    assert [line.split()[:5] for line in lines[2:4]] + [lines[4].split()[:4]] == [
        [LABEL, "email", "1", "0", "0"],
        [LABEL, "id", "10", "0", "0"],
        ["total", "11", "0", "0"],
    ]
    out, _ = command("cachecow_stats")
    assert out.splitlines()[0] == "every model under 'cachecow:': 11 keys"
    out, _ = command("cachecow_flush", "djapp.Person", "--no-settle")
    assert out == f"deleted 11 entries of {LABEL}\n"
    cache.get(Person, "email", "p1@x.io")
    out, err = command("cachecow_flush", "djapp.Person")
    assert out == f"deleted 1 entries of {LABEL}\n"
    assert "a wait of 0.3 s" in err
    assert redis_client.keys("*") == []


def test_audit_reports_zero_then_exactly_the_stale_entries(
    cache: DjangoCache, alias: str, redis_client: redis.Redis
) -> None:
    out, err = command("cachecow_audit", "djapp.Person", "--sample", "100")
    assert out.splitlines()[:4] == [
        f"audit of {LABEL}: 11 sampled of 11 cached entries",
        "checked      11",
        "fresh        11",
        "stale        0",
    ]
    assert f"audited 11/11 entries of {LABEL}, 0 suspect" in err
    # K = 2 entries rewritten with an older version of their row.
    ids = sorted(Person.objects.using(alias).values_list("pk", flat=True))[3:5]
    for pk in ids:
        old = cache.get(Person, "id", pk)
        old.name = "before the migration"
        redis_client.set(cache.get_keys(Person, "id", pk)[0], cache.serialize(old), keepttl=True)
    out = io.StringIO()
    with pytest.raises(CommandError, match=f"2 stale entries of {LABEL}") as failed:
        call_command(
            "cachecow_audit", "djapp.Person", "--grace", "0", stdout=out, stderr=io.StringIO()
        )
    assert failed.value.returncode == 1
    assert out.getvalue().splitlines()[3] == "stale        2"
    assert sorted(out.getvalue().splitlines()[9:]) == sorted(
        f"stale: {cache.get_keys(Person, 'id', pk)[0]}  {LABEL} id={pk} (int)" for pk in ids
    )


def test_audit_sees_a_write_outside_django_until_the_relay_delivers_it(
    cache: DjangoCache, alias: str
) -> None:
    write_outside(alias, "UPDATE djapp_person SET name = 'renamed' WHERE email = 'p0@x.io'")
    with pytest.raises(CommandError, match="2 stale entries"):  # by id and by email
        command("cachecow_audit", "djapp.Person", "--grace", "0")
    assert command("cachecow_relay", "--once", "--database", alias)[0] == "delivered 1 rows\n"
    out, _ = command("cachecow_audit", "djapp.Person")
    assert out.splitlines()[1:4] == ["checked      9", "fresh        9", "stale        0"]
