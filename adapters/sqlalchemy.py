"""SQLAlchemy 2.x adapter: cached gets by any unique key, invalidated after commit.

::

    from cachecow.adapters.sqlalchemy import SQLAlchemyCache, install

    Session = sessionmaker(engine)
    install(engine, User, Membership)         # the outbox and each table's triggers (once)
    cache = SQLAlchemyCache(cachecow.connect(), Session)
    cache.watch(Session)                      # drain after commit, and a relay thread

    user = cache.get(User, "id", 5)
    user = cache.get(User, "email", "ada@example.com")
    membership = cache.get(Membership, ("org_id", "user_id"), (1, 2))
    users = cache.get_many(User, "id", [1, 2, 3])          # one IN query for the misses

**Lookups.** Only unique lookups are served: the primary key, a unique column, a unique
constraint or a unique index (composite ones as a tuple of attribute names, in any order).
Anything else raises :class:`~cachecow.InvalidLookup` listing the model's valid lookups.

**Reads.** ``fetch`` and ``fetch_many`` read committed data in a short session of their own from
the session factory you give, never the caller's transaction, so the snapshot starts after the
lease. Only mapped column attributes are cached, never relationships.

**Objects.** A cached object comes back as a *detached* instance whose column attributes are
loaded, as if a query had loaded it in a session since closed. Attach it to a session without a
query with ``session.add(obj)`` (or ``session.merge(obj, load=False)``); its relationships then
load lazily as usual. Values round-trip exactly: datetimes (aware and naive), dates, times,
intervals, ``Decimal``, ``UUID``, bytes, enums, JSON columns and ``None``.

**Schema changes.** Every cached value carries a fingerprint of its model's columns. A value
cached under another schema (a column added, removed or retyped) is a miss, deleted and fetched
again, never an error. The fingerprint is in the value, not the key, so during a rolling deploy
old and new processes still invalidate the same keys.

**Invalidation comes from the database.** :func:`install` puts triggers on each table (insert,
update, delete; statement-level with transition tables on PostgreSQL, row triggers on SQLite and
MariaDB) that record the old and the new values of every unique lookup in the
``cachecow_outbox`` table, in the writer's own transaction, whatever made the write: the ORM,
Core, bulk statements, upserts, raw SQL, another process. :meth:`SQLAlchemyCache.watch` drains
the outbox after each commit of a session that wrote, so the write's invalidations have reached
Redis when ``commit()`` returns; its relay thread delivers the rest (writes made outside the
watched sessions, a process that died between commit and drain, commits made while Redis was
down), woken by ``NOTIFY`` on PostgreSQL with psycopg, polling elsewhere. On PostgreSQL with
psycopg 3 there is no drain: every commit on the watched engine delivers the rows its writes
announced (see :func:`_announce`). A Redis failure never fails a write: the rows wait for the
relay. The first fetch of a model whose table lacks its
triggers raises, naming the call to run. Use :func:`install_sql` in a migration (Alembic:
``op.execute``), and again after a change of a table's unique columns.

Not seen by the triggers: ``TRUNCATE``, and on MariaDB the rows a foreign key's ``ON DELETE``
or ``ON UPDATE`` action changes (InnoDB fires no triggers for them). The value TTL bounds those.
"""

from __future__ import annotations

import asyncio
import decimal
import functools
import hashlib
import logging
import math
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import sqlalchemy as sa
    from sqlalchemy import and_, event, or_, select, tuple_
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import (
        Mapper,
        ORMExecuteState,
        Session,
        make_transient_to_detached,
        sessionmaker,
        undefer,
    )
    from sqlalchemy.orm.attributes import set_committed_value
    from sqlalchemy.util import await_only, greenlet_spawn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cachecow.adapters.sqlalchemy needs SQLAlchemy 2: pip install 'cachecow-orm[sqlalchemy]'"
    ) from exc

from cachecow import (
    AsyncCacheCow,
    CacheCow,
    CacheOptions,
    ConfigurationError,
    InvalidLookup,
    NotFound,
)
from cachecow._lookups import normalized
from cachecow.keys import Field, model_label, normalize_lookup

from . import _outbox
from ._base import ModelCache, ModelInfo, has_null
from ._codecs import Codec, codec_for

T = TypeVar("T")

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11 on

__all__ = [
    "AsyncSQLAlchemyCache",
    "SQLAlchemyCache",
    "install",
    "install_on_create",
    "install_sql",
    "relay",
]

logger = logging.getLogger("cachecow")


def _codec_for(column: sa.Column[Any], name: str) -> Codec:
    return codec_for(_python_type(column), name)


# -- what the adapter knows of a mapped class ---------------------------------------------------


@dataclass(kw_only=True)
class _Model(ModelInfo):
    """A mapped class as the adapter sees it: columns (attrs: their mapped attributes, in
    column order), codecs, unique lookups, fingerprint."""

    mapper: Mapper[Any]
    columns: dict[str, sa.Column[Any]]

    @classmethod
    def of(cls, model: Any) -> _Model:
        try:
            mapper: Mapper[Any] = sa_inspect(model)
        except sa.exc.NoInspectionAvailable:
            raise ConfigurationError(f"{model!r} is not a mapped SQLAlchemy class") from None
        if not isinstance(mapper, Mapper) or mapper.class_ is not model:
            raise ConfigurationError(f"{model!r} is not a mapped SQLAlchemy class")
        if mapper.inherits is not None or mapper.polymorphic_on is not None:
            raise ConfigurationError(
                f"{model.__qualname__} uses mapper inheritance, which the SQLAlchemy adapter "
                "does not cache yet"
            )
        keys: list[str] = []
        columns: dict[str, sa.Column[Any]] = {}
        by_column: dict[Any, str] = {}
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            if len(prop.columns) != 1 or not isinstance(column, sa.Column):
                continue  # a column_property expression: not stored, not cached
            keys.append(prop.key)
            columns[prop.key] = column
            by_column[column] = prop.key
        pk_keys = tuple(by_column[c] for c in mapper.primary_key)
        primary_key, _ = normalize_lookup(pk_keys, (None,) * len(pk_keys))
        lookups: list[Field] = [primary_key]

        def add(cols: Iterable[Any]) -> None:
            names = [by_column.get(c) for c in cols]
            if not names or any(n is None for n in names):
                return  # an expression or an unmapped column: not a lookup we can serve
            lookup, _ = normalize_lookup(tuple(names), (None,) * len(names))
            if lookup not in lookups:
                lookups.append(lookup)

        table: Any = mapper.local_table
        for table_column in table.columns:
            if table_column.unique:
                add([table_column])
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                add(constraint.columns)
        for index in getattr(table, "indexes", ()):
            if index.unique:
                add(index.columns)
        shape = repr(
            [getattr(table, "fullname", str(table))]
            + [(k, columns[k].name, repr(columns[k].type)) for k in keys]
        )
        return cls(
            cls=model,
            label=model.__qualname__,
            lookups=lookups,
            attrs=keys,
            codecs=[_codec_for(columns[k], k) for k in keys],
            fingerprint=hashlib.sha1(shape.encode()).hexdigest()[:12],
            mapper=mapper,
            columns=columns,
        )


class _SQLAlchemyModels(ModelCache[_Model]):
    """What the sync and async SQLAlchemy caches share: models, codecs, lookups, watching."""

    model_label: Callable[[Any], str]  # the cache class's

    def _setup(self, session_factory: Any, *, asynchronous: bool) -> None:
        if not callable(session_factory):
            raise ConfigurationError(
                f"session_factory must make sessions (a sessionmaker), got {session_factory!r}"
            )
        makes_async = isinstance(session_factory, async_sessionmaker) or (
            isinstance(session_factory, sessionmaker)
            and issubclass(session_factory.class_, AsyncSession)
        )
        if makes_async and not asynchronous:
            raise ConfigurationError(
                f"SQLAlchemyCache reads with sync sessions, got {session_factory!r} (it makes "
                "AsyncSessions): use AsyncSQLAlchemyCache, or give a sessionmaker"
            )
        if asynchronous and isinstance(session_factory, sessionmaker) and not makes_async:
            raise ConfigurationError(
                f"AsyncSQLAlchemyCache reads with AsyncSessions, got {session_factory!r} (it "
                "makes sync Sessions): use SQLAlchemyCache, or give an async_sessionmaker"
            )
        self.session_factory = session_factory
        self._models: dict[Any, _Model] = {}
        self._installed: set[type] = set()
        self._drainers: dict[Any, _outbox.Drainer] = {}
        self._relays: dict[Any, _outbox.Relay] = {}
        self._watched_urls: set[str] = set()  # engines watch() or a relay covers; "*": any
        self._unwatched_warned: set[type] = set()

    # -- models ---------------------------------------------------------------------------------

    def inspect_model(self, cls: Any) -> _Model:
        return _Model.of(cls)

    def coerce_value(self, info: _Model, key: str, value: Any) -> Any:
        """Convert a lookup value to its column's Python type where that is unambiguous:
        ``"42"`` and ``42.0`` to ``42`` for an integer column, a string to a ``UUID`` for a
        UUID column; refuse a fraction or a bool for an integer column. A value of another
        type could match the row in the database yet be cached under a key the row's own
        invalidation never reaches (a tombstone outliving the insert of that row)."""
        if value is None:
            return value
        try:
            python_type = info.columns[key].type.python_type
        except (KeyError, NotImplementedError):
            return value
        if python_type is int:
            return value if type(value) is int else _integral(info.cls, key, value)
        if python_type is uuid.UUID and isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                return value
        return value

    # -- (de)serialization ----------------------------------------------------------------------

    def serialize(self, obj: Any) -> bytes:
        info = self.model_info(type(obj))
        state = obj.__dict__
        row = info.encode_row(state[k] if k in state else getattr(obj, k) for k in info.attrs)
        data: bytes = self.serializer.dumps(row)  # type: ignore[attr-defined]
        return data

    def deserialize(self, cls: Any, data: bytes) -> Any:
        info = self.model_info(cls)
        values = info.decode_row(self.serializer.loads(data))  # type: ignore[attr-defined]
        obj = info.mapper.class_manager.new_instance()
        for key, value in zip(info.attrs, values, strict=True):
            set_committed_value(obj, key, value)
        make_transient_to_detached(obj)
        return obj

    # -- attached results -----------------------------------------------------------------------

    def _held(self, session: Session, cls: Any, id_field: Any, id_val: Any) -> tuple[bool, Any]:
        """For :meth:`get_attached`: ``(True, obj)`` when ``session`` must answer itself (it
        wrote in this transaction, or has changes pending: the cache cannot know its uncommitted
        data), ``obj`` being the instance it already holds for a primary-key lookup, if any;
        ``(False, None)`` when the cache may answer."""
        field, value = normalized(self, cls, id_field, id_val)  # type: ignore[arg-type]
        if session.new or session.dirty or session.deleted or self._wrote_in(session):
            return True, None
        info = self.model_info(cls)
        if field == info.primary_key:
            key = info.mapper.identity_key_from_primary_key(
                tuple(value) if isinstance(value, tuple) else (value,)
            )
            held = session.identity_map.get(key)
            if held is not None:
                return True, held
        return False, None

    def _wrote_in(self, session: Session) -> bool:
        return bool(session.info.get(("cachecow", id(self), "wrote")))

    # -- queries --------------------------------------------------------------------------------

    def _select(self, cls: Any, id_field: Field, id_vals: Sequence[Any], dialect: Any) -> Any:
        info = self.model_info(cls)
        for value in id_vals:
            if has_null(value):
                raise InvalidLookup(f"a unique lookup cannot match NULL: {id_field}={value!r}")
        stmt = select(cls).options(undefer("*"))
        if isinstance(id_field, str):
            column = info.columns[id_field]
            if len(id_vals) == 1:
                return stmt.where(column == id_vals[0])
            return stmt.where(column.in_(id_vals))
        cols = [info.columns[key] for key in id_field]
        if dialect.name in _TUPLE_IN:
            return stmt.where(tuple_(*cols).in_([tuple(v) for v in id_vals]))
        return stmt.where(
            or_(*(and_(*(c == x for c, x in zip(cols, v, strict=True))) for v in id_vals))
        )

    # -- watching sessions ----------------------------------------------------------------------

    def _covers(self, bind: Any) -> None:
        """Note that ``watch()`` or a relay covers the engine of ``bind`` (any, if unknown)."""
        engine = getattr(bind, "engine", bind)
        url = getattr(engine, "url", None)
        self._watched_urls.add("*" if url is None else _url_of(url))

    def _check_watched(self, connection: Any, cls: Any) -> None:
        """Warn, once per model, of a model read through an engine that neither ``watch()``
        nor a relay of this cache covers: its writes' invalidations would reach Redis only
        if something else drains the outbox."""
        if cls in self._unwatched_warned or "*" in self._watched_urls:
            return
        url = _url_of(connection.engine.url)
        if url in self._watched_urls:
            return
        self._unwatched_warned.add(cls)
        logger.warning(
            "cachecow: %s is read into the cache through %s, which this cache does not watch: "
            "no commit drains the invalidations of its writes and no relay of this cache "
            "delivers them, so cached rows go stale. Call cache.watch(Session) on the "
            "sessionmaker that writes (or cache.relay(engine)), or run a relay elsewhere.",
            cls.__qualname__,
            url,
        )

    def _check_installed(self, connection: Any, cls: Any) -> None:
        """Refuse, once per model, to cache a table whose writes no trigger records."""
        self._check_watched(connection, cls)
        if cls in self._installed:
            return
        table = _watched(self.model_info(cls), self.model_label(cls))
        dialect = _dialect(connection.dialect)

        def run(sql: str) -> list[tuple[Any, ...]]:
            result = connection.exec_driver_sql(sql)
            return [tuple(r) for r in result.fetchall()] if result.returns_rows else []

        if not _outbox.installed(dialect, run, table):
            raise ConfigurationError(
                f"{cls.__qualname__}: table {table.table!r} has no up-to-date cachecow "
                "triggers, so its writes would not invalidate the cache: run "
                f"cachecow.adapters.sqlalchemy.install(engine, {cls.__qualname__}) (or its "
                "install_sql() in a migration)"
            )
        self._installed.add(cls)

    def _listen(self, target: Any, warm: bool) -> None:
        wrote_key = ("cachecow", id(self), "wrote")
        announced_key = ("cachecow", id(self), "announced")

        def wrote(session: Session, objs: Iterable[Any] = ()) -> None:
            found = session.info.setdefault(wrote_key, [])
            if warm:
                found.extend(objs)
            elif not found:
                found.append(None)

        def after_flush(session: Session, flush_context: Any) -> None:
            wrote(session, list(session.new) + list(session.dirty))

        def do_orm_execute(state: ORMExecuteState) -> None:
            if not state.is_select:  # a bulk or Core statement through the session
                wrote(state.session)

        def after_begin(session: Session, transaction: Any, connection: sa.Connection) -> None:
            announced = _outbox.Announcements.of(connection.connection.dbapi_connection)
            start = None if announced is None else announced.count
            session.info.setdefault(announced_key, []).append((announced, start))

        def after_soft_rollback(session: Session, previous: Any) -> None:
            if previous.parent is None:  # the outermost transaction rolled back
                session.info.pop(wrote_key, None)
                session.info.pop(announced_key, None)

        def after_commit(session: Session) -> None:
            if session.in_nested_transaction():
                return  # a savepoint released: the outermost commit drains
            changed = session.info.pop(wrote_key, None)
            drained = _delivered_by_commit(session.info.pop(announced_key, ()))
            if changed is None:
                return
            if not drained:
                bind: Any = session.get_bind()
                self._drainer(bind.engine).after_commit()
            if warm:
                self._warm([obj for obj in changed if obj is not None])

        listeners: list[tuple[str, Callable[..., Any]]] = [
            ("after_flush", after_flush),
            ("do_orm_execute", do_orm_execute),
            ("after_begin", after_begin),
            ("after_soft_rollback", after_soft_rollback),
            ("after_commit", after_commit),
        ]
        for name, fn in listeners:
            event.listen(target, name, fn)

    def _drainer(self, engine: sa.Engine) -> _outbox.Drainer:
        """The drainer of one engine's outbox (made once)."""
        drainer = self._drainers.get(engine)
        if drainer is None:
            drainer = self._drainers[engine] = _outbox.Drainer(
                _dialect(engine.dialect),
                lambda: _autocommit(engine),
                functools.partial(self._deliver, engine),
            )
        return drainer

    def relay(self, engine: sa.Engine, *, interval: float = 0.2) -> _outbox.Relay:
        """Start a relay thread on ``engine``'s outbox (see :func:`relay`), sharing this
        cache's drainer; ``watch(..., relay=True)`` starts one for its engine."""
        self._covers(engine)
        relay = self._relays.get(engine)
        if relay is None or not relay.running:
            relay = self._relays[engine] = _start_relay(self._drainer(engine), engine, interval)
        return relay

    def close_relays(self) -> None:
        """Stop every relay thread this cache started."""
        for relay in self._relays.values():
            relay.stop()
        self._relays.clear()

    def _deliver(self, engine: Any, lookups: list[_outbox.Lookup]) -> None:
        raise NotImplementedError

    def _warm(self, objs: list[Any]) -> None:
        raise NotImplementedError

    def _warm_groups(self, objs: list[Any]) -> dict[type, tuple[Field, list[Any]]]:
        groups: dict[type, tuple[Field, list[Any]]] = {}
        for obj in objs:
            try:
                info = self.model_info(type(obj))
            except ConfigurationError:
                continue
            pk = info.value_of(obj, info.primary_key)
            groups.setdefault(info.cls, (info.primary_key, []))[1].append(pk)
        return groups


_TUPLE_IN = ("postgresql", "sqlite", "mysql", "mariadb")


class SQLAlchemyCache(_SQLAlchemyModels, CacheCow):
    """A :class:`~cachecow.CacheCow` of SQLAlchemy 2 mapped instances.

    :param redis: a redis-py client (see :func:`cachecow.connect`).
    :param session_factory: makes the short sessions ``fetch`` reads committed data with (a
        ``sessionmaker``); bind it to the primary, not to a lagging replica.
    :param options: the options of :class:`~cachecow.CacheCow` (``ttl``, ``busy``, ...; see
        :class:`~cachecow.CacheOptions`).
    """

    def __init__(
        self, redis: Any, session_factory: sessionmaker[Any], **options: Unpack[CacheOptions]
    ) -> None:
        super().__init__(redis, **options)
        self._setup(session_factory, asynchronous=False)

    def watch(
        self, target: sessionmaker[Any] | Session, *, warm: bool = False, relay: bool = True
    ) -> None:
        """Drain the outbox after every commit of a session ``target`` makes (or of one
        session) that wrote, so its invalidations have reached Redis when ``commit()``
        returns; and start a relay thread on its engine for every other write.

        :param warm: after the drain, refill the cache with the committed rows of new and
            changed instances, through the lease (one ``get_many`` per model).
        :param relay: start :meth:`relay` on the engine ``target`` is bound to.
        """
        if not isinstance(target, (sessionmaker, Session)):
            raise ConfigurationError(f"watch() takes a sessionmaker or a Session, got {target!r}")
        self._listen(target, warm)
        bind = target.kw.get("bind") if isinstance(target, sessionmaker) else target.bind
        self._covers(bind)
        engine = getattr(bind, "engine", bind)
        if isinstance(engine, sa.Engine):
            _announce(engine, self)
            if relay:
                self.relay(engine)

    def drain(self, engine: sa.Engine | None = None) -> int:
        """Deliver every row waiting in ``engine``'s outbox now (default: the session
        factory's engine); return how many. Raises if Redis cannot be reached."""
        if engine is None:
            with self.session_factory() as session:
                engine = session.get_bind().engine
        drainer = self._drainer(engine)
        return drainer.drain(skip_locked=drainer.dialect == "mysql")

    def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        with self.session_factory() as session:
            self._check_installed(session.connection(), cls)
            stmt = self._select(cls, id_field, [id_val], session.get_bind().dialect)
            obj = session.execute(stmt).scalars().one_or_none()
        if obj is None:
            raise NotFound(cls, id_field, id_val)
        return obj

    def select_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> Any:
        with self.session_factory() as session:
            self._check_installed(session.connection(), cls)
            stmt = self._select(cls, id_field, list(id_vals), session.get_bind().dialect)
            return session.execute(stmt).scalars().all()

    def get_attached(
        self,
        session: Session,
        cls: type[T],
        id_field: str | tuple[str, ...],
        id_val: Any,
        *,
        ttl: float | None = None,
    ) -> T:
        """:meth:`get`, with the object attached to ``session``: merged without a query
        (``session.merge(obj, load=False)``), so its relationships and deferred columns load
        lazily through ``session``, as for a row the session loaded itself. The instance the
        session already holds for the row is returned as it is; a session that wrote in its
        transaction, or has changes pending, reads the row itself (its own uncommitted data
        may differ from the committed rows the cache holds), caching nothing."""
        own, held = self._held(session, cls, id_field, id_val)
        if not own:
            return session.merge(self.get(cls, id_field, id_val, ttl=ttl), load=False)
        if held is not None:
            return held  # type: ignore[no-any-return]
        field, value = normalized(self, cls, id_field, id_val)
        stmt = self._select(cls, field, [value], session.get_bind().dialect)
        obj = session.execute(stmt).scalars().one_or_none()
        if obj is None:
            raise self.not_found(cls, field, value)
        return obj  # type: ignore[no-any-return]

    def _deliver(self, engine: Any, lookups: list[_outbox.Lookup]) -> None:
        self._invalidate_pairs(_outbox.keys_of(self, lookups))

    def _warm(self, objs: list[Any]) -> None:
        for cls, (pk, values) in self._warm_groups(objs).items():
            try:
                self.get_many(cls, pk, values)
            except Exception:
                logger.warning("warming %s after commit failed", cls, exc_info=True)


class AsyncSQLAlchemyCache(_SQLAlchemyModels, AsyncCacheCow):
    """The asyncio twin of :class:`SQLAlchemyCache`, for ``AsyncSession`` and
    ``async_sessionmaker`` (``await cache.get(User, "id", 5)``).

    Its relay is an asyncio task on the application's loop (polling every ``interval``),
    started by the first read after ``watch()``; ``await cache.aclose_relays()`` ends it."""

    def __init__(
        self,
        redis: Any,
        session_factory: async_sessionmaker[Any],
        **options: Unpack[CacheOptions],
    ) -> None:
        super().__init__(redis, **options)
        self._setup(session_factory, asynchronous=True)
        self._relay_engines: set[AsyncEngine] = set()
        self._relay_tasks: dict[AsyncEngine, asyncio.Task[None]] = {}

    def watch(
        self,
        target: async_sessionmaker[Any] | AsyncSession,
        *,
        warm: bool = False,
        relay: bool = True,
    ) -> None:
        """Drain the outbox after every commit of a session ``target`` makes (or of one
        session) that wrote (see :meth:`SQLAlchemyCache.watch`).

        :param relay: run :meth:`start_relay` on ``target``'s engine from the first read on.
        """
        bind = target.bind if isinstance(target, AsyncSession) else target.kw.get("bind")
        self._covers(bind)
        if relay and isinstance(bind, AsyncEngine):
            self._relay_engines.add(bind)
        if isinstance(target, AsyncSession):
            self._listen(target.sync_session, warm)
            return
        if not isinstance(target, async_sessionmaker):
            raise ConfigurationError(
                f"watch() takes an async_sessionmaker or an AsyncSession, got {target!r}"
            )
        # Session events are sync-side: give this factory's sessions a watched sync class.
        base = target.kw.get("sync_session_class", Session)
        watched = type(f"CachecowWatched{base.__name__}", (base,), {})
        self._listen(watched, warm)
        target.kw["sync_session_class"] = watched

    def start_relay(self, engine: AsyncEngine, *, interval: float = 0.2) -> asyncio.Task[None]:
        """Start (once per engine) an asyncio task that delivers what no commit's drain
        delivered on ``engine``'s database; call it from a running loop."""
        task = self._relay_tasks.get(engine)
        if task is None or task.done():
            drainer = self._drainer(engine.sync_engine)
            task = asyncio.get_running_loop().create_task(_relay_loop(drainer, interval))
            self._relay_tasks[engine] = task
        return task

    async def aclose_relays(self) -> None:
        """Stop the relay tasks (and threads) this cache started."""
        tasks = list(self._relay_tasks.values())
        self._relay_tasks.clear()
        self._relay_engines.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.close_relays()

    def _relay_on_read(self) -> None:
        for engine in list(self._relay_engines):
            self.start_relay(engine)

    async def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        self._relay_on_read()
        async with self.session_factory() as session:
            await session.run_sync(lambda s: self._check_installed(s.connection(), cls))
            stmt = self._select(cls, id_field, [id_val], session.bind.dialect)
            obj = (await session.execute(stmt)).scalars().one_or_none()
        if obj is None:
            raise NotFound(cls, id_field, id_val)
        return obj

    async def fetch_many(  # type: ignore[override]  # AsyncCacheCow's, not the sync base's
        self, cls: Any, id_field: Field, id_vals: Sequence[Any]
    ) -> Mapping[Any, Any]:
        self._relay_on_read()
        async with self.session_factory() as session:
            await session.run_sync(lambda s: self._check_installed(s.connection(), cls))
            stmt = self._select(cls, id_field, list(id_vals), session.bind.dialect)
            objs = (await session.execute(stmt)).scalars().all()
        return self.model_info(cls).by_value(id_field, objs)

    async def get_attached(
        self,
        session: AsyncSession,
        cls: type[T],
        id_field: str | tuple[str, ...],
        id_val: Any,
        *,
        ttl: float | None = None,
    ) -> T:
        """:meth:`get`, with the object attached to ``session``; see
        :meth:`SQLAlchemyCache.get_attached`. Lazy loads of an ``AsyncSession`` must be awaited
        (``await obj.awaitable_attrs.org``, with ``AsyncAttrs`` on the model's base)."""
        own, held = self._held(session.sync_session, cls, id_field, id_val)
        if not own:
            obj = await self.get(cls, id_field, id_val, ttl=ttl)
            return await session.merge(obj, load=False)
        if held is not None:
            return held  # type: ignore[no-any-return]
        field, value = normalized(self, cls, id_field, id_val)
        stmt = self._select(cls, field, [value], session.sync_session.get_bind().dialect)
        found = (await session.execute(stmt)).scalars().one_or_none()
        if found is None:
            raise self.not_found(cls, field, value)
        return found  # type: ignore[no-any-return]

    def _deliver(self, engine: Any, lookups: list[_outbox.Lookup]) -> None:
        # Session events run in SQLAlchemy's greenlet inside the awaiting task: await there.
        await_only(self._invalidate_pairs(_outbox.keys_of(self, lookups)))

    def _warm(self, objs: list[Any]) -> None:
        for cls, (pk, values) in self._warm_groups(objs).items():
            try:
                await_only(self.get_many(cls, pk, values))
            except Exception:
                logger.warning("warming %s after commit failed", cls, exc_info=True)


async def _relay_loop(drainer: _outbox.Drainer, interval: float) -> None:
    """The asyncio relay: drain (in SQLAlchemy's greenlet, so the sync drain can await), sleep."""
    while True:
        try:
            await greenlet_spawn(drainer.drain, skip_locked=True)
        except Exception:
            pass  # logged once per outage by the drainer; retried after the interval
        await asyncio.sleep(interval)


# -- triggers: installing them, draining their outbox -------------------------------------------


def _integral(cls: Any, key: str, value: Any) -> Any:
    """``value`` as the int it stands for, for an integer column; refuse what is no integer."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value  # no row can hold it, so no row's invalidation needs to reach it
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    number = isinstance(value, (float, decimal.Decimal))
    if number and math.isfinite(value) and value == int(value):
        return int(value)
    raise InvalidLookup(
        f"{cls.__qualname__}.{key} is an integer column; {value!r} is not an integer"
    )


def _url_of(url: Any) -> str:
    """An engine's URL as text, without its password (sync and async engines alike)."""
    text = url.render_as_string(hide_password=True) if hasattr(url, "render_as_string") else url
    return str(text)


def _dialect(dialect: Any) -> str:
    return "mysql" if dialect.name in ("mysql", "mariadb") else str(dialect.name)


def _watched(info: _Model, label: str, schema: str | None = None) -> _outbox.Watched:
    table: Any = info.mapper.local_table
    attrs = info.lookup_keys
    where = f"{info.cls.__qualname__}"
    return _outbox.Watched(
        table=table.name,
        label=label,
        lookups=tuple(info.lookups),
        attrs=tuple(attrs),
        columns=tuple(info.columns[a].name for a in attrs),
        kinds=tuple(_outbox.kind_of(_python_type(info.columns[a]), f"{where}.{a}") for a in attrs),
        schema=table.schema or schema,
    )


def _python_type(column: sa.Column[Any]) -> Any:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def install_sql(
    dialect: str,
    *models: type,
    schema: str | None = None,
    label: Callable[[Any], str] = model_label,
) -> list[str]:
    """The statements that create the outbox and (re)install the triggers of ``models``'
    tables, for a migration: ``for s in install_sql("postgresql", User): op.execute(s)``.

    Run them again after a change of a table's unique columns: they replace its triggers.

    :param dialect: ``postgresql``, ``sqlite``, ``mysql`` or ``mariadb``.
    :param schema: PostgreSQL: the schema of tables whose ``Table.schema`` is None (default:
        the connection's ``current_schema()``, which :func:`install` looks up).
    :param label: the model label the cache keys use (a cache's ``model_label``, if you
        override it).
    """
    name = "mysql" if dialect == "mariadb" else dialect
    out = list(_outbox.outbox_sql(name))
    for model in models:
        out += _outbox.install_sql(name, _watched(_Model.of(model), label(model), schema))
    return out


def install(
    bind: sa.Engine | sa.Connection, *models: type, label: Callable[[Any], str] = model_label
) -> None:
    """Create the outbox and install the triggers of ``models``' tables now (idempotent)."""
    with _begin(bind) as conn:
        dialect = _dialect(conn.dialect)
        schema = None
        if dialect == "postgresql":
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
        for statement in install_sql(dialect, *models, schema=schema, label=label):
            conn.exec_driver_sql(statement)


def install_on_create(*models: type, label: Callable[[Any], str] = model_label) -> None:
    """Install the triggers of ``models`` whenever ``metadata.create_all`` creates their
    tables (a DDL event on each table)."""
    for model in models:
        table: Any = _Model.of(model).mapper.local_table

        def after_create(target: Any, connection: Any, model: Any = model, **kw: Any) -> None:
            install(connection, model, label=label)

        event.listen(table, "after_create", after_create)


@contextmanager
def _begin(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn


@contextmanager
def _autocommit(engine: sa.Engine) -> Iterator[_outbox.Connection]:
    """A raw DB-API connection of ``engine``'s pool in autocommit mode: the drain sends its
    own BEGIN (BEGIN IMMEDIATE on SQLite), whatever the engine's events do."""
    raw: Any = engine.raw_connection()
    dialect = engine.dialect
    try:
        dbapi = raw.dbapi_connection
        dialect.set_isolation_level(dbapi, "AUTOCOMMIT")
        try:
            multi = dialect.driver in ("psycopg", "psycopg2")  # two statements in one query

            def run(sql: str) -> list[tuple[Any, ...]]:
                if not multi and sql.startswith("BEGIN; "):
                    _outbox.run_on(raw, "BEGIN")
                    sql = sql.removeprefix("BEGIN; ")
                return _outbox.run_on(raw, sql)

            yield run
        finally:
            dialect.reset_isolation_level(dbapi)
    finally:
        raw.close()


def _delivered_by_commit(begun: Iterable[tuple[_outbox.Announcements | None, int | None]]) -> bool:
    """Whether the commit of a session's transaction delivered its rows itself (see
    :class:`_Announcing`): each of its connections announces, and announced rows since the
    transaction began (``begun``: each connection's announcements and their count then). If
    not (SQLite, MariaDB, psycopg2, a connection whose setting a pooler reset, writes of
    unwatched tables only), the commit drains the outbox."""
    return all(a is not None and a.count != start for a, start in begun)


_announcing: weakref.WeakKeyDictionary[sa.Engine, list[weakref.ref[SQLAlchemyCache]]] = (
    weakref.WeakKeyDictionary()
)


def _watchers(engine: sa.Engine) -> list[SQLAlchemyCache]:
    """The live caches watching ``engine``, latest first."""
    refs = _announcing.get(engine, [])
    return [c for c in (ref() for ref in reversed(refs)) if c is not None]


def _announce(engine: sa.Engine, cache: SQLAlchemyCache) -> None:
    """Make ``cache`` the latest to watch ``engine``; on PostgreSQL with psycopg 3, hook the
    engine (once) so that its commits deliver their announced rows (:class:`_Announcing`)."""
    refs = _announcing.get(engine)
    if refs is None:
        refs = _announcing[engine] = []
        dialect = engine.dialect
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            _Announcing(engine).hook()
    if cache not in _watchers(engine):
        refs.append(weakref.ref(cache))


class _Announcing:
    """Every connection of an engine gets its writes' outbox rows announced (see
    :class:`~cachecow.adapters._outbox.Announcements`) and delivers them right after each
    commit, before ``commit()`` returns, whatever made the commit (a session, a Core
    connection, the outer transaction of a joined session); rows left when a connection goes
    back to the pool (autocommit writes) are delivered then. This saves the after-commit
    drain its two database round trips. SQLAlchemy has no event after a commit: the
    dialect's ``do_commit`` and its kin are wrapped."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self._commit, self._rollback = dialect.do_commit, dialect.do_rollback
        self._savepoint, self._rollback_to = dialect.do_savepoint, dialect.do_rollback_to_savepoint

    def hook(self) -> None:
        dialect = self.engine.dialect
        dialect.do_commit = self.do_commit  # type: ignore[method-assign,assignment]
        dialect.do_rollback = self.do_rollback  # type: ignore[method-assign,assignment]
        dialect.do_savepoint = self.do_savepoint  # type: ignore[method-assign]
        dialect.do_rollback_to_savepoint = self.do_rollback_to_savepoint  # type: ignore[method-assign]
        event.listen(self.engine, "checkout", self.checkout)
        event.listen(self.engine, "checkin", self.checkin)

    def checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if _outbox.Announcements.of(dbapi_connection) is None:
            try:
                _outbox.announce(dbapi_connection)
            except Exception as exc:  # its writes then wake the relay, as outside ones do
                logger.warning("setting a connection up to announce failed: %s", exc)

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            self._deliver(dbapi_connection)

    def do_commit(self, connection: Any) -> None:
        dbapi_connection = getattr(connection, "dbapi_connection", connection)
        try:
            self._commit(connection)
        except BaseException:
            self._forget(dbapi_connection)  # the transaction's rows did not commit
            raise
        self._deliver(dbapi_connection)

    def do_rollback(self, connection: Any) -> None:
        dbapi_connection = getattr(connection, "dbapi_connection", connection)
        self._deliver(dbapi_connection)  # rows of autocommit writes, committed already
        self._rollback(connection)
        self._forget(dbapi_connection)  # this transaction's rows, rolled back with it

    def do_savepoint(self, connection: sa.Connection, name: str) -> None:
        self._savepoint(connection, name)
        announced = _outbox.Announcements.of(connection.connection.dbapi_connection)
        if announced is not None:
            announced.savepoint(name)

    def do_rollback_to_savepoint(self, connection: sa.Connection, name: str) -> None:
        self._rollback_to(connection, name)
        announced = _outbox.Announcements.of(connection.connection.dbapi_connection)
        if announced is not None:
            announced.rollback_to(name)

    def _deliver(self, dbapi_connection: Any) -> None:
        announced = _outbox.Announcements.of(dbapi_connection)
        if announced is None or not announced.pending or not _outbox.idle(dbapi_connection):
            return
        caches = _watchers(self.engine)
        if not caches:  # none left: the rows wait for a relay
            return
        try:  # (the latest cache to watch the engine)
            caches[0]._drainer(self.engine).deliver_announced(announced)
        except Exception as exc:  # a commit never fails for the cache: the rows wait
            logger.warning("delivering announced outbox rows failed: %r", exc)

    def _forget(self, dbapi_connection: Any) -> None:
        announced = _outbox.Announcements.of(dbapi_connection)
        if announced is not None and announced.pending:
            announced.take()


def _start_relay(drainer: _outbox.Drainer, engine: sa.Engine, interval: float) -> _outbox.Relay:
    listener = None
    if drainer.dialect == "postgresql" and engine.dialect.driver == "psycopg":
        listener = _outbox.PgListener(lambda: _detached_driver_connection(engine))
    return _outbox.Relay(drainer, interval=interval, listener=listener).start()


def _detached_driver_connection(engine: sa.Engine) -> Any:
    """A driver connection of ``engine``'s, taken out of its pool for good (the relay's)."""
    raw: Any = engine.raw_connection()
    connection = raw.driver_connection
    raw.detach()
    return connection


def relay(cache: CacheCow, engine: sa.Engine, *, interval: float = 0.2) -> _outbox.Relay:
    """Start a thread that delivers ``engine``'s outbox through ``cache`` (any sync cache with
    the same ``prefix``): on PostgreSQL with psycopg woken by NOTIFY within milliseconds,
    elsewhere every ``interval`` seconds. ``stop()`` ends it."""
    if isinstance(cache, _SQLAlchemyModels):
        cache._covers(engine)
    drainer = _outbox.Drainer(
        _dialect(engine.dialect), lambda: _autocommit(engine), _outbox.deliver_to(cache)
    )
    return _start_relay(drainer, engine, interval)
