"""User code of the Django adapter, type-checked by ``mypy --strict`` (Django without
django-stubs is untyped: its classes are ``Any``)."""

from __future__ import annotations

import redis
from django.db import models
from typing_extensions import assert_type

from cachecow.adapters.django import CachedManager, DjangoCache


class Person(models.Model):  # type: ignore[misc]  # Django is untyped without django-stubs
    email = models.EmailField(unique=True)
    cached: CachedManager[Person] = CachedManager()


def reads(client: redis.Redis) -> Person:
    cache = DjangoCache(client, using="default", ttl=60, fail_open=True)
    assert_type(cache.get(Person, "email", "ada@example.com"), Person)
    assert_type(cache.get_many(Person, "id", [1, 2]), list[Person | None])
    person = Person.cached.get(email="ada@example.com")
    assert_type(person, Person)
    return person
