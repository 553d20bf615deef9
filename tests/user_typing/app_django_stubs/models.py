"""A model with a cached manager, typed by django-stubs (no ``type: ignore``: Django's classes
are typed, not ``Any``)."""

from __future__ import annotations

from django.db import models

from cachecow.adapters.django import CachedManager


class Person(models.Model):
    email = models.EmailField(unique=True)
    objects = models.Manager()  # Django adds none once another manager is declared
    cached: CachedManager[Person] = CachedManager()
