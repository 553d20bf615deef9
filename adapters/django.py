"""Django adapter: cached unique-key gets as a Django app, invalidated on commit.

Settings (all optional but the connection)::

    INSTALLED_APPS = [..., "cachecow.adapters.django.CachecowConfig"]
    CACHECOW = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",  # or "CONNECTION": a client or a callable
        "TIMEOUT": 0.5,                           # socket timeout of the client built from the URL
        "OPTIONS": {"ttl": 3600, "busy": "wait", "fail_open": True},  # CacheCow's options
        "MODELS": ["shop.Product"],               # models to invalidate (besides those with a
                                                  # CachedManager, which are always watched)
    }

Models::

    from cachecow.adapters.django import CachedManager

    class User(models.Model):
        email = models.EmailField(unique=True)
        objects = models.Manager()
        cached = CachedManager()      # User.cached.get(email=...) from Redis
        # or, to serve User.objects.get(pk=...) from Redis without changing callers:
        # objects = CachedManager()

**Lookups.** ``get()`` is served from the cache when its keyword arguments are exactly one unique
lookup: ``pk`` or the primary key, a unique field, a ``UniqueConstraint`` without condition or a
``unique_together`` (foreign keys by instance or by id). Every other query falls through to the
database untouched.

**Reads.** ``fetch`` reads through the model's base manager on the model's read database.
Objects are rebuilt with ``Model.from_db``: they behave as loaded ones (``_state.adding`` is
False, ``_state.db`` is set). Proxy models and multi-table inheritance are refused with a clear
error.

**Invalidation.** ``post_save`` and ``post_delete`` queue invalidations of the old and the new
values of every unique lookup with ``transaction.on_commit`` (after the outermost commit, dropped
on rollback, savepoints included). The old values come from the database: ``pre_save`` of an
existing row and ``pre_delete`` read its unique fields (one SELECT), since an instance's own
memory of them can be out of date (``refresh_from_db``, a rolled-back save, another process).
The adapter's queryset's ``update()``, ``delete()``
(cascades included: they send the signals), ``bulk_create()`` and ``bulk_update()`` invalidate
every affected row. Writes through other managers' ``update()`` or raw SQL are not seen.

**Transactions.** Inside an atomic block nothing is cached: a hit is served, a miss reads the
database in the block's own transaction and caches nothing; once the block wrote a model, reads
of that model skip the cache, so they see the transaction's own writes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

try:
    from django.apps import AppConfig, apps
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections, models, router, transaction
    from django.db.models import signals
    from django.utils.module_loading import import_string
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cachecow.adapters.django needs Django 4.2 or newer: pip install 'cachecow[django]'"
    ) from exc

import cachecow
from cachecow import CacheCow, ConfigurationError, NotFound
from cachecow.keys import Field, normalize_lookup

from ._codecs import Codec, codec_for
from ._lookups import Lookup, coerce, describe, refuse
from ._lookups import has_null as _has_null
from ._lookups import keys_of as _keys
from ._lookups import kwargs_of as _kwargs

__all__ = [
    "CachecowConfig",
    "CachedManager",
    "CachedQuerySet",
    "DjangoCache",
    "default_cache",
    "set_default_cache",
]


_PYTHON_TYPES: list[tuple[type[models.Field[Any, Any]], Any]] = [
    (models.DateTimeField, dt.datetime),
    (models.DateField, dt.date),
    (models.TimeField, dt.time),
    (models.DurationField, dt.timedelta),
    (models.DecimalField, decimal.Decimal),
    (models.FloatField, float),
    (models.UUIDField, uuid.UUID),
    (models.BinaryField, bytes),
]


def _python_type(field: models.Field[Any, Any]) -> Any:
    for field_class, python_type in _PYTHON_TYPES:
        if isinstance(field, field_class):
            return python_type
    return None


@dataclass
class _Model:
    """A Django model as the adapter sees it: concrete fields, codecs, unique lookups."""

    cls: type[models.Model]
    attnames: list[str]
    codecs: list[Codec]
    lookups: list[Field]
    aliases: dict[str, str]  # "pk" and foreign-key names -> attname
    fingerprint: str

    @classmethod
    def of(cls, model: Any) -> _Model:
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise ConfigurationError(f"{model!r} is not a Django model")
        meta: Any = getattr(model, "_meta")  # noqa: B009 - Django is untyped here
        if meta.proxy:
            raise ConfigurationError(
                f"{meta.label} is a proxy model: cache its concrete model "
                f"{meta.concrete_model._meta.label} instead"
            )
        if meta.parents:
            raise ConfigurationError(
                f"{meta.label} uses multi-table inheritance, which cachecow does not cache"
            )
        fields = list(meta.concrete_fields)
        attnames = [f.attname for f in fields]
        aliases = {"pk": meta.pk.attname}
        for f in fields:
            aliases[f.name] = f.attname
            aliases[f.attname] = f.attname
        lookups: list[Field] = []

        def add(names: Sequence[str]) -> None:
            attrs = tuple(aliases[n] for n in names)
            lookup, _ = normalize_lookup(attrs, (None,) * len(attrs))
            if lookup not in lookups:
                lookups.append(lookup)

        add([meta.pk.name])
        for f in fields:
            if f.unique:
                add([f.name])
        for together in meta.unique_together:
            add(list(together))
        for constraint in meta.constraints:
            if (
                isinstance(constraint, models.UniqueConstraint)
                and constraint.fields
                and constraint.condition is None
                and not constraint.expressions
            ):
                add(list(constraint.fields))
        shape = repr([meta.db_table] + [(f.attname, f.get_internal_type()) for f in fields])
        return cls(
            cls=model,
            attnames=attnames,
            codecs=[codec_for(_python_type(f), f.attname) for f in fields],
            lookups=lookups,
            aliases=aliases,
            fingerprint=hashlib.sha1(shape.encode()).hexdigest()[:12],
        )

    def value_of(self, obj: Any, lookup: Field) -> Any:
        if isinstance(lookup, tuple):
            return tuple(getattr(obj, key) for key in lookup)
        return getattr(obj, lookup)

    def describe(self) -> str:
        return describe(self.lookups)

    def lookup_from_kwargs(self, kwargs: dict[str, Any]) -> tuple[Field, Any] | None:
        """The canonical unique lookup that ``get(**kwargs)`` asks for, or None if it is not one."""
        if not kwargs:
            return None
        attrs: dict[str, Any] = {}
        for name, value in kwargs.items():
            attname = self.aliases.get(name)
            if attname is None:
                return None  # a related lookup, a transform, an unknown name
            if isinstance(value, models.Model):
                if attname == name:
                    return None  # an instance given for a plain field
                value = value.pk
            elif attname != name and value is not None and not _plain_value(value):
                return None
            if attname in attrs:
                return None
            attrs[attname] = value
        names = tuple(attrs)
        field, value = normalize_lookup(names, tuple(attrs[n] for n in names))
        if field not in self.lookups or _has_null(value):
            return None
        return field, value


def _plain_value(value: Any) -> bool:
    return isinstance(value, (int, str, uuid.UUID))


# -- the cache ----------------------------------------------------------------------------------


_dirty = threading.local()  # per thread: {alias: (outermost atomic block, models it wrote)}


def _outermost_block(alias: str) -> Any:
    blocks = getattr(connections[alias], "atomic_blocks", None)
    return blocks[0] if blocks else None


def _written(alias: str) -> set[type]:
    """The models the current transaction on ``alias`` wrote (empty outside a transaction)."""
    per_alias: dict[str, tuple[Any, set[type]]] = getattr(_dirty, "models", None) or {}
    _dirty.models = per_alias
    if not connections[alias].in_atomic_block:
        per_alias.pop(alias, None)
        return set()
    block = _outermost_block(alias)
    entry = per_alias.get(alias)
    if entry is None or entry[0] is not block:  # another transaction than the one recorded
        entry = per_alias[alias] = (block, set())
    return entry[1]


def _mark_written(alias: str, model: type) -> None:
    if connections[alias].in_atomic_block:
        written = _written(alias)
        if not written:
            # Forget it when this transaction commits: a decorated function's calls reuse one
            # Atomic object, so the block's identity alone cannot tell its transactions apart.
            transaction.on_commit(written.clear, using=alias)
        written.add(model)


class DjangoCache(CacheCow):
    """A :class:`~cachecow.CacheCow` of Django model instances.

    :param redis: a redis-py client.
    :param using: the database alias to read from (default: the router's read database).
    :param options: the options of :class:`~cachecow.CacheCow`.
    """

    def __init__(self, redis: Any, *, using: str | None = None, **options: Any) -> None:
        super().__init__(redis, **options)
        self.using = using
        self._models: dict[type, _Model] = {}
        self._watched: set[type] = set()
        self._receivers: list[tuple[Any, Any, str]] = []
        self._stash = f"_cachecow_old_{id(self)}"  # one per cache: two may watch a model

    def model_info(self, model: Any) -> _Model:
        info = self._models.get(model)
        if info is None:
            info = self._models[model] = _Model.of(model)
        return info

    def db_for(self, model: Any) -> str:
        return self.using or router.db_for_read(model) or "default"

    # -- hooks ----------------------------------------------------------------------------------

    def check_lookup(self, cls: Any, id_field: Field) -> None:
        info = self.model_info(cls)
        if id_field not in info.lookups:
            hint = " (attribute names: 'org_id', not 'org')"
            raise refuse(cls._meta.label, id_field, info.lookups, hint)

    def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        try:
            return cls._base_manager.using(self.db_for(cls)).get(**_kwargs(id_field, id_val))
        except cls.DoesNotExist:
            raise NotFound(cls, id_field, id_val) from None

    def fetch_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> dict[Any, Any]:
        info = self.model_info(cls)
        manager = cls._base_manager.using(self.db_for(cls))
        if isinstance(id_field, str):
            objs = manager.filter(**{f"{id_field}__in": list(id_vals)})
        else:
            query = models.Q()
            for value in id_vals:
                query |= models.Q(**_kwargs(id_field, value))
            objs = manager.filter(query)
        return {info.value_of(obj, id_field): obj for obj in objs}

    def coerce_lookup(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        meta = cls._meta

        def convert(name: str, value: Any) -> Any:
            try:
                return meta.get_field(name).to_python(value)
            except Exception:
                return value

        return coerce(id_field, id_val, convert)

    def not_found(self, cls: Any, id_field: Field, id_val: Any) -> BaseException:
        shown = _kwargs(id_field, id_val)
        exc: BaseException = cls.DoesNotExist(
            f"{cls._meta.object_name} matching {shown} does not exist"
        )
        return exc

    def unique_lookups(self, obj: Any) -> Iterable[tuple[Field, Any]]:
        info = self.model_info(type(obj))
        values = ((lookup, info.value_of(obj, lookup)) for lookup in info.lookups)
        return [(lookup, value) for lookup, value in values if not _has_null(value)]

    def serialize(self, obj: Any) -> bytes:
        info = self.model_info(type(obj))
        row: list[Any] = [info.fingerprint]
        for attname, codec in zip(info.attnames, info.codecs, strict=True):
            value = getattr(obj, attname)
            row.append(None if value is None else codec.encode(value))
        return self.serializer.dumps(row)

    def deserialize(self, cls: Any, data: bytes) -> Any:
        info = self.model_info(cls)
        row = self.serializer.loads(data)
        if not isinstance(row, list) or len(row) != len(info.attnames) + 1:
            raise ValueError("not a row of this model")
        if row[0] != info.fingerprint:
            raise ValueError("cached under another schema of this model")
        values = [
            None if v is None else codec.decode(v)
            for codec, v in zip(info.codecs, row[1:], strict=True)
        ]
        return cls.from_db(self.db_for(cls), info.attnames, values)

    # -- reads that respect transactions --------------------------------------------------------

    def get(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        """The object of a unique lookup; inside an atomic block, nothing is cached (see the
        module docstring)."""
        alias = self.db_for(cls)
        if connections[alias].in_atomic_block:
            field, value = self._normalize(cls, id_field, id_val)
            if cls not in _written(alias):
                cached = self.peek(cls, field, value)
                if cached is not None:
                    return cached
            try:
                return cls._base_manager.using(alias).get(**_kwargs(field, value))
            except cls.DoesNotExist:
                raise self.not_found(cls, field, value) from None
        return super().get(cls, id_field, id_val)

    def get_many(self, cls: Any, id_field: Any, id_vals: Iterable[Any]) -> list[Any]:
        alias = self.db_for(cls)
        if connections[alias].in_atomic_block:
            field, values = self._normalize_many(cls, id_field, id_vals)
            found = self.fetch_many(cls, field, values)  # in the block's own transaction
            return [found.get(value) for value in values]
        return super().get_many(cls, id_field, id_vals)

    # -- invalidation ---------------------------------------------------------------------------

    def watch(self, model: Any) -> None:
        """Invalidate ``model``'s lookups on save and delete, after commit."""
        self.model_info(model)
        if model in self._watched:
            return
        self._watched.add(model)
        uid = f"cachecow-{id(self)}-{model._meta.label}"
        for signal, receiver in [
            (signals.pre_save, self._before_write),
            (signals.pre_delete, self._before_write),
            (signals.post_save, self._after_write),
            (signals.post_delete, self._after_write),
        ]:
            signal.connect(receiver, sender=model, weak=False, dispatch_uid=uid)
            self._receivers.append((signal, model, uid))

    def unwatch(self) -> None:
        """Stop invalidating on saves and deletes (disconnect every signal receiver)."""
        for signal, model, uid in self._receivers:
            signal.disconnect(sender=model, dispatch_uid=uid)
        self._receivers.clear()
        self._watched.clear()

    def queue(self, lookups: list[Lookup], using: str) -> None:
        """Invalidate ``lookups`` after the current transaction on ``using`` commits (at once
        outside one); dropped if it rolls back."""
        if not lookups:
            return
        for model in {lk[0] for lk in lookups}:
            _mark_written(using, model)
        unique = list(dict.fromkeys(lookups))
        transaction.on_commit(lambda: self.invalidate_lookups(unique), using=using)

    def lookups_of(self, obj: Any, values: dict[str, Any] | None = None) -> list[Lookup]:
        info = self.model_info(type(obj))
        out: list[Lookup] = []
        for lookup in info.lookups:
            keys = lookup if isinstance(lookup, tuple) else (lookup,)
            if values is not None and not all(k in values for k in keys):
                continue
            got = [values[k] if values is not None else getattr(obj, k) for k in keys]
            value = tuple(got) if isinstance(lookup, tuple) else got[0]
            if not _has_null(value):
                out.append((info.cls, lookup, value))
        return out

    def _stored(self, sender: Any, instance: Any, using: str) -> dict[str, Any] | None:
        """The unique fields of ``instance``'s row as the database holds them now (one SELECT):
        what its entries are cached under, whatever this instance remembers or was told."""
        if instance.pk is None:
            return None
        info = self.model_info(sender)
        keys = list(dict.fromkeys(k for lookup in info.lookups for k in _keys(lookup)))
        row: dict[str, Any] | None = (
            sender._base_manager.using(using).filter(pk=instance.pk).values(*keys).first()
        )
        return row

    def _before_write(self, sender: Any, instance: Any, **kwargs: Any) -> None:
        """pre_save and pre_delete: remember what the row holds before the write."""
        using = kwargs.get("using") or instance._state.db or "default"
        instance.__dict__[self._stash] = self._stored(sender, instance, using)

    def _after_write(
        self, sender: Any, instance: Any, using: str = "default", **kwargs: Any
    ) -> None:
        """post_save and post_delete: queue the old and the new values' invalidation."""
        old = instance.__dict__.pop(self._stash, None)
        lookups = self.lookups_of(instance)
        if old:
            lookups += self.lookups_of(instance, old)
        self.queue(lookups, using)


# -- the default cache, from settings -----------------------------------------------------------

_default: DjangoCache | None = None
_default_lock = threading.Lock()


def default_cache() -> DjangoCache:
    """The cache ``settings.CACHECOW`` describes (built once, on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = _from_settings()
        return _default


def set_default_cache(cache: DjangoCache | None) -> None:
    """Replace the default cache (tests, or a cache built by hand); ``None`` rebuilds it."""
    global _default
    with _default_lock:
        previous, _default = _default, cache
    if previous is not None and previous is not cache:
        previous.unwatch()
    if cache is not None:
        for model in _managed_models:
            cache.watch(model)
        for label in _settings().get("MODELS", ()):
            cache.watch(apps.get_model(label))


def _settings() -> dict[str, Any]:
    conf = getattr(settings, "CACHECOW", {})
    if not isinstance(conf, dict):
        raise ImproperlyConfigured("settings.CACHECOW must be a dict")
    return conf


def _from_settings() -> DjangoCache:
    conf = _settings()
    unknown = set(conf) - {"REDIS_URL", "CONNECTION", "TIMEOUT", "OPTIONS", "MODELS", "USING"}
    if unknown:
        raise ImproperlyConfigured(f"unknown CACHECOW settings: {', '.join(sorted(unknown))}")
    client: Any = conf.get("CONNECTION")
    if isinstance(client, str):
        client = import_string(client)
    if callable(client) and not hasattr(client, "execute_command"):
        client = client()
    if client is None:
        url = conf.get("REDIS_URL")
        if not url:
            raise ImproperlyConfigured("settings.CACHECOW needs REDIS_URL or CONNECTION")
        client = cachecow.connect(url, timeout=conf.get("TIMEOUT", 0.5))
    try:
        cache = DjangoCache(client, using=conf.get("USING"), **conf.get("OPTIONS", {}))
    except (TypeError, ConfigurationError) as exc:
        raise ImproperlyConfigured(f"settings.CACHECOW: {exc}") from exc
    for model in _managed_models:
        cache.watch(model)
    for label in conf.get("MODELS", ()):
        cache.watch(apps.get_model(label))
    return cache


_managed_models: list[type] = []


# -- queryset and manager -----------------------------------------------------------------------


class CachedQuerySet(models.QuerySet[Any]):  # type: ignore[misc]
    """A queryset whose ``get()`` of one unique lookup is served from the cache, and whose
    bulk writes invalidate every row they touch."""

    def _cache(self) -> DjangoCache:
        return default_cache()

    def _plain(self) -> bool:
        query = self.query
        return (
            self._result_cache is None
            and not query.where
            and not query.annotations
            and not query.select_related
            and not self._prefetch_related_lookups
            and query.deferred_loading == (frozenset(), True)
            and not query.distinct
            and not query.extra
            and not query.values_select
            and self._iterable_class is models.query.ModelIterable
            and (self._db is None or self._db == self._cache().db_for(self.model))
        )

    def get(self, *args: Any, **kwargs: Any) -> Any:
        if not args and self._plain():
            cache = self._cache()
            lookup = cache.model_info(self.model).lookup_from_kwargs(kwargs)
            if lookup is not None:
                return cache.get(self.model, *lookup)
        return super().get(*args, **kwargs)

    def _affected(self, cache: DjangoCache, pks: list[Any] | None = None) -> list[dict[str, Any]]:
        info = cache.model_info(self.model)
        keys = list(dict.fromkeys(k for lookup in info.lookups for k in _keys(lookup)))
        qs = models.QuerySet(self.model, using=self.db).filter(pk__in=pks) if pks else self
        return list(qs.values(*keys))

    def update(self, **kwargs: Any) -> int:
        cache = self._cache()
        info = cache.model_info(self.model)
        before = self._affected(cache)
        count = int(super().update(**kwargs))
        pk = info.aliases["pk"]
        after = self._affected(cache, [row[pk] for row in before]) if before else []
        # And any row that matches only now: changed by another transaction after the
        # pre-select, then updated too.
        after += self._affected(cache)
        lookups = [lk for row in before + after for lk in cache.lookups_of(self.model(), row)]
        cache.queue(lookups, self.db)
        return count

    update.alters_data = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        created = list(super().bulk_create(objs, *args, **kwargs))
        cache = self._cache()
        cache.queue([lk for obj in created for lk in cache.lookups_of(obj)], self.db)
        return created

    def bulk_update(
        self, objs: Iterable[Any], fields: Sequence[str], *args: Any, **kwargs: Any
    ) -> int:
        objs = list(objs)
        cache = self._cache()
        before = self._affected(cache, [obj.pk for obj in objs]) if objs else []
        count = int(super().bulk_update(objs, fields, *args, **kwargs))
        lookups = [lk for row in before for lk in cache.lookups_of(self.model(), row)]
        lookups += [lk for obj in objs for lk in cache.lookups_of(obj)]
        cache.queue(lookups, self.db)
        return count


class CachedManager(models.Manager.from_queryset(CachedQuerySet)):  # type: ignore[misc]
    """A manager whose ``get()`` of one unique lookup is served from cachecow (see the module
    docstring). Its model is watched: saves and deletes invalidate after commit."""

    def contribute_to_class(self, cls: Any, name: str) -> None:
        super().contribute_to_class(cls, name)
        if not cls._meta.abstract and cls not in _managed_models:
            _managed_models.append(cls)
            if _default is not None:
                _default.watch(cls)


class CachecowConfig(AppConfig):  # type: ignore[misc]
    """``INSTALLED_APPS = [..., "cachecow.adapters.django.CachecowConfig"]``."""

    name = "cachecow.adapters.django"
    label = "cachecow"
    verbose_name = "cachecow"

    def ready(self) -> None:
        conf = _settings()
        for label in conf.get("MODELS", ()):
            try:
                apps.get_model(label)
            except LookupError as exc:
                raise ImproperlyConfigured(f"CACHECOW['MODELS']: {exc}") from exc
        # Watch now (signals must be connected before the first write), building the default
        # cache: a misconfiguration shows at start-up, not at the first request.
        if conf:
            default_cache()
