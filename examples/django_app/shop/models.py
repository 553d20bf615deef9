"""The example's models: ``Model.cached.get(<unique lookup>)`` is served from Redis."""

from __future__ import annotations

from django.db import models

# mypy cannot see cachecow.adapters through the editable install (adapters/ maps onto it).
from cachecow.adapters.django import CachedManager  # type: ignore[import-not-found, unused-ignore]


class Customer(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100)

    objects = models.Manager()  # the default manager: plain database queries
    cached = CachedManager()  # Customer.cached.get(email=...) or get(pk=...) from Redis

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    number = models.CharField(max_length=20, unique=True)

    cached = CachedManager()  # the only manager, so also the default one

    def __str__(self) -> str:
        return f"order {self.number}"
