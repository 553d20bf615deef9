"""SQLAlchemy 2.x adapter: cached gets by any unique key, invalidated after commit.

::

    from cachecow.adapters.sqlalchemy import SQLAlchemyCache

    Session = sessionmaker(engine)
    cache = SQLAlchemyCache(cachecow.connect(), Session)
    cache.watch(Session)                      # invalidate on commit for sessions it makes

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

**Invalidation.** :meth:`SQLAlchemyCache.watch` a session factory (or one session): each flush
records the unique lookups of every new, changed and deleted instance, with both the old and
the new values of changed unique fields; they are invalidated in one round trip after the
outermost commit, dropped on rollback, and a savepoint that rolls back drops its own. ORM bulk
``update()`` and ``delete()`` statements executed through a watched session invalidate every
affected row (a pre-select of the affected rows in the same transaction, and for updates a
post-select of their new values); bulk ``insert()`` with parameter lists invalidates the lookups
its rows carry. Not covered: Core statements on a connection, raw SQL, and the legacy
``bulk_save_objects`` family, which bypass the session's events.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import sqlalchemy as sa
    from sqlalchemy import and_, event, or_, select, tuple_
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    from sqlalchemy.orm import (
        Mapper,
        ORMExecuteState,
        Session,
        SessionTransaction,
        make_transient_to_detached,
        sessionmaker,
        undefer,
    )
    from sqlalchemy.orm.attributes import set_committed_value
    from sqlalchemy.util import await_only
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cachecow.adapters.sqlalchemy needs SQLAlchemy 2: pip install 'cachecow[sqlalchemy]'"
    ) from exc

from cachecow import AsyncCacheCow, CacheCow, ConfigurationError, InvalidLookup, NotFound
from cachecow.keys import Field, normalize_lookup

from ._codecs import Codec, codec_for
from ._lookups import Lookup, coerce, describe, refuse, row_lookups
from ._lookups import has_null as _has_null
from ._lookups import keys_of as _keys

__all__ = ["AsyncSQLAlchemyCache", "SQLAlchemyCache"]

logger = logging.getLogger("cachecow")


def _codec_for(column: sa.Column[Any], name: str) -> Codec:
    try:
        python_type: Any = column.type.python_type
    except NotImplementedError:
        python_type = None
    return codec_for(python_type, name)


# -- what the adapter knows of a mapped class ---------------------------------------------------


@dataclass
class _Model:
    """A mapped class as the adapter sees it: columns, codecs, unique lookups, fingerprint."""

    cls: type
    mapper: Mapper[Any]
    keys: list[str]  # mapped column attributes, in column order
    columns: dict[str, sa.Column[Any]]
    codecs: list[Codec]
    primary_key: Field
    lookups: list[Field]
    fingerprint: str

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
            mapper=mapper,
            keys=keys,
            columns=columns,
            codecs=[_codec_for(columns[k], k) for k in keys],
            primary_key=primary_key,
            lookups=lookups,
            fingerprint=hashlib.sha1(shape.encode()).hexdigest()[:12],
        )

    @property
    def lookup_keys(self) -> list[str]:
        """Every attribute that is part of a unique lookup, in lookup order."""
        return list(dict.fromkeys(k for lookup in self.lookups for k in _keys(lookup)))

    def describe(self) -> str:
        return describe(self.lookups)

    def value_of(self, obj: Any, lookup: Field) -> Any:
        if isinstance(lookup, tuple):
            return tuple(getattr(obj, key) for key in lookup)
        return getattr(obj, lookup)


# -- transaction tracking -----------------------------------------------------------------------


@dataclass
class _Tracker:
    """Lookups flushed in one session, per transaction, waiting for the outermost commit."""

    chunks: dict[SessionTransaction, list[list[Lookup]]] = field(default_factory=dict)
    moved: dict[SessionTransaction, tuple[SessionTransaction, list[list[Lookup]]]] = field(
        default_factory=dict
    )
    changed: list[Any] = field(default_factory=list)  # instances to refill (warm on write)

    def add(self, session: Session, lookups: list[Lookup]) -> None:
        if lookups:
            tx = session.get_nested_transaction() or session.get_transaction()
            if tx is not None:
                self.chunks.setdefault(tx, []).append(lookups)

    def end(self, tx: SessionTransaction) -> None:
        chunks = self.chunks.pop(tx, [])
        if tx.nested and tx.parent is not None:
            # A savepoint ended: its lookups now belong to its parent, unless a rollback of
            # it follows (after_soft_rollback comes after after_transaction_end), see undo.
            self.chunks.setdefault(tx.parent, []).extend(chunks)
            self.moved[tx] = (tx.parent, chunks)
        elif tx.parent is None:
            self.moved.clear()
            self.changed.clear()

    def undo(self, tx: SessionTransaction) -> None:
        """A transaction rolled back: forget what it flushed."""
        self.chunks.pop(tx, None)
        parent, chunks = self.moved.pop(tx, (None, []))
        if parent is not None:
            kept = self.chunks.get(parent, [])
            self.chunks[parent] = [c for c in kept if not any(c is d for d in chunks)]

    def take_committed(self) -> list[Lookup]:
        """Every lookup flushed in the transaction that just committed (the outermost)."""
        lookups: list[Lookup] = []
        for tx in [t for t in self.chunks if t.parent is None]:
            for chunk in self.chunks.pop(tx):
                lookups += chunk
        return list(dict.fromkeys(lookups))


_UNSET = object()


class _SQLAlchemyModels:
    """What the sync and async SQLAlchemy caches share: models, codecs, lookups, watching."""

    def _setup(self, session_factory: Any) -> None:
        if not callable(session_factory):
            raise ConfigurationError(
                f"session_factory must make sessions (a sessionmaker), got {session_factory!r}"
            )
        self.session_factory = session_factory
        self._models: dict[type, _Model] = {}

    # -- models ---------------------------------------------------------------------------------

    def model_info(self, model: Any) -> _Model:
        """What the adapter knows of a mapped class (cached)."""
        info = self._models.get(model)
        if info is None:
            info = self._models[model] = _Model.of(model)
        return info

    def check_lookup(self, cls: Any, id_field: Field) -> None:
        info = self.model_info(cls)
        if id_field not in info.lookups:
            raise refuse(cls.__qualname__, id_field, info.lookups)

    def coerce_lookup(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        """Convert a lookup value to its column's Python type where that is unambiguous:
        ``"42"`` to ``42`` for an integer column, a string to a ``UUID`` for a UUID column."""
        info = self.model_info(cls)

        def convert(key: str, value: Any) -> Any:
            if value is None or isinstance(value, bool):
                return value
            try:
                python_type = info.columns[key].type.python_type
            except (KeyError, NotImplementedError):
                return value
            try:
                if python_type is int and isinstance(value, str):
                    return int(value)
                if python_type is uuid.UUID and isinstance(value, str):
                    return uuid.UUID(value)
            except ValueError:
                return value
            return value

        return coerce(id_field, id_val, convert)

    def unique_lookups(self, obj: Any) -> Iterable[tuple[Field, Any]]:
        info = self.model_info(type(obj))
        out = []
        for lookup in info.lookups:
            value = info.value_of(obj, lookup)
            if not _has_null(value):
                out.append((lookup, value))
        return out

    # -- (de)serialization ----------------------------------------------------------------------

    def serialize(self, obj: Any) -> bytes:
        info = self.model_info(type(obj))
        state = obj.__dict__
        row: list[Any] = [info.fingerprint]
        for key, codec in zip(info.keys, info.codecs, strict=True):
            value = state[key] if key in state else getattr(obj, key)
            row.append(None if value is None else codec.encode(value))
        data: bytes = self.serializer.dumps(row)  # type: ignore[attr-defined]
        return data

    def deserialize(self, cls: Any, data: bytes) -> Any:
        info = self.model_info(cls)
        row = self.serializer.loads(data)  # type: ignore[attr-defined]
        if not isinstance(row, list) or len(row) != len(info.keys) + 1:
            raise ValueError("not a row of this model")
        if row[0] != info.fingerprint:
            raise ValueError("cached under another schema of this model")
        obj = info.mapper.class_manager.new_instance()
        for key, codec, value in zip(info.keys, info.codecs, row[1:], strict=True):
            set_committed_value(obj, key, None if value is None else codec.decode(value))
        make_transient_to_detached(obj)
        return obj

    # -- queries --------------------------------------------------------------------------------

    def _select(self, cls: Any, id_field: Field, id_vals: Sequence[Any], dialect: Any) -> Any:
        info = self.model_info(cls)
        for value in id_vals:
            if _has_null(value):
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

    def _by_value(self, cls: Any, id_field: Field, objs: Iterable[Any]) -> dict[Any, Any]:
        info = self.model_info(cls)
        return {info.value_of(obj, id_field): obj for obj in objs}

    # -- watching sessions ----------------------------------------------------------------------

    def _listen(self, target: Any, warm: bool) -> None:
        tracker_key = ("cachecow", id(self))

        def tracker(session: Session) -> _Tracker:
            found = session.info.get(tracker_key)
            if found is None:
                found = session.info[tracker_key] = _Tracker()
            return found

        def before_flush(session: Session, flush_context: Any, instances: Any) -> None:
            # Old values (and current ones) of changed and deleted instances, read now, while
            # the database still holds the old row.
            lookups: list[Lookup] = []
            unknown: dict[type, list[Any]] = {}
            with session.no_autoflush:
                for obj in list(session.dirty) + list(session.deleted):
                    lookups += self._lookups_of(obj, old=True)
                    cls = self._old_values_unknown(obj)
                    if cls is not None:
                        unknown.setdefault(cls, []).append(obj)
                    if warm and obj not in session.deleted:
                        tracker(session).changed.append(obj)
                for cls, objs in unknown.items():
                    lookups += self._stored_lookups(session, cls, objs)
            tracker(session).add(session, lookups)

        def after_flush(session: Session, flush_context: Any) -> None:
            # New values: primary keys of new rows are known only now.
            lookups: list[Lookup] = []
            for obj in list(session.new) + list(session.dirty):
                lookups += self._lookups_of(obj, old=False)
            for obj in session.new:
                if warm:
                    tracker(session).changed.append(obj)
            tracker(session).add(session, lookups)

        def after_transaction_end(session: Session, tx: SessionTransaction) -> None:
            tracker(session).end(tx)

        def after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
            tracker(session).undo(previous)

        def after_commit(session: Session) -> None:
            if session.in_nested_transaction():
                return  # a savepoint released: its lookups wait for the outermost commit
            t = tracker(session)
            lookups = t.take_committed()
            changed = list(t.changed)
            t.changed.clear()
            if lookups:
                self._invalidate_committed(lookups)
            if warm and changed:
                self._warm(changed)

        def do_orm_execute(state: ORMExecuteState) -> Any:
            if not (state.is_update or state.is_delete or state.is_insert):
                return None
            mapper = state.bind_mapper
            if mapper is None or mapper.class_ not in self._watchable(mapper.class_):
                return None
            return self._bulk(state, mapper.class_, tracker(state.session))

        listeners: list[tuple[str, Callable[..., Any]]] = [
            ("before_flush", before_flush),
            ("after_flush", after_flush),
            ("after_transaction_end", after_transaction_end),
            ("after_soft_rollback", after_soft_rollback),
            ("after_commit", after_commit),
            ("do_orm_execute", do_orm_execute),
        ]
        for name, fn in listeners:
            event.listen(target, name, fn)

    def _watchable(self, cls: Any) -> set[Any]:
        try:
            self.model_info(cls)
        except ConfigurationError:
            return set()
        return {cls}

    def _lookups_of(self, obj: Any, *, old: bool) -> list[Lookup]:
        try:
            info = self.model_info(type(obj))
        except ConfigurationError:
            return []  # not a model this cache can serve
        state = sa_inspect(obj)
        out: list[Lookup] = []
        for lookup in info.lookups:
            keys = lookup if isinstance(lookup, tuple) else (lookup,)
            values = []
            for key in keys:
                value = _UNSET
                if old:
                    history = state.attrs[key].history
                    if history.deleted:
                        value = history.deleted[0]
                if value is _UNSET:
                    value = state.dict[key] if key in state.dict else getattr(obj, key)
                values.append(value)
            value = tuple(values) if isinstance(lookup, tuple) else values[0]
            if not _has_null(value):
                out.append((info.cls, lookup, value))
        return out

    def _old_values_unknown(self, obj: Any) -> type | None:
        """The model of ``obj`` if a lookup field was set without its old value ever loaded
        (expired by a commit, deferred, never read): then only the database knows it."""
        try:
            info = self.model_info(type(obj))
        except ConfigurationError:
            return None
        state = sa_inspect(obj)
        for key in info.lookup_keys:
            history = state.attrs[key].history
            if history.added and not history.deleted and not history.unchanged:
                return info.cls
        return None

    def _stored_lookups(self, session: Session, cls: Any, objs: list[Any]) -> list[Lookup]:
        """The lookups of these instances as the database holds them (one SELECT)."""
        info = self.model_info(cls)
        pks = [sa_inspect(obj).identity for obj in objs]
        pk_cols = [info.columns[k] for k in _keys(info.primary_key)]
        stmt = select(*[info.columns[k] for k in info.lookup_keys]).where(
            _in(pk_cols, [tuple(pk) for pk in pks if pk is not None], session)
        )
        rows = session.execute(stmt).all()
        return [
            lk
            for row in rows
            for lk in _row_lookups(info, dict(zip(info.lookup_keys, row, strict=True)))
        ]

    def _bulk(self, state: ORMExecuteState, cls: Any, tracker: _Tracker) -> Any:
        """A bulk ``update()`` / ``delete()`` / ``insert()``: invalidate every affected row."""
        info = self.model_info(cls)
        session = state.session
        statement: Any = state.statement
        given: Any = state.parameters
        many = isinstance(given, list)
        if state.is_insert:
            result = state.invoke_statement()
            rows: list[Mapping[str, Any]] = list(given) if many else []
            if not many:
                # insert().values(...) and a single parameter dict: the compiled statement's
                # parameters name every value it inserts.
                compiled = statement.compile(dialect=session.get_bind(mapper=info.mapper).dialect)
                row = dict(compiled.params)
                row.update(given or {})
                rows = [{key: row[c.name] for key, c in info.columns.items() if c.name in row}]
            tracker.add(session, [lk for row in rows for lk in _row_lookups(info, row)])
            return result
        keys = info.lookup_keys
        columns = [info.columns[k] for k in keys]
        pk_keys = list(_keys(info.primary_key))
        pk_cols = [info.columns[k] for k in pk_keys]
        dialect = session.get_bind(mapper=info.mapper).dialect
        if many:
            # Bulk UPDATE by primary key (a list of parameter rows): the rows are those keys.
            pks = [tuple(row[k] for k in pk_keys) for row in given]
            pre = select(*columns).where(_in(pk_cols, pks, session))
            params: Any = {}
        else:
            pre = select(*columns)
            if statement.whereclause is not None:
                pre = pre.where(statement.whereclause)
            params = given or {}
        if dialect.name in ("postgresql", "mysql", "mariadb"):
            pre = pre.with_for_update()
        found = [dict(zip(keys, r, strict=True)) for r in session.execute(pre, params).all()]
        result = state.invoke_statement()
        if state.is_update:
            # New values of the rows found, and any row that matches the statement only now
            # (changed by another transaction between the pre-select and the UPDATE).
            post = select(*columns)
            conditions = []
            if found:
                conditions.append(
                    _in(pk_cols, [tuple(r[k] for k in pk_keys) for r in found], session)
                )
            if not many and statement.whereclause is not None:
                conditions.append(statement.whereclause)
            if conditions:
                post = post.where(or_(*conditions))
                found += [
                    dict(zip(keys, r, strict=True)) for r in session.execute(post, params).all()
                ]
        tracker.add(session, [lk for row in found for lk in _row_lookups(info, row)])
        return result

    def _invalidate_committed(self, lookups: list[Lookup]) -> None:
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


def _row_lookups(info: _Model, row: Mapping[str, Any]) -> list[Lookup]:
    """The lookups a row of attribute values carries (those it has every field of, not NULL)."""
    return row_lookups(info.cls, info.lookups, row)


def _in(cols: list[Any], values: list[tuple[Any, ...]], session: Any) -> Any:
    """``cols IN values``: a tuple IN where the dialect has one, or an OR of ANDs."""
    if len(cols) == 1:
        return cols[0].in_([v[0] for v in values])
    bind = session.get_bind() if hasattr(session, "get_bind") else session
    if bind.dialect.name in _TUPLE_IN:
        return tuple_(*cols).in_(values)
    return or_(*(and_(*(c == x for c, x in zip(cols, v, strict=True))) for v in values))


_TUPLE_IN = ("postgresql", "sqlite", "mysql", "mariadb")


class SQLAlchemyCache(_SQLAlchemyModels, CacheCow):
    """A :class:`~cachecow.CacheCow` of SQLAlchemy 2 mapped instances.

    :param redis: a redis-py client (see :func:`cachecow.connect`).
    :param session_factory: makes the short sessions ``fetch`` reads committed data with (a
        ``sessionmaker``); bind it to the primary, not to a lagging replica.
    :param options: the options of :class:`~cachecow.CacheCow` (``ttl``, ``busy``, ...).
    """

    def __init__(self, redis: Any, session_factory: sessionmaker[Any], **options: Any) -> None:
        super().__init__(redis, **options)
        self._setup(session_factory)

    def watch(self, target: sessionmaker[Any] | Session, *, warm: bool = False) -> None:
        """Invalidate after commit for every session ``target`` makes (or for one session).

        :param warm: after the invalidation, refill the cache with the committed rows of new
            and changed instances, through the lease (one ``get_many`` per model).
        """
        if not isinstance(target, (sessionmaker, Session)):
            raise ConfigurationError(f"watch() takes a sessionmaker or a Session, got {target!r}")
        self._listen(target, warm)

    def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        with self.session_factory() as session:
            stmt = self._select(cls, id_field, [id_val], session.get_bind().dialect)
            obj = session.execute(stmt).scalars().one_or_none()
        if obj is None:
            raise NotFound(cls, id_field, id_val)
        return obj

    def fetch_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> Mapping[Any, Any]:
        with self.session_factory() as session:
            stmt = self._select(cls, id_field, list(id_vals), session.get_bind().dialect)
            objs = session.execute(stmt).scalars().all()
        return self._by_value(cls, id_field, objs)

    def _invalidate_committed(self, lookups: list[Lookup]) -> None:
        self.invalidate_lookups(lookups)

    def _warm(self, objs: list[Any]) -> None:
        for cls, (pk, values) in self._warm_groups(objs).items():
            try:
                self.get_many(cls, pk, values)
            except Exception:
                logger.warning("cachecow: warming %s after commit failed", cls, exc_info=True)


class AsyncSQLAlchemyCache(_SQLAlchemyModels, AsyncCacheCow):
    """The asyncio twin of :class:`SQLAlchemyCache`, for ``AsyncSession`` and
    ``async_sessionmaker`` (``await cache.get(User, "id", 5)``)."""

    def __init__(
        self, redis: Any, session_factory: async_sessionmaker[Any], **options: Any
    ) -> None:
        super().__init__(redis, **options)
        self._setup(session_factory)

    def watch(self, target: async_sessionmaker[Any] | AsyncSession, *, warm: bool = False) -> None:
        """Invalidate after commit for every session ``target`` makes (or for one session)."""
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

    async def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        async with self.session_factory() as session:
            stmt = self._select(cls, id_field, [id_val], session.bind.dialect)
            obj = (await session.execute(stmt)).scalars().one_or_none()
        if obj is None:
            raise NotFound(cls, id_field, id_val)
        return obj

    async def fetch_many(
        self, cls: Any, id_field: Field, id_vals: Sequence[Any]
    ) -> Mapping[Any, Any]:
        async with self.session_factory() as session:
            stmt = self._select(cls, id_field, list(id_vals), session.bind.dialect)
            objs = (await session.execute(stmt)).scalars().all()
        return self._by_value(cls, id_field, objs)

    def _invalidate_committed(self, lookups: list[Lookup]) -> None:
        # Session events run in SQLAlchemy's greenlet inside the awaiting task: await there.
        await_only(self.invalidate_lookups(lookups))

    def _warm(self, objs: list[Any]) -> None:
        for cls, (pk, values) in self._warm_groups(objs).items():
            try:
                await_only(self.get_many(cls, pk, values))
            except Exception:
                logger.warning("cachecow: warming %s after commit failed", cls, exc_info=True)
