"""cachecow with Django: cached unique-key gets through a manager, invalidated after commit.

Run it from the repository root (needs the ``demo`` and ``django`` extras,
``pip install -e '.[demo,django]'``)::

    python examples/django_app/run.py                                    # no services needed
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/django_app/run.py  # a real Redis

The script configures Django itself: the settings module is settings.py next to it (it sets
DJANGO_SETTINGS_MODULE, whatever the environment says), the app is ``shop`` (shop/models.py), the
database SQLite in a temporary file, and Redis an embedded fakeredis (it runs cachecow's Lua)
unless REDIS_URL is set; then every key lives under a random prefix and is deleted at the end.
The example checks each claim it prints and exits non-zero if one breaks.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OLD, NEW = "ada@example.com", "ada@lovelace.org"
MEMBERS = [f"m{i}@example.com" for i in range(1, 4)]


def setup_django() -> None:
    """Load settings.py and the ``shop`` app from this directory, wherever we run from."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
    import django

    django.setup()  # CachecowConfig.ready() builds the cache and watches Customer and Order


def check(ok: bool, claim: str) -> None:
    if not ok:
        raise SystemExit(f"EXAMPLE FAILED: {claim}")
    print(f"   ok: {claim}")


def step(number: int, title: str, explanation: str) -> None:
    print(f"\n{number}. {title}\n   {explanation}")


def found(model: Any, **lookup: Any) -> Any:
    """``model.cached.get(**lookup)``, or None where it raises ``model.DoesNotExist``."""
    try:
        return model.cached.get(**lookup)
    except model.DoesNotExist:
        return None


def run() -> None:
    from django.db import connections, transaction
    from django.test.utils import CaptureQueriesContext
    from shop.models import Customer, Order

    from cachecow.adapters.django import default_cache  # type: ignore[import-not-found, unused-ignore]

    cache = default_cache()

    def queries() -> CaptureQueriesContext:
        return CaptureQueriesContext(connections["default"])

    def invalidations() -> int:
        return int(cache.metrics.snapshot().invalidations)

    def keys() -> int:
        return sum(1 for _ in cache.redis.scan_iter(match=f"{cache.prefix}*"))

    ada = Customer.objects.create(email=OLD, name="Ada")
    Customer.objects.create(email="grace@example.com", name="Grace")
    for i, email in enumerate(MEMBERS, 1):
        Customer.objects.create(email=email, name=f"Member {i}")
    Order.cached.create(customer=ada, number="A-1")
    Order.cached.create(customer=ada, number="A-2")

    step(1, "A miss, then a hit", "The first get by email queries the database; the second not.")
    with queries() as ctx:
        first = Customer.cached.get(email=OLD)
    print(f"   Customer.cached.get(email={OLD!r}) -> {first} ({len(ctx)} query)")
    check(len(ctx) == 1, "the miss ran 1 query and cached the row")
    with queries() as ctx:
        hit = Customer.cached.get(email=OLD)
    print(f"   Customer.cached.get(email={OLD!r}) -> {hit} ({len(ctx)} queries)")
    check(len(ctx) == 0, "the hit ran 0 queries")
    check(hit == first and hit.name == "Ada", "the hit is the same row, rebuilt from Redis")
    check(
        hit._state.adding is False and hit._state.db == "default",
        "it behaves as loaded: _state.adding is False, _state.db is 'default'",
    )

    step(2, "Only unique lookups", "get(name=...) could match many rows: it goes to the database.")
    before, counters = keys(), cache.metrics.snapshot()
    with queries() as ctx:
        grace = Customer.cached.get(name="Grace")
    print(f"   Customer.cached.get(name='Grace') -> {grace} ({len(ctx)} query)")
    check(len(ctx) == 1, "the lookup ran its own query, as Customer.objects.get would")
    check(
        keys() == before and cache.metrics.snapshot() == counters,
        "and cached nothing: no new key in Redis, no counter moved",
    )

    step(3, "A save, invalidated on commit", "Ada changes her email in transaction.atomic().")
    check(found(Customer, email=NEW) is None, "the new email: Customer.DoesNotExist")
    with queries() as ctx:
        gone = found(Customer, email=NEW)
    check(gone is None and len(ctx) == 0, "asked again: 0 queries, a cached tombstone answers")
    ada = Customer.cached.get(email=OLD)
    start = invalidations()
    with transaction.atomic():
        ada.email = NEW
        ada.save()  # queues the invalidations with transaction.on_commit: no invalidate() call
        held = cache.peek(Customer, "email", OLD)
        print(f"   in the block, after save(): cache.peek(Customer, 'email', {OLD!r}) -> {held}")
        check(held is not None and held.email == OLD, "the cache still holds the old entry")
        check(invalidations() == start, "nothing is invalidated before the commit")
        mine = Customer.cached.get(pk=ada.pk)
        check(mine.email == NEW, "reads in the block skip the cache: they see the block's write")
    done = invalidations() - start
    print(f"   commit -> {done} lookups invalidated")
    check(done == 3, "the commit alone invalidated the id, the old email and the new one")
    check(found(Customer, email=OLD) is None, "the old email raises Customer.DoesNotExist")
    new = found(Customer, email=NEW)
    check(new is not None and new.pk == ada.pk, "the new email finds Ada (its tombstone is gone)")

    step(4, "A rollback", "A save in a block that raises leaves the cache as it was.")
    grace = Customer.cached.get(email="grace@example.com")
    start = invalidations()
    try:
        with transaction.atomic():
            grace.email = "grace@navy.mil"
            grace.save()
            raise RuntimeError("payment declined")  # Django does not reset grace.email
    except RuntimeError as exc:
        print(f"   grace.save() in a block that raised RuntimeError({str(exc)!r}): rolled back")
    check(invalidations() == start, "the rollback dropped the queued invalidations")
    with queries() as ctx:
        again = Customer.cached.get(email="grace@example.com")
    check(len(ctx) == 0 and again.email == "grace@example.com", "Grace is still a hit")
    check(found(Customer, email="grace@navy.mil") is None, "the rolled-back email finds nobody")

    step(5, "A bulk update()", "Cache 3 members, rename them in one UPDATE, read them again.")
    ids = [Customer.cached.get(email=email).pk for email in MEMBERS]
    names = [c.name for c in cache.get_many(Customer, "id", ids)]
    print(f"   by email and by id: {names}")
    start = invalidations()
    count = Customer.cached.filter(email__startswith="m").update(name="VIP")
    done = invalidations() - start
    print(f"   Customer.cached.filter(email__startswith='m').update(name='VIP') -> {count} rows")
    check(count == 3 and done == 6, "the id and email lookups of all 3 rows were invalidated")
    by_email = [Customer.cached.get(email=email).name for email in MEMBERS]
    by_id = [c.name for c in cache.get_many(Customer, "id", ids)]
    print(f"   by email: {by_email}; by id: {by_id}")
    check(by_email == by_id == ["VIP"] * 3, "every member reads its new name")

    step(6, "A cascade", "Deleting Ada deletes her orders; their cached entries go too.")
    orders = [Order.cached.get(number=number) for number in ("A-1", "A-2")]
    with queries() as ctx:
        Order.cached.get(number="A-1")
    check(len(ctx) == 0 and all(o.customer_id == ada.pk for o in orders), "her orders are cached")
    start = invalidations()
    _, deleted = Customer.cached.get(email=NEW).delete()
    print(f"   Customer.cached.get(email={NEW!r}).delete() -> {deleted}")
    check(invalidations() - start == 6, "the id and number of each order, the id and email of Ada")
    check(
        found(Order, number="A-1") is None and found(Order, number="A-2") is None,
        "Order.cached.get(number=...) raises Order.DoesNotExist for both orders",
    )
    check(found(Customer, pk=ada.pk) is None, "Customer.cached.get(pk=...) raises DoesNotExist")

    step(7, "The counters", "default_cache().metrics.snapshot().as_dict():")
    counters_now = cache.metrics.snapshot().as_dict()
    width = max(map(len, counters_now))
    for name, value in counters_now.items():
        print(f"   {name:<{width}}  {value:>3}")


def main() -> None:
    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    from cachecow.adapters.django import default_cache  # type: ignore[import-not-found, unused-ignore]

    client, prefix = default_cache().redis, default_cache().prefix
    if settings.REDIS_URL:
        print(f"Redis: {settings.REDIS_URL} (keys under {prefix}, deleted at the end)")
    else:
        print("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    print(f"Database: SQLite in {settings.DATABASES['default']['NAME']} (deleted at the end)")
    try:
        call_command("migrate", run_syncdb=True, verbosity=0)  # shop has no migration files
        run()
    finally:
        connections.close_all()
        shutil.rmtree(settings.EXAMPLE_DIR, ignore_errors=True)
        leftovers = list(client.scan_iter(match=f"{prefix}*"))
        if leftovers:
            client.delete(*leftovers)
        client.close()
    print("\nAll claims held.")


if __name__ == "__main__":
    main()
