"""Django adapter: cached unique-key gets as a Django app, invalidated on commit.

Settings (all optional but the connection)::

    INSTALLED_APPS = [..., "cachecow.adapters.django.CachecowConfig"]
    CACHECOW = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",  # or "CONNECTION": a client or a callable
        "TIMEOUT": 0.5,                           # socket timeout of the client built from the URL
        "OPTIONS": {"ttl": 3600, "busy": "wait", "fail_open": True},  # CacheCow's options
        "TTLS": {"shop.Product": 60},             # per model: seconds its rows stay cached
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
False, ``_state.db`` is set). ``select_for_update()``, ``union()``, sliced querysets, proxy
models and multi-table children are left to Django, as without the cache.

**Invalidation comes from the database.** Each watched model's table (those with a
``CachedManager`` and those in ``MODELS``) gets triggers that record the old and the new values
of every unique lookup in the ``cachecow_outbox`` table, in the writer's transaction, whatever
wrote: ``save()``, ``update()``, bulk writes, the deletion collector's ``SET_NULL`` updates,
``F()`` expressions, proxies, inherited tables, raw SQL, another service. ``migrate`` installs
them (``INSTALL_ON_MIGRATE``, on by default); :class:`InstallTriggers` does it in a migration of
your own, and ``manage.py cachecow_triggers`` prints their SQL, installs them (``--install``) or
writes that migration (``--migration APP``). ``manage.py check --database default`` warns of a
table without its triggers, and such a model is never fetched into the cache.

After each commit that wrote a watched table through Django, the outbox is drained on a
connection of cachecow's own: the write's invalidations have reached Redis when the commit
returns, and neither a signal nor an extra query runs in the application's transaction (fast
deletes work). A relay thread (``RELAY``) or ``manage.py cachecow_relay`` delivers what no
commit drained; a Redis failure never fails a write (the rows wait, logged once per outage).

**Transactions.** Inside an atomic block nothing is cached: a hit is served, a miss reads the
database in the block's own transaction and caches nothing; once the block wrote a model, reads
of that model skip the cache, so they see the transaction's own writes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, overload

from cachecow._lookups import normalized, normalized_many

try:
    from django.apps import AppConfig, apps
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections, models, router, transaction
    from django.db.backends.signals import connection_created
    from django.db.models import signals
    from django.utils.module_loading import import_string
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cachecow.adapters.django needs Django 4.2 or newer: pip install 'cachecow-orm[django]'"
    ) from exc

import cachecow
from cachecow import CacheCow, CacheOptions, ConfigurationError, NotFound
from cachecow.keys import Field, model_label, normalize_lookup

from .. import _outbox
from .._base import (
    DefaultCache,
    Lookup,
    ModelCache,
    ModelInfo,
    filter_in,
    has_null,
    kwargs_of,
    to_python,
)
from .._codecs import Codec, codec_for
from . import _triggers
from ._triggers import (
    InstallTriggers,
    execute_wrapper,
    flush_pending,
    install_triggers,
    raw_connection,
    triggers_installed,
    watched_table,
)

logger = logging.getLogger("cachecow")
T = TypeVar("T")
# Covariant and bound to Model as django-stubs' Manager[_T]: its mypy plugin types a manager
# made in a model's body as Manager[Self], which CachedManager[Person] must accept.
ModelT = TypeVar("ModelT", bound=models.Model, covariant=True)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11 on

__all__ = [
    "CachecowConfig",
    "CachedManager",
    "CachedQuerySet",
    "DjangoCache",
    "InstallTriggers",
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
    field = _triggers.target_of(field)  # a foreign key: the type of the field it points to
    for field_class, python_type in _PYTHON_TYPES:
        if isinstance(field, field_class):
            return python_type
    return None


@dataclass(kw_only=True)
class _Model(ModelInfo):
    """A Django model as the adapter sees it: concrete fields (attrs: attnames), codecs,
    unique lookups."""

    aliases: dict[str, str]  # "pk" and foreign-key names -> attname
    related: dict[str, type] = field(default_factory=dict)  # foreign-key attname -> model

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
        aliases = _aliases(meta)
        lookups = cls.lookups_of(model)
        shape = repr([meta.db_table] + [(f.attname, f.get_internal_type()) for f in fields])
        return cls(
            cls=model,
            label=meta.label,
            attrs=attnames,
            codecs=[_codec(f) for f in fields],
            lookups=lookups,
            aliases=aliases,
            fingerprint=hashlib.sha1(shape.encode()).hexdigest()[:12],
            related={f.attname: f.related_model for f in fields if f.is_relation},
        )

    @staticmethod
    def lookups_of(model: Any) -> list[Field]:
        """The unique lookups the cache serves of a model (a historical one in migrations
        too), by attname: those its triggers can carry. A lookup on a column they cannot
        (JSON, files, custom types) is not served: its gets go to the database."""
        return [lk for lk in _Model.declared_lookups(model) if _carried(model, lk)]

    @staticmethod
    def declared_lookups(model: Any) -> list[Field]:
        """Every unique lookup a model declares, by attname, canonical."""
        meta = model._meta
        aliases = _aliases(meta)
        lookups: list[Field] = []

        def add(names: Sequence[str]) -> None:
            attrs = tuple(aliases[n] for n in names)
            lookup, _ = normalize_lookup(attrs, (None,) * len(attrs))
            if lookup not in lookups:
                lookups.append(lookup)

        add([meta.pk.name])
        for f in meta.concrete_fields:
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
        return lookups

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
                related = self.related.get(attname)
                if attname == name or related is None or not isinstance(value, related):
                    return None  # an instance of another model: Django says what is wrong
                instance: Any = value
                value = instance.pk
            elif attname != name and value is not None and not _plain_value(value):
                return None
            if attname in attrs:
                return None
            attrs[attname] = value
        names = tuple(attrs)
        field, value = normalize_lookup(names, tuple(attrs[n] for n in names))
        if field not in self.lookups or has_null(value):
            return None
        return field, value


def _carried(model: Any, lookup: Field) -> bool:
    by_attname = {f.attname: f for f in model._meta.concrete_fields}
    try:
        for name in lookup if isinstance(lookup, tuple) else (lookup,):
            _triggers.kind(by_attname[name], name)
    except ConfigurationError:
        return False
    return True


def _codec(field: Any) -> Codec:
    if isinstance(field, models.FileField):  # a FieldFile: its name, as the column holds it
        return Codec(lambda value: value.name, lambda value: value)
    return codec_for(_python_type(field), field.attname)


def _rows(model: Any, alias: str) -> Any:
    """Every row of ``model`` on ``alias``: a plain queryset, as the base manager gives, but
    never through a cached manager (``Meta.base_manager_name`` may name one)."""
    return models.QuerySet(model=model, using=alias)


def _aliases(meta: Any) -> dict[str, str]:
    """``pk``, field names and attnames, each to its attname."""
    aliases = {"pk": meta.pk.attname}
    for f in meta.concrete_fields:
        aliases[f.name] = f.attname
        aliases[f.attname] = f.attname
    return aliases


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


class DjangoCache(ModelCache[_Model], CacheCow):
    """A :class:`~cachecow.CacheCow` of Django model instances.

    :param redis: a redis-py client.
    :param using: the database alias to read from (default: the router's read database).
    :param relay: start a relay thread (:meth:`relay`) on a database the first time a model is
        fetched from it (settings: ``RELAY``, on by default).
    :param options: the options of :class:`~cachecow.CacheCow`.
    """

    def __init__(
        self,
        redis: Any,
        *,
        using: str | None = None,
        relay: bool = False,
        **options: Unpack[CacheOptions],
    ) -> None:
        super().__init__(redis, **options)
        self.using = using
        self._models: dict[Any, _Model] = {}
        self._watched: set[Any] = set()
        self._installed: set[tuple[type, str]] = set()
        self._drainers: dict[str, _outbox.Drainer] = {}
        self._relays: dict[str, _outbox.Relay] = {}
        self._drain_callbacks: dict[str, Callable[[], None]] = {}
        self._relay_on_use = relay

    def _drain_callback(self, alias: str) -> Callable[[], None]:
        """One callable per database (``queue_once`` tells a queued drain by identity)."""
        callback = self._drain_callbacks.get(alias)
        if callback is None:
            drainer = self._drainer(alias)

            def after_commit() -> None:
                # On PostgreSQL with psycopg 3 the connection's own writes were announced to
                # it (see _announce): deliver those with no database round trip. Nothing
                # announced (another database, a setting a pooler reset): drain the outbox.
                raw = connections[alias].connection
                announced = _outbox.Announcements.of(raw)
                try:
                    if (
                        announced is not None
                        and _outbox.idle(raw)
                        and drainer.deliver_announced(announced)
                    ):
                        return
                except Exception as exc:  # never fail the application's commit hooks
                    logger.warning("delivering announced outbox rows failed: %r", exc)
                drainer.after_commit()  # (it too leaves the rows to the relay while Redis fails)

            callback = self._drain_callbacks[alias] = after_commit
        return callback

    def inspect_model(self, cls: Any) -> _Model:
        return _Model.of(cls)

    def db_for(self, model: Any) -> str:
        return self.using or router.db_for_read(model) or "default"

    # -- hooks ----------------------------------------------------------------------------------

    lookup_hint = " (attribute names: 'org_id', not 'org')"

    def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        alias = self.db_for(cls)
        self._check_installed(cls, alias)
        try:
            return _rows(cls, alias).get(**kwargs_of(id_field, id_val))
        except cls.DoesNotExist:
            raise NotFound(cls, id_field, id_val) from None

    def select_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> Any:
        alias = self.db_for(cls)
        self._check_installed(cls, alias)
        return filter_in(_rows(cls, alias), models.Q, id_field, id_vals)

    def coerce_value(self, info: _Model, name: str, value: Any) -> Any:
        return to_python(info.cls._meta.get_field, name, value)

    def not_found(self, cls: Any, id_field: Field, id_val: Any) -> BaseException:
        exc: BaseException = cls.DoesNotExist(
            f"{cls._meta.object_name} matching query does not exist."  # Django's own words
        )
        return exc

    def serialize(self, obj: Any) -> bytes:
        info = self.model_info(type(obj))
        return self.serializer.dumps(info.encode_row(getattr(obj, a) for a in info.attrs))

    def deserialize(self, cls: Any, data: bytes) -> Any:
        info = self.model_info(cls)
        values = info.decode_row(self.serializer.loads(data))
        return cls.from_db(self.db_for(cls), info.attrs, values)

    # -- reads that respect transactions --------------------------------------------------------

    @overload
    def get(self, cls: type[T], id_field: Any, id_val: Any, *, ttl: float | None = ...) -> T: ...

    @overload
    def get(self, cls: Any, id_field: Any, id_val: Any, *, ttl: float | None = ...) -> Any: ...

    def get(self, cls: Any, id_field: Any, id_val: Any, *, ttl: float | None = None) -> Any:
        """The object of a unique lookup; inside an atomic block, nothing is cached (see the
        module docstring)."""
        self._checked_ttl(ttl)
        alias = self.db_for(cls)
        flush_pending(alias)
        if connections[alias].in_atomic_block:
            field, value = normalized(self, cls, id_field, id_val)
            if cls not in _written(alias):
                cached = self.peek(cls, field, value)
                if cached is not None:
                    return cached
            try:
                return _rows(cls, alias).get(**kwargs_of(field, value))
            except cls.DoesNotExist:
                raise self.not_found(cls, field, value) from None
        return super().get(cls, id_field, id_val, ttl=ttl)

    @overload
    def get_many(
        self, cls: type[T], id_field: Any, id_vals: Iterable[Any], *, ttl: float | None = ...
    ) -> list[T | None]: ...

    @overload
    def get_many(
        self, cls: Any, id_field: Any, id_vals: Iterable[Any], *, ttl: float | None = ...
    ) -> list[Any]: ...

    def get_many(
        self, cls: Any, id_field: Any, id_vals: Iterable[Any], *, ttl: float | None = None
    ) -> list[Any]:
        self._checked_ttl(ttl)
        alias = self.db_for(cls)
        flush_pending(alias)
        if connections[alias].in_atomic_block:
            field, values = normalized_many(self, cls, id_field, id_vals)
            found = self.fetch_many(cls, field, values)  # in the block's own transaction
            return [found.get(value) for value in values]
        return super().get_many(cls, id_field, id_vals, ttl=ttl)

    # -- invalidation: triggers, an outbox, drains --------------------------------------------

    def watch(self, model: Any) -> None:
        """Invalidate ``model``'s lookups after every committed write of its table: its
        triggers record them (see :class:`InstallTriggers`), the commit drains them."""
        self.model_info(model)
        self._watched.add(model)
        _watching.add(self)

    def unwatch(self) -> None:
        """Forget every watched model (their writes are then drained by a relay only)."""
        self._watched.clear()
        _watching.discard(self)

    def watched_tables(self) -> list[_outbox.Watched]:
        """The trigger's view of each watched model."""
        return [self._table(model) for model in self._watched]

    def _table(self, model: Any) -> _outbox.Watched:
        return watched_table(model, self.model_info(model).lookups, self.model_label(model))

    def _check_installed(self, cls: Any, alias: str) -> None:
        """Refuse, once per model and database, to cache a table whose writes no trigger
        records."""
        if (cls, alias) in self._installed:
            return
        if not _app_ready:
            raise ImproperlyConfigured(
                f"{cls._meta.label} is read into cachecow, but cachecow.adapters.django."
                "CachecowConfig is not in INSTALLED_APPS: no commit would drain its writes' "
                "invalidations, so the cache would serve stale rows; add it to INSTALLED_APPS"
            )
        table = self._table(cls)
        with raw_connection(alias) as run:  # not on the app's connection: not in its counts
            installed = _outbox.installed(connections[alias].vendor, run, table)
        if not installed:
            raise ConfigurationError(
                f"{cls._meta.label}: table {table.table!r} on database {alias!r} has no "
                "up-to-date cachecow triggers, so its writes would not invalidate the cache: "
                f"run manage.py migrate (or manage.py cachecow_triggers --install "
                f"--database {alias})"
            )
        self._installed.add((cls, alias))
        if self._relay_on_use and not _in_memory(alias):
            self.relay(alias)

    def queue(self, lookups: list[Lookup], using: str) -> None:
        """Invalidate ``lookups`` after the current transaction on ``using`` commits (at once
        outside one); dropped if it rolls back."""
        if not lookups:
            return
        for model in {lk[0] for lk in lookups}:
            _mark_written(using, model)
        unique = list(dict.fromkeys(lookups))
        transaction.on_commit(lambda: self.invalidate_lookups(unique), using=using)

    def _drainer(self, alias: str) -> _outbox.Drainer:
        drainer = self._drainers.get(alias)
        if drainer is None:
            dialect = connections[alias].vendor
            drainer = self._drainers[alias] = _outbox.Drainer(
                dialect, lambda: raw_connection(alias), self._deliver
            )
        return drainer

    def _deliver(self, lookups: list[_outbox.Lookup]) -> None:
        # Every cache of this process that watches a model gets the row (two caches with
        # different prefixes over one database, say); the rows stay if any of them fails.
        for cache in [self, *(c for c in list(_watching) if c is not self)]:
            cache._invalidate_pairs(_outbox.keys_of(cache, lookups))

    def drain(self, using: str | None = None) -> int:
        """Deliver every row waiting in the outbox of database ``using`` now; return how
        many. Raises if Redis cannot be reached."""
        drainer = self._drainer(using or "default")
        return drainer.drain(skip_locked=drainer.dialect == "mysql")

    def relay(self, using: str | None = None, *, interval: float = 0.2) -> _outbox.Relay:
        """Start (once) a thread that delivers what no commit's drain delivered on database
        ``using``: writes made outside Django, a process that died after its commit, commits
        made while Redis was down (LISTEN/NOTIFY on PostgreSQL, polling elsewhere)."""
        alias = using or "default"
        if _in_memory(alias):
            raise ConfigurationError(
                f"database {alias!r} is SQLite in memory: no one outside this process can write "
                "it, and a relay's connection would lock its tables under the application's "
                "(shared cache locks fail at once, whatever the busy timeout); the commits "
                "deliver its writes"
            )
        relay = self._relays.get(alias)
        if relay is None or not relay.running:
            drainer = self._drainer(alias)
            listener = _listener(alias)
            relay = _outbox.Relay(drainer, interval=interval, listener=listener)
            self._relays[alias] = relay.start()
        return relay

    def close_relays(self) -> None:
        """Stop every relay thread this cache started."""
        for relay in self._relays.values():
            relay.stop()
        self._relays.clear()


_watching: weakref.WeakSet[DjangoCache] = weakref.WeakSet()


def _in_memory(alias: str) -> bool:
    """Whether database ``alias`` is SQLite in memory (Django's test databases on SQLite)."""
    connection = connections[alias]
    return bool(connection.vendor == "sqlite" and connection.is_in_memory_db())


def _listener(alias: str) -> _outbox.Listener | None:
    """LISTEN for the relay on PostgreSQL with psycopg 3 (psycopg2 has no waiting notifies:
    the relay polls)."""
    connection = connections[alias]
    if connection.vendor != "postgresql" or connection.Database.__name__ != "psycopg":
        return None
    return _outbox.PgListener(
        lambda: connection.get_new_connection(connection.get_connection_params())
    )


def _on_write(alias: str, table: str) -> Callable[[], None] | None:
    """A statement wrote ``table`` on ``alias``: reads of its models skip the cache for the
    rest of the transaction; returns the drain to run after the commit."""
    _watch_late()
    cache = _default.cache
    if cache is None:
        return None  # no cache in this process: the relay delivers
    written = [m for m in cache._watched if m._meta.db_table == table]
    if not written:
        return None
    _announce(connections[alias])  # for its next writes, if it is outside a transaction
    for model in written:
        _mark_written(alias, model)
    return cache._drain_callback(alias)


# -- the default cache, from settings -----------------------------------------------------------


def default_cache() -> DjangoCache:
    """The cache ``settings.CACHECOW`` describes (built once, on first use)."""
    return _default.get()


def set_default_cache(cache: DjangoCache | None) -> None:
    """Replace the default cache (tests, or a cache built by hand); ``None`` rebuilds it."""
    _default.set(cache)
    if cache is not None:
        for model in watched_models():
            cache.watch(model)


def _settings() -> dict[str, Any]:
    conf = getattr(settings, "CACHECOW", {})
    if not isinstance(conf, dict):
        raise ImproperlyConfigured("settings.CACHECOW must be a dict")
    return conf


def _from_settings() -> DjangoCache:
    conf = _settings()
    known = {"REDIS_URL", "CONNECTION", "TIMEOUT", "OPTIONS", "TTLS", "MODELS", "USING", "RELAY"}
    unknown = set(conf) - known - {"INSTALL_ON_MIGRATE"}
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
        ttls = {apps.get_model(label): seconds for label, seconds in conf.get("TTLS", {}).items()}
    except (LookupError, ValueError, AttributeError) as exc:
        raise ImproperlyConfigured(f"CACHECOW['TTLS']: {exc}") from exc
    try:
        cache = DjangoCache(
            client,
            using=conf.get("USING"),
            relay=bool(conf.get("RELAY", True)),
            **{"ttls": ttls, **conf.get("OPTIONS", {})},
        )
    except (TypeError, ConfigurationError) as exc:
        raise ImproperlyConfigured(f"settings.CACHECOW: {exc}") from exc
    for model in watched_models():
        cache.watch(model)
    return cache


_default: DefaultCache[DjangoCache] = DefaultCache(_from_settings)


# -- queryset and manager -----------------------------------------------------------------------


class CachedQuerySet(models.QuerySet[Any]):  # type: ignore[misc]
    """A queryset whose ``get()`` of one unique lookup is served from the cache, and whose
    bulk writes invalidate every row they touch."""

    def _cache(self) -> DjangoCache:
        return default_cache()

    def _plain(self) -> bool:
        """Whether this is a plain get of the model's own rows: no lock, no filter, no slice,
        no union, and a model the cache serves (proxies and multi-table children go to the
        database, as without the cache)."""
        query = self.query
        meta = self.model._meta
        return (
            self._result_cache is None
            and not meta.proxy
            and not meta.parents
            and not query.select_for_update
            and not query.combinator
            and not query.is_sliced
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


if TYPE_CHECKING:
    # To type checkers a Manager[ModelT]: with django-stubs, every method is typed by the model
    # (filter() a QuerySet[ModelT]); without them Django is Any, and get() below is typed here.
    _Manager: TypeAlias = models.Manager
else:
    _Manager = models.Manager.from_queryset(CachedQuerySet)


# Without django-stubs (as to this project's mypy) Django is Any: so are the base and its alias.
class CachedManager(_Manager[ModelT], Generic[ModelT]):  # type: ignore[misc, type-arg]
    """A manager whose ``get()`` of one unique lookup is served from cachecow (see the module
    docstring). Its model is watched: saves and deletes invalidate after commit.

    Generic in its model for type checkers: ``cached: CachedManager[User] = CachedManager()``
    makes ``User.cached.get(...)`` a ``User``; with django-stubs and their mypy plugin, its
    other methods too (``User.cached.filter(...)`` a ``QuerySet[User]``)."""

    if TYPE_CHECKING:  # at run time, the queryset's get (as Django copies it, docstring too)

        def get(self, *args: Any, **kwargs: Any) -> ModelT: ...


_app_ready = False
"""Whether :meth:`CachecowConfig.ready` ran in this process: without it no statement is
watched for writes and no commit drains, so nothing may be cached. (Not ``apps.is_installed``
at each read: a test may override ``INSTALLED_APPS`` for a while in a process where the app is
wired.)"""


class CachecowConfig(AppConfig):  # type: ignore[misc]
    """``INSTALLED_APPS = [..., "cachecow.adapters.django.CachecowConfig"]``."""

    name = "cachecow.adapters.django"
    label = "cachecow"
    verbose_name = "cachecow"

    def ready(self) -> None:
        global _app_ready
        conf = _settings()
        for label in conf.get("MODELS", ()):
            try:
                apps.get_model(label)
            except LookupError as exc:
                raise ImproperlyConfigured(f"CACHECOW['MODELS']: {exc}") from exc
        # Every statement of every connection passes the wrapper that spots writes.
        _triggers._on_write[:] = [_on_write]
        signals.class_prepared.connect(_watch_late_model, dispatch_uid="cachecow-late-models")
        connection_created.connect(_wrap_connection, dispatch_uid="cachecow-execute-wrapper")
        for connection in connections.all(initialized_only=True):
            _wrap_connection(connection=connection)
        if conf.get("INSTALL_ON_MIGRATE", True):
            signals.post_migrate.connect(_install_on_migrate, dispatch_uid="cachecow-triggers")
        from . import checks  # noqa: F401 - registers the system check

        # Build the default cache now: a misconfiguration shows at start-up, not at the first
        # request.
        _app_ready = True  # the write paths are wired: reads may be cached
        if "REDIS_URL" in conf or "CONNECTION" in conf:
            default_cache()


def _watch_late_model(sender: Any, **kwargs: Any) -> None:
    """A model class prepared after the default cache was built (defined in a test, or
    imported late) is watched if it has a cached manager."""
    meta = sender._meta
    if _default.cache is None or meta.abstract or meta.proxy or meta.parents:
        return
    if any(isinstance(manager, CachedManager) for manager in meta.managers):
        _late.append(sender)  # watched once the app registry is ready (see _watch_late)


_late: list[Any] = []


def _watch_late() -> None:
    cache = _default.cache
    if _late and apps.models_ready and cache is not None:
        while _late:
            cache.watch(_late.pop())


def _wrap_connection(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
    if execute_wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(execute_wrapper)
    _announce(connection)


def _announce(connection: Any) -> None:
    """With a cache in this process, on PostgreSQL with psycopg 3, outside any transaction:
    set the connection up so that its writes' outbox rows are announced to it (see
    :class:`~cachecow.adapters._outbox.Announcements`), for its commits to deliver them."""
    raw = connection.connection
    if (
        _default.cache is None
        or raw is None
        or connection.vendor != "postgresql"
        or connection.Database.__name__ != "psycopg"
        or _outbox.Announcements.of(raw) is not None
        or not _outbox.idle(raw)
    ):
        return
    try:
        _outbox.announce(raw)
    except Exception as exc:  # its commits then drain the outbox
        logger.warning("setting a connection up to announce failed: %s", exc)


def watched_models() -> list[Any]:
    """The models whose tables get triggers: those with a :class:`CachedManager` and those in
    ``CACHECOW["MODELS"]`` (concrete ones: a proxy's rows are its concrete model's)."""
    found = [
        m
        for m in apps.get_models()
        if any(isinstance(manager, CachedManager) for manager in m._meta.managers)
    ]  # managers declared on abstract bases and inherited ones included
    for label in _settings().get("MODELS", ()):
        try:
            found.append(apps.get_model(label))
        except LookupError:
            pass  # its app is not installed right now (a test's available_apps)
    concrete = [m._meta.concrete_model for m in found]
    # A multi-table child is read from the database (its parent's table is watched).
    return [m for m in dict.fromkeys(concrete) if not m._meta.abstract and not m._meta.parents]


def watched_tables(models_: Iterable[Any]) -> list[_outbox.Watched]:
    label = _default.cache.model_label if _default.cache else model_label
    return [watched_table(m, _Model.lookups_of(m), label(m)) for m in models_]


def _install_on_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """post_migrate of an app: install the triggers its watched models' tables lack (or have
    out of date); a table that does not exist (yet) is left alone."""
    ours = [m for m in watched_models() if m._meta.app_config is sender]
    ours = [m for m in ours if router.allow_migrate_model(using, m)]
    if not ours:
        return
    connection = connections[using]
    existing = set(connection.introspection.table_names())
    ours = [m for m in ours if m._meta.db_table in existing]
    stale = [t for t in watched_tables(ours) if not triggers_installed(connection, t)]
    if stale:
        install_triggers(connection, stale)
