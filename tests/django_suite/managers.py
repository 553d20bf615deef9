"""Make ``CachedManager`` the manager Django auto-creates as ``objects`` on every model.

Imported by ``settings.py`` before any model exists: ``ModelBase._prepare`` instantiates the
name ``Manager`` of ``django.db.models.base`` for a model that declares no manager, so
:func:`install` replaces that name by :class:`AutoCachedManager`. Models that declare their own
managers (most of ``django.contrib``: ``UserManager``, ``ContentTypeManager``...) keep them.

The cache serves the models of the installed apps, those that exist when the test databases
are created: :func:`prepare_cache` (called by the harness before ``migrate``) has the default
cache watch them. Model classes made otherwise get a plain manager (:class:`PlainAutoManager`),
as they would in a project where only the application's models declare a ``CachedManager``:

- models made after the test databases (inside a test: the table does not exist, and the
  adapter would try to install its triggers at the next ``post_migrate``),
- models of another app registry (migrations' historical models, the temporary
  ``new__<table>`` models of SQLite's schema editor, ``isolate_apps``),
- auto-created many-to-many through models (Django always gives them its default manager).

A model whose triggers cachecow refuses to build (``cachecow.ConfigurationError``: a unique
lookup on a column of a type the outbox cannot carry), or whose triggers would carry no lookup
at all, is printed, recorded in :data:`REFUSED` and given a plain manager too, so that
``migrate`` and the checks can run for the others. A model that keeps some of its unique
lookups but loses others (the adapter leaves out those it cannot carry: their gets go to the
database) is printed and recorded in :data:`NOT_SERVED`.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import models
from django.db.models import base as _model_base

from cachecow import ConfigurationError
from cachecow.adapters import django as _adapter
from cachecow.adapters.django import CachedManager

__all__ = ["ACTIVE", "REFUSED", "AutoCachedManager", "install", "prepare_cache"]

ACTIVE: set[Any] = set()  # the concrete models the cache serves (prepare_cache)
REFUSED: dict[str, str] = {}  # label -> why cachecow refused the model (ConfigurationError)
NOT_SERVED: dict[str, list[Any]] = {}  # label -> its unique lookups the triggers do not carry
_prepared = False


class PlainAutoManager(models.Manager):  # type: ignore[type-arg]
    """The auto-created ``objects`` of a model the cache does not serve."""


class AutoCachedManager(CachedManager):  # type: ignore[misc]
    """The ``objects`` Django creates for a model without managers, under the harness."""

    def contribute_to_class(self, cls: Any, name: str) -> None:
        # Not CachedManager.contribute_to_class: when the default cache exists it watches the
        # model at once, which reads every foreign key's related_model and raises
        # AppRegistryNotReady while the registry is populated (runtests.py builds the cache
        # in its first django.setup(), then imports the test apps with
        # apps.set_installed_apps()). prepare_cache() watches the models instead.
        models.Manager.contribute_to_class(self, cls, name)
        meta = cls._meta
        if _prepared or meta.apps is not global_apps or meta.auto_created:
            self.__class__ = PlainAutoManager


def install() -> None:
    """Patch ``django.db.models.base.Manager`` (before any model class is created)."""
    _model_base.Manager = AutoCachedManager  # type: ignore[attr-defined]


def _managers(model: Any) -> list[Any]:
    return [*model._meta.local_managers, *model._meta.managers]


def declared_lookups(model: Any) -> list[Any]:
    """Every unique lookup of a model (before the adapter leaves out those it cannot carry)."""
    return list(_adapter._Model.declared_lookups(model))


def _refuse(label: str, why: str) -> None:
    REFUSED[label] = why
    print(f"cachecow refused {label}: {why}", flush=True)


def prepare_cache() -> dict[str, str]:
    """Once every model is loaded, before ``migrate``: refuse the models whose triggers
    cachecow cannot build (printed, recorded in :data:`REFUSED`, given plain managers), and have
    the default cache watch every other model with an :class:`AutoCachedManager`. Returns
    :data:`REFUSED`."""
    global _prepared
    cache = _adapter.default_cache()
    every = global_apps.get_models(include_auto_created=True)
    candidates = [
        m
        for m in every
        if not (m._meta.proxy or m._meta.parents)
        and any(isinstance(manager, AutoCachedManager) for manager in _managers(m))
    ]
    for model in candidates:
        label = model._meta.label
        if model in ACTIVE or label in REFUSED:
            continue
        try:
            (table,) = _adapter.watched_tables([model])  # the triggers' view: types checked
        except ConfigurationError as exc:
            _refuse(label, str(exc))
            continue
        dropped = [lk for lk in declared_lookups(model) if lk not in table.lookups]
        if not table.lookups:
            _refuse(
                label,
                f"its triggers would carry none of its unique lookups {dropped} (the adapter "
                "leaves out those on columns of types the outbox cannot carry)",
            )
            continue
        if dropped:
            NOT_SERVED[label] = dropped
            print(f"cachecow does not serve {label}'s lookups {dropped}", flush=True)
        ACTIVE.add(model)
    for model in every:  # the refused ones, their proxies and children: plain managers
        for manager in _managers(model):
            concrete = manager.model._meta.concrete_model
            if isinstance(manager, AutoCachedManager) and concrete not in ACTIVE:
                manager.__class__ = PlainAutoManager
    registered = getattr(_adapter, "_managed_models", None)  # older revisions of the adapter
    for model in ACTIVE:
        if registered is not None and model not in registered:
            registered.append(model)
        cache.watch(model)
    for model in _adapter.watched_models():
        cache.watch(model)
    _prepared = True
    return dict(REFUSED)
