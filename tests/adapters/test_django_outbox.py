"""Django's write paths that no per-object signal sees, each invalidating through the triggers,
on SQLite and PostgreSQL; the manager behaving as Django's where the cache must stay out."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.core import checks
from django.core.management import call_command
from django.db import NotSupportedError, connections, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

import cachecow
from cachecow.adapters.django import DjangoCache, set_default_cache
from cachecow.adapters.django._triggers import close_raw_connections
from cachecow.testing import free_port
from tests.adapters.djapp.models import (
    Badge,
    Gadget,
    Org,
    Part,
    Person,
    Place,
    Profile,
    ProxyPerson,
    Restaurant,
    Stamp,
    Ticket,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


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
    # An empty outbox: Django's flush between tests leaves it alone, and on PostgreSQL the
    # rows a commit delivered itself wait for a drain or relay of their cache to be deleted.
    write_outside(alias, "DELETE FROM cachecow_outbox")
    cache = DjangoCache(redis_client, using=alias)
    set_default_cache(cache)
    yield cache
    set_default_cache(None)
    cache.close_relays()
    close_raw_connections()


def test_raw_sql_through_djangos_connection_is_drained_by_its_commit(
    cache: DjangoCache, alias: str
) -> None:
    t = Ticket.objects.using(alias).create(number=1)
    assert cache.get(Ticket, "number", 1).pk == t.pk
    with connections[alias].cursor() as cursor:
        cursor.execute(f"UPDATE djapp_ticket SET number = 2 WHERE id = {t.pk}")
    with pytest.raises(Ticket.DoesNotExist):
        cache.get(Ticket, "number", 1)
    assert cache.get(Ticket, "id", t.pk).number == 2


def test_a_write_outside_django_is_delivered_by_the_relay(cache: DjangoCache, alias: str) -> None:
    t = Ticket.objects.using(alias).create(number=1)
    assert cache.get(Ticket, "id", t.pk).number == 1
    write_outside(alias, f"UPDATE djapp_ticket SET number = 5 WHERE id = {t.pk}")
    assert cache.get(Ticket, "id", t.pk).number == 1  # not delivered yet
    assert cache.drain(alias) == 1  # what the relay does, forced here
    assert cache.get(Ticket, "id", t.pk).number == 5


def test_set_null_by_the_collector_invalidates_the_unique_foreign_key(
    cache: DjangoCache, alias: str
) -> None:
    ada = Person.objects.using(alias).create(email="ada@x.io")
    profile = Profile.objects.using(alias).create(person=ada, nick="ada")
    assert cache.get(Profile, "person_id", ada.pk).nick == "ada"
    assert cache.get(Profile, "nick", "ada").person_id == ada.pk
    pk = ada.pk
    ada.delete()  # the collector sets Profile.person_id to NULL with an UPDATE, no signal
    with pytest.raises(Profile.DoesNotExist):
        cache.get(Profile, "person_id", pk)
    assert cache.get(Profile, "nick", "ada").person_id is None
    assert cache.get(Profile, "id", profile.pk).person_id is None


def test_f_expressions_on_a_unique_field(cache: DjangoCache, alias: str) -> None:
    t = Ticket.objects.using(alias).create(number=10)
    assert cache.get(Ticket, "number", 10).pk == t.pk
    t.number = F("number") + 1
    t.save()  # the instance never knows its new number: the trigger does
    with pytest.raises(Ticket.DoesNotExist):
        cache.get(Ticket, "number", 10)
    assert cache.get(Ticket, "number", 11).pk == t.pk
    Ticket.objects.using(alias).filter(pk=t.pk).update(number=F("number") + 100)
    with pytest.raises(Ticket.DoesNotExist):
        cache.get(Ticket, "number", 11)
    assert cache.get(Ticket, "id", t.pk).number == 111


def test_bulk_create_with_update_conflicts(cache: DjangoCache, alias: str) -> None:
    t = Ticket.objects.using(alias).create(number=1, holder="ada")
    assert cache.get(Ticket, "number", 1).holder == "ada"
    # MySQL and MariaDB take no unique_fields: ON DUPLICATE KEY UPDATE covers every key.
    unique = {} if connections[alias].vendor == "mysql" else {"unique_fields": ["number"]}
    Ticket.objects.using(alias).bulk_create(
        [Ticket(number=1, holder="grace")],
        update_conflicts=True,
        update_fields=["holder"],
        **unique,
    )
    assert cache.get(Ticket, "number", 1).holder == "grace"
    assert cache.get(Ticket, "id", t.pk).holder == "grace"


def test_a_large_delete_is_fast_again(cache: DjangoCache, alias: str) -> None:
    Ticket.objects.using(alias).bulk_create([Ticket(number=i) for i in range(1000)])
    first = Ticket.objects.using(alias).order_by("pk").first()
    assert first is not None
    assert cache.get(Ticket, "number", 0).pk == first.pk
    with CaptureQueriesContext(connections[alias]) as queries:
        Ticket.objects.using(alias).all().delete()
    # Django's fast delete: one DELETE (the event-based adapter's signals made it 1,013).
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    assert [s for s in statements if s not in ("BEGIN", "COMMIT")] == ["DELETE"]
    with pytest.raises(Ticket.DoesNotExist):
        cache.get(Ticket, "number", 0)


def test_a_save_runs_no_extra_query(cache: DjangoCache, alias: str) -> None:
    t = Ticket.objects.using(alias).create(number=1)
    with CaptureQueriesContext(connections[alias]) as queries:
        t.holder = "x"
        t.save()
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]


@pytest.mark.parametrize("alias", ["pg"], indirect=True)
def test_a_save_delivers_the_rows_announced_to_it_with_no_drain(
    cache: DjangoCache, alias: str
) -> None:
    """PostgreSQL: the connection's own writes are announced to it, so the commit delivers
    them with no round trip to the database; in atomic() and in autocommit."""
    t = Ticket.objects.using(alias).create(number=1)
    drainer = cache._drainer(alias)
    opened: list[int] = []
    connect = drainer._connect
    drainer._connect = lambda: opened.append(1) or connect()
    for number in (2, 3):
        assert cache.get(Ticket, "id", t.pk).number == number - 1
        with transaction.atomic(using=alias):
            t.number = number
            t.save()
        assert cache.get(Ticket, "id", t.pk).number == number
    t.number = 4
    t.save()  # autocommit: the statement's own commit
    assert cache.get(Ticket, "id", t.pk).number == 4
    assert opened == []
    assert drainer.stats.announced_rows >= 3


def test_proxy_and_inherited_writes_invalidate_the_concrete_tables(
    cache: DjangoCache, alias: str
) -> None:
    ada = Person.objects.using(alias).create(email="ada@x.io")
    assert cache.get(Person, "email", "ada@x.io").pk == ada.pk
    proxy = ProxyPerson.objects.using(alias).get(pk=ada.pk)
    proxy.email = "lovelace@x.io"
    proxy.save()
    with pytest.raises(Person.DoesNotExist):
        cache.get(Person, "email", "ada@x.io")
    place = Restaurant.objects.using(alias).create(name="Chez Ada", serves="tea")
    assert cache.get(Place, "name", "Chez Ada").pk == place.pk
    place.name = "Chez Grace"
    place.save()  # writes the parent's table
    with pytest.raises(Place.DoesNotExist):
        cache.get(Place, "name", "Chez Ada")
    assert cache.get(Place, "name", "Chez Grace").pk == place.pk


def test_the_manager_leaves_to_django_what_the_cache_must_not_serve(
    cache: DjangoCache, alias: str
) -> None:
    org = Org.objects.using(alias).create(name="o")
    ada = Person.objects.using(alias).create(email="ada@x.io", org=org)
    assert Person.cached.using(alias).get(pk=ada.pk).email == "ada@x.io"  # cached now
    connection = connections[alias]
    with transaction.atomic(using=alias), CaptureQueriesContext(connection) as queries:
        locked = Person.cached.using(alias).select_for_update().get(pk=ada.pk)
    assert locked.email == "ada@x.io"
    assert any("SELECT" in q["sql"] for q in queries.captured_queries)  # a locking read
    with pytest.raises(NotSupportedError):  # Django: get() with filters after union()
        Person.cached.using(alias).all().union(Person.cached.using(alias).all()).get(pk=ada.pk)
    with pytest.raises(TypeError):  # Django: no get() of a sliced queryset
        Person.cached.using(alias).all()[:1].get(pk=ada.pk)
    with pytest.raises(ValueError, match="Must be"):  # an instance of another model
        Person.cached.using(alias).get(org=ada)
    assert ProxyPerson.cached.using(alias).get(pk=ada.pk).email == "ada@x.io"
    shop = Restaurant.objects.using(alias).create(name="r")
    assert Restaurant.cached.using(alias).get(pk=shop.pk).name == "r"


def test_redis_down_during_a_save_fails_nothing(
    alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = cachecow.connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    cache = DjangoCache(down, using=alias, fail_open=True)
    set_default_cache(cache)
    try:
        t = Ticket.objects.using(alias).create(number=1)  # committed; its drain fails
        t.number = 2
        t.save()  # within retry_interval of the failure: left to the relay
        assert Ticket.objects.using(alias).get(pk=t.pk).number == 2
        stats = cache._drainer(alias).stats
        assert stats.failures == 1
        assert stats.skipped >= 1
        failures = [r for r in caplog.records if "outbox delivery failed" in r.getMessage()]
        assert len(failures) == 1
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM cachecow_outbox")
            assert cursor.fetchone()[0] >= 2  # waiting for the relay
    finally:
        set_default_cache(None)
        close_raw_connections()
        with connections[alias].cursor() as cursor:
            cursor.execute("DELETE FROM cachecow_outbox")


def test_check_warns_of_a_table_without_its_triggers(cache: DjangoCache, alias: str) -> None:
    drop = {
        "postgresql": "DROP TRIGGER cachecow_update ON djapp_ticket",
        "sqlite": "DROP TRIGGER cachecow_djapp_ticket_update",
        "mysql": "DROP TRIGGER cachecow_djapp_ticket_update",
    }[connections[alias].vendor]
    with connections[alias].cursor() as cursor:
        cursor.execute(drop)
    try:
        found = checks.run_checks(tags=[checks.Tags.database], databases=[alias])
        assert [(m.id, m.obj) for m in found if m.id == "cachecow.W001"] == [
            ("cachecow.W001", Ticket)
        ]
        with pytest.raises(cachecow.ConfigurationError, match="cachecow_triggers --install"):
            cache.get(Ticket, "number", 1)
    finally:
        out = io.StringIO()
        call_command("cachecow_triggers", "--install", "--database", alias, stdout=out)
    assert "djapp.Ticket" in out.getvalue()
    assert not [
        m
        for m in checks.run_checks(tags=[checks.Tags.database], databases=[alias])
        if m.id == "cachecow.W001"
    ]


def test_cachecow_triggers_prints_the_sql(alias: str) -> None:
    out = io.StringIO()
    call_command("cachecow_triggers", "--database", alias, stdout=out)
    sql = out.getvalue()
    assert "CREATE TABLE IF NOT EXISTS cachecow_outbox" in sql
    assert "djapp_ticket" in sql
    logging.getLogger(__name__).debug("%d characters", len(sql))


def test_the_migration_operation_installs_and_drops_the_triggers(alias: str) -> None:
    from django.db.migrations.state import ProjectState

    from cachecow.adapters.django import InstallTriggers
    from cachecow.adapters.django._triggers import triggers_installed, watched_table

    connection = connections[alias]
    state = ProjectState.from_apps(__import__("django.apps").apps.apps)
    operation = InstallTriggers("djapp.Ticket")
    table = watched_table(Ticket, ["id", "number"], "tests.adapters.djapp.models.Ticket")
    with connection.schema_editor(atomic=False) as editor:
        operation.database_backwards("djapp", editor, state, state)
    assert not triggers_installed(connection, table)
    with connection.schema_editor(atomic=False) as editor:
        operation.database_forwards("djapp", editor, state, state)
    assert triggers_installed(connection, table)
    assert operation.deconstruct() == (
        "cachecow.adapters.django.InstallTriggers",
        ["djapp.Ticket"],
        {},
    )


def test_cachecow_relay_once_delivers(cache: DjangoCache, alias: str) -> None:
    t = Ticket.objects.using(alias).create(number=1)
    assert cache.get(Ticket, "id", t.pk).number == 1
    write_outside(alias, f"UPDATE djapp_ticket SET number = 3 WHERE id = {t.pk}")
    out = io.StringIO()
    call_command("cachecow_relay", "--once", "--database", alias, stdout=out)
    assert out.getvalue().strip() == "delivered 1 rows"
    assert cache.get(Ticket, "id", t.pk).number == 3


def test_managers_of_abstract_bases_file_fields_uuid_keys_and_json_lookups(
    cache: DjangoCache, alias: str
) -> None:
    stamp = Stamp.objects.using(alias).create(code="s")
    assert cache.get(Stamp, "code", "s").pk == stamp.pk  # watched: it has its triggers
    badge = Badge.objects.using(alias).create(code="b", scan="scans/b.png")
    assert Badge.objects.using(alias).get(code="b").scan.name == "scans/b.png"  # a miss
    assert Badge.objects.using(alias).get(code="b").scan.name == "scans/b.png"  # a hit
    badge.code = "c"
    badge.save()
    with pytest.raises(Badge.DoesNotExist, match=r"^Badge matching query does not exist\.$"):
        Badge.objects.using(alias).get(code="b")
    gadget = Gadget.objects.using(alias).create(id=uuid.uuid4())
    part = Part.objects.using(alias).create(gadget=gadget, spec={"a": 1})
    assert Part.objects.using(alias).get(pk=part.pk).gadget_id == gadget.pk
    with CaptureQueriesContext(connections[alias]) as queries:
        assert Part.objects.using(alias).get(spec={"a": 1}).pk == part.pk
    assert len(queries.captured_queries) == 1  # a JSON lookup goes to the database


def test_a_save_under_set_autocommit_false_is_left_to_the_relay(
    cache: DjangoCache, alias: str
) -> None:
    t = Ticket.objects.using(alias).create(number=1)
    assert cache.get(Ticket, "id", t.pk).number == 1
    cache._drainer(alias).grace = 0.05  # PostgreSQL: the relays wait this long for its writer
    transaction.set_autocommit(False, using=alias)
    try:
        t.number = 2
        t.save()  # no commit hook exists here: nothing raises, nothing is drained early
        transaction.commit(using=alias)
    finally:
        transaction.set_autocommit(True, using=alias)
    time.sleep(0.1)
    assert cache.drain(alias) == 1
    assert cache.get(Ticket, "id", t.pk).number == 2


@pytest.mark.parametrize("alias", ["pg", "maria"], indirect=True)  # SQLite: no row locks
def test_a_second_writer_blocked_on_the_row_lock(cache: DjangoCache, alias: str) -> None:
    """Writer A changes the ticket's number 1 -> 2 in atomic and holds the row lock; writer B's
    save() (to 3) waits for it. After A commits, a reader caches number 2 while B has not
    committed. B's trigger sees 2 under the lock and invalidates it; B's instance says 1."""
    import threading
    import time

    t = Ticket.objects.using(alias).create(number=1)
    stale = Ticket.objects.using(alias).get(pk=t.pk)  # B's instance, loaded before A's write
    first_holds = threading.Event()
    first_may_commit = threading.Event()
    second_saved = threading.Event()
    second_may_commit = threading.Event()

    def first() -> None:
        with transaction.atomic(using=alias):
            Ticket.objects.using(alias).filter(pk=t.pk).update(number=2)
            first_holds.set()
            first_may_commit.wait(10)
        connections[alias].close()

    def second() -> None:
        with transaction.atomic(using=alias):
            stale.number = 3
            stale.save()  # waits for A's row lock
            second_saved.set()
            second_may_commit.wait(10)
        connections[alias].close()

    a = threading.Thread(target=first)
    a.start()
    assert first_holds.wait(10)
    b = threading.Thread(target=second)
    b.start()
    time.sleep(0.2)
    assert not second_saved.is_set()  # B waits for the lock
    first_may_commit.set()
    a.join(10)
    assert second_saved.wait(10)
    assert cache.get(Ticket, "number", 2).pk == t.pk  # cached between the two commits
    second_may_commit.set()
    b.join(10)
    with pytest.raises(Ticket.DoesNotExist):
        cache.get(Ticket, "number", 2)
    assert cache.get(Ticket, "number", 3).pk == t.pk


@pytest.mark.parametrize("alias", ["default"], indirect=True)
def test_no_relay_on_sqlite_in_memory(
    cache: DjangoCache, alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django's SQLite test databases live in memory, shared by the process's connections:
    a relay's connection there locks tables under the application's, and SQLite fails such
    a lock at once (the Django suite's finding C5). No one else can write that database, so
    the commits' drains deliver everything: the relay is refused, and never started."""
    monkeypatch.setattr(connections[alias], "is_in_memory_db", lambda: True)
    with pytest.raises(cachecow.ConfigurationError, match="in memory"):
        cache.relay(alias)
    relaying = DjangoCache(cache.redis, using=alias, relay=True)
    t = Ticket.objects.using(alias).create(number=1)
    assert relaying.get(Ticket, "id", t.pk).number == 1  # the first read starts no relay
    assert relaying._relays == {}


@pytest.mark.parametrize("alias", ["pg"], indirect=True)
def test_the_relay_thread_is_woken_by_notify(cache: DjangoCache, alias: str) -> None:
    import time

    t = Ticket.objects.using(alias).create(number=1)
    assert cache.get(Ticket, "id", t.pk).number == 1
    relay = cache.relay(alias, interval=30.0)  # polling alone would take 30 s
    try:
        time.sleep(0.3)  # listening
        write_outside(alias, f"UPDATE djapp_ticket SET number = 4 WHERE id = {t.pk}")
        deadline = time.monotonic() + 5
        while cache.get(Ticket, "id", t.pk).number != 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        relay.stop()
