"""Two tables of one shape: ``PlainRow`` as Django has it, ``WatchedRow`` with a
``CachedManager`` (so cachecow's triggers are on its table)."""

from __future__ import annotations

from django.db import models

from cachecow.adapters.django import CachedManager


class PlainRow(models.Model):
    email = models.CharField(max_length=100, unique=True)
    score = models.IntegerField()

    class Meta:
        app_label = "djbench"


class WatchedRow(models.Model):
    email = models.CharField(max_length=100, unique=True)
    score = models.IntegerField()

    objects = models.Manager()
    cached = CachedManager()

    class Meta:
        app_label = "djbench"
