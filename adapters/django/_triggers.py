"""The Django side of invalidation from the database: triggers, the drain after commit, the relay.

Every statement Django's connections execute passes :func:`execute_wrapper`. An ``INSERT``,
``UPDATE`` or ``DELETE`` of a watched table marks the transaction as having written that
model (reads inside it then skip the cache) and queues one drain of the outbox for after the
commit (at once in autocommit). The drain runs on a raw connection of its own, so it never
shows in the application's query counts and never touches its transaction.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connections, models, transaction
from django.db.migrations.operations.base import Operation

from cachecow import ConfigurationError
from cachecow.keys import model_label

from .. import _outbox
from .._base import keys_of

__all__ = [
    "InstallTriggers",
    "dialect_of",
    "execute_wrapper",
    "install_sql",
    "install_triggers",
    "kind",
    "raw_connection",
    "triggers_installed",
    "uninstall_sql",
    "watched_table",
]

_WRITE = re.compile(
    r"^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM)\s+[`\"]?([\w$]+)",
    re.IGNORECASE,
)


def dialect_of(connection: Any) -> str:
    vendor = str(connection.vendor)
    if vendor not in _outbox.DIALECTS:
        raise ConfigurationError(f"cachecow's triggers do not support the {vendor!r} backend")
    return vendor


# -- what a trigger of a Django model records ---------------------------------------------------


def target_of(field: Any) -> Any:
    """The field whose values a column holds: a foreign key's target, followed to the end (a
    key to a model whose primary key is itself a one-to-one key)."""
    while field.is_relation and field.target_field is not None:
        field = field.target_field
    return field


def kind(field: Any, where: str) -> str:
    target = target_of(field)
    internal = target.get_internal_type()
    if internal in {"AutoField", "BigAutoField", "SmallAutoField"} or "Integer" in internal:
        return "int"
    if isinstance(target, models.DateTimeField):
        return "datetime_utc" if settings.USE_TZ else "datetime"
    python_type = {
        "CharField": str,
        "TextField": str,
        "EmailField": str,
        "SlugField": str,
        "FilePathField": str,
        "URLField": str,
        "GenericIPAddressField": str,
        "UUIDField": _uuid(),
        "BooleanField": bool,
        "DateField": _date(),
        "TimeField": _time(),
        "DecimalField": _decimal(),
        "FloatField": float,
        "BinaryField": bytes,
    }.get(internal, internal)
    return _outbox.kind_of(python_type, where)


def _uuid() -> type:
    import uuid

    return uuid.UUID


def _date() -> type:
    import datetime

    return datetime.date


def _time() -> type:
    import datetime

    return datetime.time


def _decimal() -> type:
    import decimal

    return decimal.Decimal


def watched_table(model: Any, lookups: Sequence[Any], label: str) -> _outbox.Watched:
    """The trigger's view of a concrete model: its table, label and lookups by column."""
    meta = model._meta
    by_attname = {f.attname: f for f in meta.concrete_fields}
    attrs = list(dict.fromkeys(k for lookup in lookups for k in keys_of(lookup)))
    return _outbox.Watched(
        table=meta.db_table,
        label=label,
        lookups=tuple(lookups),
        attrs=tuple(attrs),
        columns=tuple(by_attname[a].column for a in attrs),
        kinds=tuple(kind(by_attname[a], f"{meta.label}.{a}") for a in attrs),
    )


def install_sql(connection: Any, tables: Sequence[_outbox.Watched]) -> list[str]:
    dialect = dialect_of(connection)
    out = list(_outbox.outbox_sql(dialect))
    for table in tables:
        out += _outbox.install_sql(dialect, table)
    return out


def uninstall_sql(connection: Any, tables: Sequence[_outbox.Watched]) -> list[str]:
    """Drop the triggers (the outbox stays: other tables may still write to it)."""
    dialect = dialect_of(connection)
    q = connection.ops.quote_name
    out = []
    for table in tables:
        if dialect == "postgresql":
            for name in ("cachecow_insert", "cachecow_update", "cachecow_delete"):
                out.append(f"DROP TRIGGER IF EXISTS {name} ON {q(table.table)}")
            out.append(f"DROP FUNCTION IF EXISTS {q(table.tag)}()")
        else:
            suffixes = ["insert", "update", "delete"] + (["replace"] if dialect == "sqlite" else [])
            out += [f"DROP TRIGGER IF EXISTS {q(f'{table.tag}_{s}')}" for s in suffixes]
    return out


def install_triggers(connection: Any, tables: Sequence[_outbox.Watched]) -> None:
    """Create the outbox and (re)install the triggers of ``tables`` on ``connection``."""
    with connection.cursor() as cursor:
        for statement in install_sql(connection, tables):
            cursor.execute(statement)


def triggers_installed(connection: Any, table: _outbox.Watched) -> bool:
    def run(sql: str) -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return [tuple(r) for r in cursor.fetchall()]

    return _outbox.installed(dialect_of(connection), run, table)


class InstallTriggers(Operation):  # type: ignore[misc]
    """A migration operation that installs cachecow's outbox and the triggers of models
    (``InstallTriggers("shop.Product", ...)``); reversed, it drops the triggers.

    It reads the models' unique fields from the migration's historical state, so a later
    change of a unique field needs another ``InstallTriggers`` after it (or ``manage.py
    cachecow_triggers --migration APP`` writes one).
    """

    reduces_to_sql = True
    reversible = True

    def __init__(self, *labels: str) -> None:
        self.labels = list(labels)

    def deconstruct(self) -> tuple[str, list[str], dict[str, Any]]:
        return ("cachecow.adapters.django.InstallTriggers", self.labels, {})

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def _tables(self, from_state: Any, to_state: Any) -> list[_outbox.Watched]:
        from . import _Model

        out = []
        for label in self.labels:
            real = _real_model(label)
            historical = to_state.apps.get_model(label)
            info = _Model.lookups_of(historical)
            out.append(watched_table(historical, info, model_label(real)))
        return out

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        for statement in install_sql(schema_editor.connection, self._tables(from_state, to_state)):
            schema_editor.execute(statement, params=None)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        for statement in uninstall_sql(
            schema_editor.connection, self._tables(to_state, from_state)
        ):
            schema_editor.execute(statement, params=None)

    def describe(self) -> str:
        return f"Install cachecow's invalidation triggers on {', '.join(self.labels)}"


def _real_model(label: str) -> Any:
    from django.apps import apps

    return apps.get_model(label)


# -- after a write: mark it, drain after the commit ---------------------------------------------

OnWrite = Callable[[str, str], Callable[[], None] | None]
_on_write: list[OnWrite] = []  # set by the app: (alias, table) -> the drain to queue, if any
_pending = threading.local()  # alias -> a drain deferred to the next statement or cache read


def execute_wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """Spot the writes of every statement a Django connection executes (see the module doc)."""
    connection = context["connection"]
    flush_pending(connection.alias)
    result = execute(sql, params, many, context)
    if isinstance(sql, str) and sql[:1] in "SR":
        savepoint = _SAVEPOINT.match(sql)
        if savepoint is not None:
            _savepoint(connection, *savepoint.groups())
    match = _WRITE.match(sql) if isinstance(sql, str) and _on_write else None
    if match is not None and match.group(1) != _outbox.OUTBOX:
        drain = _on_write[0](connection.alias, match.group(1))
        if drain is not None:
            if (
                connection.vendor == "sqlite"
                and not connection.in_atomic_block
                and "RETURNING" in sql.upper()
            ):
                # Its rows are still to be fetched, so SQLite holds the write lock that the
                # drain needs: drain before the next statement or cache read instead.
                _pending.__dict__[connection.alias] = drain
            else:
                queue_once(connection.alias, drain)
    return result


_SAVEPOINT = re.compile(r'^(SAVEPOINT|ROLLBACK TO SAVEPOINT) "?([^"]+)"?$')


def _savepoint(connection: Any, statement: str, name: str) -> None:
    """Keep the rows announced to the connection (PostgreSQL) in step with its savepoints:
    a savepoint rolled back takes its rows with it."""
    announced = _outbox.Announcements.of(connection.connection)
    if announced is None:
        return
    if statement == "SAVEPOINT":
        announced.savepoint(name)
    else:
        announced.rollback_to(name)


def flush_pending(alias: str) -> None:
    """Run the drain a write of this thread deferred on ``alias``, if any."""
    drain = _pending.__dict__.pop(alias, None)
    if drain is not None:
        drain()


def queue_once(alias: str, callback: Callable[[], None]) -> None:
    """``transaction.on_commit(callback)`` unless this transaction queued it already (at once
    outside a transaction). A savepoint rolled back takes its callbacks with it, so the next
    write queues it again."""
    connection = connections[alias]
    if not connection.in_atomic_block and not connection.get_autocommit():
        return  # set_autocommit(False): no commit hook exists; the relay delivers
    if connection.in_atomic_block and any(
        func is callback for _, func, *_ in connection.run_on_commit
    ):
        return
    transaction.on_commit(callback, using=alias)


_idle: dict[str, list[Any]] = {}  # alias -> idle raw connections of the drains
_idle_lock = threading.Lock()


def _new_raw(alias: str) -> Any:
    connection = connections[alias]
    raw = connection.get_new_connection(connection.get_connection_params())
    vendor = connection.vendor
    if vendor == "postgresql":
        raw.autocommit = True
    elif vendor == "sqlite":
        raw.isolation_level = None
    else:
        raw.autocommit(True)
    return raw


@contextmanager
def raw_connection(alias: str) -> Iterator[_outbox.Connection]:
    """An autocommit DB-API connection to ``alias`` from cachecow's own small pool: drains
    never run on the application's connection, its transaction or its query counts."""
    with _idle_lock:
        idle = _idle.setdefault(alias, [])
        raw = idle.pop() if idle else None
    if raw is None:
        raw = _new_raw(alias)

    try:
        yield lambda sql: _outbox.run_on(raw, sql)
    except BaseException:
        _close(raw)  # broken, or left mid-transaction: never reused
        raise
    with _idle_lock:
        _idle.setdefault(alias, []).append(raw)


def _close(raw: Any) -> None:
    try:
        raw.close()
    except Exception:
        pass


def close_raw_connections() -> None:
    """Close the idle connections of cachecow's drains (before dropping a database, say)."""
    with _idle_lock:
        idle = [raw for pool in _idle.values() for raw in pool]
        _idle.clear()
    for raw in idle:
        _close(raw)
