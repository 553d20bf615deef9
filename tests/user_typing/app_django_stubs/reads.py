"""User code of the Django adapter under django-stubs and their mypy plugin: the cache's reads
and the cached manager's methods are typed by the model."""

from __future__ import annotations

import redis
from typing_extensions import assert_type

from cachecow.adapters.django import DjangoCache

from .models import Person


def reads(client: redis.Redis) -> Person:
    cache = DjangoCache(client, using="default", ttl=60, fail_open=True)
    assert_type(cache.get(Person, "email", "ada@example.com"), Person)
    assert_type(cache.get_many(Person, "id", [1, 2]), list[Person | None])
    assert_type(cache.peek(Person, "email", "ada@example.com"), Person | None)
    person = Person.cached.get(email="ada@example.com")
    assert_type(person, Person)
    assert_type(person.email, str)
    assert_type(Person.cached.filter(email__endswith="@example.com").first(), Person | None)
    assert_type(Person.objects.get(pk=1), Person)
    return person
