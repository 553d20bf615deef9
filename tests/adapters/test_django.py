"""The Django adapter on SQLite and PostgreSQL (pytest-django, real Redis): lookups through the
manager, from_db objects, invalidation on commit, bulk writes, atomic blocks, a forced race."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

import cachecow
from cachecow import ConfigurationError, InvalidLookup
from cachecow.adapters.django import DjangoCache, set_default_cache
from cachecow.adapters.django._triggers import close_raw_connections
from cachecow.testing.contract import CacheCowContract, FetchProbe
from tests.adapters.djapp.models import (
    Account,
    Everything,
    Item,
    Membership,
    Org,
    Person,
    ProxyPerson,
)
from tests.support.lookups import BAD_VALUES, calls

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


class ThreadSafeDjangoCache(DjangoCache):
    """Closes a reader thread's database connection after its fetch (test threads end
    without Django's request cycle, which would close it)."""

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        try:
            return super().fetch(cls, id_field, id_val)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connections[self.db_for(cls)].close()

    def fetch_many(self, cls: Any, id_field: Any, id_vals: Any) -> Any:
        try:
            return super().fetch_many(cls, id_field, id_vals)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connections[self.db_for(cls)].close()


@pytest.fixture(autouse=True)
def _no_drain_connections_left() -> Iterator[None]:
    """cachecow's drain connections would keep the test databases from being dropped."""
    yield
    close_raw_connections()


@pytest.fixture
def cache(alias: str, redis_client: redis.Redis) -> Iterator[DjangoCache]:
    cache = ThreadSafeDjangoCache(redis_client, using=alias)
    set_default_cache(cache)  # the managers' cache; watches every model with a CachedManager
    yield cache
    set_default_cache(None)


def queries(alias: str) -> CaptureQueriesContext:
    return CaptureQueriesContext(connections[alias])


def cached(cache: DjangoCache, model: Any, field: Any, value: Any) -> Any:
    raw = cache.redis.get(cache.get_keys(model, field, value)[0])
    if raw is None or raw == cachecow.TOMBSTONE:
        return None
    return cache.deserialize(model, raw)


# -- the contract -------------------------------------------------------------------------------


class TestDjangoContract(CacheCowContract):
    model = Item
    field = "id"

    @pytest.fixture(autouse=True)
    def _alias(self, alias: str) -> None:
        self.alias = alias

    def make_cache(self, redis: redis.Redis, **options: Any) -> Any:
        return ThreadSafeDjangoCache(redis, using=self.alias, **options)

    def write(self, key: int, payload: str) -> None:
        Item.objects.using(self.alias).update_or_create(id=key, defaults={"payload": payload})

    def delete(self, key: int) -> None:
        Item.objects.using(self.alias).filter(id=key).delete()

    def payload_of(self, obj: Any) -> str:
        payload: str = obj.payload
        return payload


# -- lookups through the managers ---------------------------------------------------------------


def test_manager_serves_unique_lookups_and_passes_the_rest(cache: DjangoCache, alias: str) -> None:
    org = Org.objects.using(alias).create(name="Acme")
    ada = Person.objects.using(alias).create(email="ada@x.io", name="Ada", org=org)
    Membership.objects.using(alias).create(org=org, person=ada, role="owner")
    Person.cached.get(email="ada@x.io")
    with queries(alias) as ctx:
        assert Person.cached.get(email="ada@x.io").pk == ada.pk
        assert Person.cached.get(pk=ada.pk).email == "ada@x.io"
        assert Person.cached.get(id=ada.pk).email == "ada@x.io"
    assert len(ctx) == 1  # pk and id are one lookup: one miss between them, then hits
    with queries(alias) as ctx:
        assert Membership.cached.get(org=org, person=ada).role == "owner"
        assert Membership.cached.get(person_id=ada.pk, org_id=org.pk).role == "owner"
    assert len(ctx) == 1
    before = cache.redis.dbsize()
    assert Person.cached.using(alias).get(name="Ada").pk == ada.pk  # not unique: to the database
    assert Person.cached.using(alias).filter(org=org).get(email="ada@x.io").pk == ada.pk
    assert Person.cached.using(alias).get(email__iexact="ADA@x.io").pk == ada.pk
    assert cache.redis.dbsize() == before


def test_objects_opt_in(cache: DjangoCache, alias: str) -> None:
    Account.objects.using(alias).create(handle="ada", balance=5)
    Account.objects.get(handle="ada")
    with queries(alias) as ctx:
        assert Account.objects.get(handle="ada").balance == 5
    assert len(ctx) == 0


def test_cached_objects_behave_as_loaded(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="ada@x.io", name="Ada")
    Person.cached.get(pk=ada.pk)
    obj = Person.cached.get(pk=ada.pk)
    assert cache.metrics.snapshot().hits == 1
    assert obj._state.adding is False
    assert obj._state.db == alias
    assert obj == ada
    obj.name = "Ada Lovelace"
    obj.save()  # an UPDATE, not an INSERT
    assert Person.objects.using(alias).count() == 1
    assert Person.cached.get(pk=ada.pk).name == "Ada Lovelace"


def test_does_not_exist_both_times(cache: DjangoCache, alias: str) -> None:
    for _ in range(2):
        with pytest.raises(Person.DoesNotExist):
            Person.cached.get(email="nobody@x.io")
    assert cache.metrics.snapshot().tombstone_hits == 1


def test_only_unique_lookups_and_no_proxies(cache: DjangoCache) -> None:
    with pytest.raises(InvalidLookup, match=r"valid lookups are 'id', 'email'"):
        cache.get(Person, "name", "Ada")
    with pytest.raises(ConfigurationError, match="proxy model"):
        cache.get(ProxyPerson, "id", 1)


@pytest.mark.parametrize("field", ["id", "email"])
def test_every_call_refuses_a_value_no_column_holds(
    cache: DjangoCache, alias: str, field: str
) -> None:
    for value in BAD_VALUES:
        for name, call in calls(cache, Person, field, value).items():
            with CaptureQueriesContext(connections[alias]) as queries, pytest.raises(InvalidLookup):
                call()
            assert len(queries) == 0, (name, value)  # refused before the database
    assert cache.redis.dbsize() == 0


def test_a_read_without_the_app_installed_is_refused(
    cache: DjangoCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    import cachecow.adapters.django as adapter

    monkeypatch.setattr(adapter, "_app_ready", False)  # as if CachecowConfig never got ready
    with pytest.raises(ImproperlyConfigured, match="CachecowConfig is not in INSTALLED_APPS"):
        cache.get(Person, "email", "nobody@x.io")
    assert cache.redis.dbsize() == 0


def test_field_types_round_trip(cache: DjangoCache, alias: str) -> None:
    row = Everything.objects.using(alias).create(
        when=dt.datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=dt.timezone.utc),
        day=dt.date(1999, 12, 31),
        clock=dt.time(23, 59, 58, 999999),
        span=dt.timedelta(days=3, seconds=7, microseconds=11),
        money=decimal.Decimal("123456.789012"),
        ratio=0.1 + 0.2,
        token=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=b"\x00\xffbytes",
        doc={"a": [1, 2.5, None, {"b": "c"}]},
        flag=False,
        text="x" * 300,
    )
    loaded = Everything.objects.using(alias).get(pk=row.pk)
    Everything.cached.get(pk=row.pk)
    hit = Everything.cached.get(pk=row.pk)
    assert cache.metrics.snapshot().hits == 1
    for name in ["when", "day", "clock", "span", "money", "ratio", "token", "doc", "flag", "text"]:
        assert getattr(hit, name) == getattr(loaded, name), name
        assert type(getattr(hit, name)) is type(getattr(loaded, name)), name
    assert bytes(hit.blob) == bytes(loaded.blob)


# -- invalidation -------------------------------------------------------------------------------


def test_save_invalidates_old_and_new_unique_values(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="old@x.io", name="Ada")
    Person.cached.get(email="old@x.io")
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="new@x.io")  # a tombstone under the new value
    ada.email = "new@x.io"
    ada.save()
    assert Person.cached.get(email="new@x.io").pk == ada.pk
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="old@x.io")


def test_save_of_an_unloaded_instance_reads_its_old_values(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="old@x.io", name="Ada")
    Person.cached.get(email="old@x.io")
    Person(pk=ada.pk, email="new@x.io", name="Ada").save(using=alias)  # never loaded
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="old@x.io")


def test_invalidation_waits_for_the_outermost_commit(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="a@x.io", name="v1")
    Person.cached.get(pk=ada.pk)
    with transaction.atomic(using=alias):
        ada.name = "v2"
        ada.save()
        with transaction.atomic(using=alias):
            pass
        assert cached(cache, Person, "id", ada.pk).name == "v1"  # not before the commit
    assert cached(cache, Person, "id", ada.pk) is None
    assert Person.cached.get(pk=ada.pk).name == "v2"


def test_rollback_and_savepoint_rollback_invalidate_nothing(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="a@x.io", name="a")
    bob = Person.objects.using(alias).create(email="b@x.io", name="b")
    Person.cached.get(pk=ada.pk)
    Person.cached.get(pk=bob.pk)
    start = cache.metrics.snapshot().invalidations
    try:
        with transaction.atomic(using=alias):
            ada.name = "never"
            ada.save()
            raise RuntimeError
    except RuntimeError:
        pass
    assert cache.metrics.snapshot().invalidations == start
    with transaction.atomic(using=alias):
        bob.name = "b2"
        bob.save()
        try:
            with transaction.atomic(using=alias):
                ada.name = "undone"
                ada.save()
                raise RuntimeError
        except RuntimeError:
            pass
    assert cached(cache, Person, "id", ada.pk).name == "a"  # its savepoint rolled back
    assert cached(cache, Person, "id", bob.pk) is None
    assert Person.cached.get(pk=ada.pk).name == "a"


def test_delete_and_cascades(cache: DjangoCache, alias: str) -> None:
    org = Org.objects.using(alias).create(name="Acme")
    ada = Person.objects.using(alias).create(email="a@x.io", org=org)
    Membership.objects.using(alias).create(org=org, person=ada, role="owner")
    org_id, ada_id = org.pk, ada.pk
    assert Person.cached.get(email="a@x.io").pk == ada_id
    assert Membership.cached.get(org_id=org_id, person_id=ada_id).role == "owner"
    org.delete()  # cascades to the person and the membership, sending their signals
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="a@x.io")
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(pk=ada_id)
    with pytest.raises(Membership.DoesNotExist):
        Membership.cached.get(org_id=org_id, person_id=ada_id)


def test_queryset_update_and_delete_invalidate_every_row(cache: DjangoCache, alias: str) -> None:
    people = [Person.objects.using(alias).create(email=f"{i}@x.io", name="v1") for i in range(20)]
    ids = [p.pk for p in people]
    assert {p.name for p in cache.get_many(Person, "id", ids)} == {"v1"}
    assert Person.cached.using(alias).filter(pk__in=ids).update(name="v2") == 20
    assert {p.name for p in cache.get_many(Person, "id", ids)} == {"v2"}
    Person.cached.using(alias).filter(pk__in=ids[:5]).delete()
    assert cache.get_many(Person, "id", ids[:5]) == [None] * 5
    assert Person.cached.using(alias).filter(pk=ids[5]).update(email="moved@x.io") == 1
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="5@x.io")
    assert Person.cached.get(email="moved@x.io").pk == ids[5]


def test_bulk_create_and_bulk_update(cache: DjangoCache, alias: str) -> None:
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="new@x.io")
    Person.cached.using(alias).bulk_create([Person(email="new@x.io", name="n")])
    assert Person.cached.get(email="new@x.io").name == "n"
    person = Person.objects.using(alias).get(email="new@x.io")
    Person.cached.get(pk=person.pk)
    person.name = "bulk"
    Person.cached.using(alias).bulk_update([person], ["name"])
    assert Person.cached.get(pk=person.pk).name == "bulk"


# -- atomic blocks ------------------------------------------------------------------------------


def test_inside_a_block_that_wrote_reads_see_its_own_data(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="a@x.io", name="v1")
    Person.cached.get(pk=ada.pk)
    with transaction.atomic(using=alias):
        ada.name = "uncommitted"
        ada.save()
        assert Person.cached.get(pk=ada.pk).name == "uncommitted"
        assert cached(cache, Person, "id", ada.pk).name == "v1"  # nothing cached
    assert Person.cached.get(pk=ada.pk).name == "uncommitted"  # committed now


def test_a_miss_inside_a_block_caches_nothing(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="a@x.io", name="v1")
    with transaction.atomic(using=alias):
        assert Person.cached.get(pk=ada.pk).name == "v1"
        assert cache.redis.dbsize() == 0
    Person.cached.get(pk=ada.pk)  # outside: leased and cached
    with transaction.atomic(using=alias):
        with queries(alias) as ctx:
            assert Person.cached.get(pk=ada.pk).name == "v1"  # a hit is still served
        assert len(ctx) == 0


# -- a forced race --------------------------------------------------------------------------------


def test_a_reader_racing_an_on_commit_invalidation(cache: DjangoCache, alias: str) -> None:
    ada = Person.objects.using(alias).create(email="a@x.io", name="old")
    reader_cache = ThreadSafeDjangoCache(cache.redis, using=alias)
    probe = FetchProbe(reader_cache)
    probe.gate_next()
    got: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: got.update(p=reader_cache.get(Person, "id", ada.pk)))
    reader.start()
    probe.wait_fetched()  # the reader leased and read the old, committed row
    with transaction.atomic(using=alias):
        ada.name = "new"
        ada.save()
    # on_commit ran the invalidation: the reader's lease is void
    probe.release()
    reader.join(10)
    assert got["p"].name == "old"
    assert reader_cache.metrics.snapshot().stale_commits == 1
    assert cached(cache, Person, "id", ada.pk) is None
    assert Person.cached.get(pk=ada.pk).name == "new"


def test_a_write_in_one_transaction_does_not_bypass_the_cache_in_the_next(
    cache: DjangoCache, alias: str
) -> None:
    ada = Person.objects.using(alias).create(email="a@x.io", name="v1")
    with transaction.atomic(using=alias):
        ada.name = "v2"
        ada.save()  # this transaction wrote Person: its reads skip the cache
    Person.cached.get(pk=ada.pk)  # outside: cached
    with transaction.atomic(using=alias):
        with queries(alias) as ctx:
            assert Person.cached.get(pk=ada.pk).name == "v2"
        assert len(ctx) == 0  # a new transaction that wrote nothing: served from the cache


@pytest.mark.parametrize("alias", ["pg"], indirect=True)
def test_a_row_that_matches_an_update_only_at_its_execution(cache: DjangoCache, alias: str) -> None:
    """Between update()'s pre-select and its UPDATE, another connection makes row 2 match the
    filter and a reader caches it; the UPDATE changes it too, so it must be invalidated.
    (PostgreSQL: under SQLite's locking the other writer cannot commit inside that window.)"""
    a = Person.objects.using(alias).create(email="z1@x.io", name="A")
    b = Person.objects.using(alias).create(email="b@x.io", name="B")
    fired: list[bool] = []

    def elsewhere() -> None:  # another thread: another connection, autocommit
        try:
            moved = Person.objects.using(alias).get(pk=b.pk)
            moved.email = "z2@x.io"
            moved.save()  # its invalidation runs at once (autocommit)
            assert cache.get(Person, "id", b.pk).email == "z2@x.io"  # a reader caches it
        finally:
            connections[alias].close()

    def interleave(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not fired and sql.lstrip().upper().startswith("UPDATE"):
            fired.append(True)
            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join(10)
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(interleave):
        Person.cached.using(alias).filter(email__startswith="z").update(name="Renamed")
    assert fired
    assert Person.cached.get(pk=b.pk).name == "Renamed"
    assert Person.cached.get(pk=a.pk).name == "Renamed"


def test_a_save_after_refresh_from_db_invalidates_what_the_row_held(
    cache: DjangoCache, alias: str
) -> None:
    ada = Person.objects.using(alias).create(email="a1@x.io", name="Ada")
    stale = Person.objects.using(alias).get(pk=ada.pk)
    other = Person.objects.using(alias).get(pk=ada.pk)
    other.email = "a2@x.io"
    other.save()
    stale.refresh_from_db()  # no post_init: only the database knows a2 now
    assert Person.cached.get(email="a2@x.io").pk == ada.pk
    stale.email = "a3@x.io"
    stale.save()
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="a2@x.io")


def test_a_save_after_a_rolled_back_save_invalidates_what_the_row_held(
    cache: DjangoCache, alias: str
) -> None:
    bob = Person.objects.using(alias).create(email="b1@x.io", name="Bob")
    try:
        with transaction.atomic(using=alias):
            bob.email = "rolled@x.io"
            bob.save()
            raise RuntimeError
    except RuntimeError:
        pass
    bob.refresh_from_db()
    assert Person.cached.get(email="b1@x.io").pk == bob.pk
    bob.email = "b2@x.io"
    bob.save()
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="b1@x.io")


def test_a_delete_of_a_stale_instance_invalidates_what_the_row_held(
    cache: DjangoCache, alias: str
) -> None:
    ada = Person.objects.using(alias).create(email="a1@x.io")
    stale = Person.objects.using(alias).get(pk=ada.pk)
    ada.email = "a2@x.io"
    ada.save()
    assert Person.cached.get(email="a2@x.io").pk == ada.pk
    stale.delete()  # it still says a1
    with pytest.raises(Person.DoesNotExist):
        Person.cached.get(email="a2@x.io")


def test_calls_of_an_atomic_decorated_function_are_separate_transactions(
    cache: DjangoCache, alias: str
) -> None:
    ada = Person.objects.using(alias).create(email="a@x.io", name="v1")

    @transaction.atomic(using=alias)
    def rename(name: str | None) -> Any:
        if name is not None:
            person = Person.objects.using(alias).get(pk=ada.pk)
            person.name = name
            person.save()
        with queries(alias) as ctx:
            found = Person.cached.get(pk=ada.pk)
        return found, len(ctx)

    rename("v2")  # writes: its reads skip the cache
    Person.cached.get(pk=ada.pk)  # cached outside
    found, count = rename(None)  # the same Atomic object, a new transaction that wrote nothing
    assert (found.name, count) == ("v2", 0)


def test_two_caches_watching_one_model_both_invalidate(
    cache: DjangoCache, alias: str, redis_client: redis.Redis
) -> None:
    other = ThreadSafeDjangoCache(redis_client, using=alias, prefix="other:")
    other.watch(Person)
    try:
        ada = Person.objects.using(alias).create(email="old@x.io")
        cache.get(Person, "email", "old@x.io")
        other.get(Person, "email", "old@x.io")
        ada.email = "new@x.io"
        ada.save()
        for c in (cache, other):
            with pytest.raises(Person.DoesNotExist):
                c.get(Person, "email", "old@x.io")
    finally:
        other.unwatch()


def test_a_lookup_in_another_type_reaches_the_same_entry(cache: DjangoCache, alias: str) -> None:
    with pytest.raises(Person.DoesNotExist):
        cache.get(Person, "id", "4242")  # converted to 4242: the tombstone is the id's
    Person.objects.using(alias).create(id=4242, email="late@x.io")
    assert cache.get(Person, "id", "4242").email == "late@x.io"
    assert cache.metrics.snapshot().uncacheable == 0


def test_settings_ttls_by_model_label(redis_client: redis.Redis) -> None:
    """``CACHECOW["TTLS"]`` keys are Django model labels; the cache keeps them by its own label."""
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from cachecow.adapters.django import default_cache
    from cachecow.keys import model_label

    settings = {"CONNECTION": redis_client, "RELAY": False, "MODELS": ["djapp.Item"]}
    try:
        with override_settings(CACHECOW={**settings, "TTLS": {"djapp.Person": 60}}):
            set_default_cache(None)
            cache = default_cache()
            assert cache.options.ttls == {model_label(Person): 60.0}
            assert cache._ttl(Person, None) == 60.0
            assert cache._ttl(Item, None) == cache.options.ttl
        with override_settings(CACHECOW={**settings, "TTLS": {"djapp.Nobody": 60}}):
            set_default_cache(None)
            with pytest.raises(ImproperlyConfigured, match="TTLS"):
                default_cache()
    finally:
        set_default_cache(None)
