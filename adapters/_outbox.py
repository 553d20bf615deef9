"""Invalidation from the database: triggers record the lookups a write touches in an outbox
table, inside the writer's transaction; drains deliver them to Redis after the commit.

Shared by the SQL adapters and free of any ORM: the SQL is built from a :class:`Watched` table
(its name, its model's label in cache keys and its unique lookups), and it runs through a
:class:`Connection`, an autocommit connection that executes one SQL string.

An outbox row describes itself: the trigger writes the model label, the lookups and the type of
each column beside the values, so anything that can read the table and reach Redis (the
relay thread, ``cachecow relay``) delivers it without importing the application's models.

Rows are claimed in a short transaction that holds their row locks across the Redis round trip
and deletes them only once Redis acknowledged: a drain that dies or fails leaves them for the
next one, and two drains never deliver one row at the same time.

On PostgreSQL a connection can ask for its own rows (:func:`announce`): the trigger then sends
each row to it in the statement's reply, and its commit delivers them with no database round
trip (:class:`Announcements`, :meth:`Drainer.deliver_announced`); drains leave such a row to its
writer for a grace period, and delete it once delivered.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import hashlib
import json
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cachecow import ConfigurationError
from cachecow._protocol import CacheCowBase
from cachecow.keys import Field, build_many_keys, normalize_lookup

__all__ = [
    "ANNOUNCE",
    "CHANNEL",
    "OUTBOX",
    "Announcements",
    "Connection",
    "Drainer",
    "Listener",
    "PgListener",
    "Relay",
    "Watched",
    "announce",
    "decode",
    "install_sql",
    "installed",
    "kind_of",
    "outbox_sql",
    "run_on",
]

logger = logging.getLogger("cachecow")

OUTBOX = "cachecow_outbox"
"""The outbox table's name."""

CHANNEL = "cachecow_outbox"
"""The PostgreSQL NOTIFY channel the triggers signal on."""

ANNOUNCE = "cachecow.announce"
"""The PostgreSQL setting ('on') of a connection whose writes' outbox rows are announced to it."""

TRIGGER_VERSION = "cachecow outbox triggers v2"
"""Marks the PostgreSQL trigger function's current version (older ones are reinstalled)."""

DIALECTS = ("postgresql", "sqlite", "mysql")

Lookup = tuple[str, Field, Any]


# -- column types -------------------------------------------------------------------------------

_KINDS: dict[Any, str] = {
    bool: "bool",
    int: "int",
    str: "str",
    float: "float",
    decimal.Decimal: "decimal",
    uuid.UUID: "uuid",
    dt.datetime: "datetime",
    dt.date: "date",
    dt.time: "time",
    bytes: "bytes",
}

_DECODE: dict[str, Callable[[Any], Any]] = {
    "bool": bool,
    "int": lambda v: v if type(v) is int else int(v),
    "str": lambda v: v if type(v) is str else str(v),
    "float": float,
    "decimal": lambda v: decimal.Decimal(str(v)),
    "uuid": lambda v: uuid.UUID(str(v)),
    "datetime": lambda v: dt.datetime.fromisoformat(v),
    # Django with USE_TZ: aware values, stored as naive UTC where the database has no zones.
    "datetime_utc": lambda v: _utc(dt.datetime.fromisoformat(v)),
    "date": lambda v: dt.date.fromisoformat(v[:10]),
    "time": lambda v: dt.time.fromisoformat(v),
    "bytes": lambda v: bytes.fromhex(v),
}


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def kind_of(python_type: Any, where: str) -> str:
    """How a lookup column's values travel through the outbox; refuse types that cannot."""
    kind = _KINDS.get(python_type)
    if kind is None:
        raise ConfigurationError(
            f"{where}: a unique lookup on a column of Python type "
            f"{getattr(python_type, '__qualname__', python_type)!r} cannot be invalidated from "
            f"the database (supported: {', '.join(sorted(set(_KINDS.values())))})"
        )
    return kind


# -- what a trigger records ---------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """A table whose writes invalidate: its model's label and unique lookups, by column."""

    table: str
    label: str
    lookups: tuple[Field, ...]  # canonical lookups of attribute names
    attrs: tuple[str, ...]  # every attribute of a lookup, once, in order
    columns: tuple[str, ...]  # their column names
    kinds: tuple[str, ...]  # their kinds (see kind_of)
    schema: str | None = None

    @property
    def spec(self) -> str:
        """What each outbox row of this table says of its values (JSON, no quotes inside)."""
        lookups = [list(lk) if isinstance(lk, tuple) else [lk] for lk in self.lookups]
        text = json.dumps([self.label, lookups, list(self.attrs), list(self.kinds)])
        if "'" in text or "\\" in text:
            raise ConfigurationError(f"{self.label}: names must not hold quotes or backslashes")
        return text

    @property
    def tag(self) -> str:
        """A name for this table's triggers: cachecow_<table>, hashed past 40 characters."""
        name = self.table
        if len(name) > 40 or not name.replace("_", "").isalnum():
            name = name[:24] + "_" + hashlib.sha1(name.encode()).hexdigest()[:10]
            name = "".join(c if c.isalnum() else "_" for c in name)
        return f"cachecow_{name}"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _mq(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def outbox_sql(dialect: str) -> list[str]:
    """Create the outbox table (if missing)."""
    if dialect == "postgresql":
        return [
            f"CREATE TABLE IF NOT EXISTS {OUTBOX} (id bigserial PRIMARY KEY, spec text NOT NULL,"
            " lookups json NOT NULL, created timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " owned boolean NOT NULL DEFAULT false)",
            # An outbox of version 1 lacks the column.
            f"ALTER TABLE {OUTBOX} ADD COLUMN IF NOT EXISTS owned boolean NOT NULL DEFAULT false",
        ]
    if dialect == "sqlite":
        return [
            f"CREATE TABLE IF NOT EXISTS {OUTBOX} (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " spec TEXT NOT NULL, lookups TEXT NOT NULL,"
            " created REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0))"
        ]
    if dialect == "mysql":
        return [
            f"CREATE TABLE IF NOT EXISTS {OUTBOX} (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
            " spec TEXT NOT NULL, lookups LONGTEXT NOT NULL,"
            " created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB"
        ]
    raise _unsupported(dialect)


def _unsupported(dialect: str) -> ConfigurationError:
    return ConfigurationError(
        f"cachecow's triggers support PostgreSQL, SQLite and MariaDB/MySQL, not {dialect!r}"
    )


def _values(w: Watched, row: str, dialect: str) -> str:
    """A JSON array of one row's lookup values (``row`` is NEW, OLD or a table alias)."""
    out = []
    for column, kind in zip(w.columns, w.kinds, strict=True):
        if dialect == "mysql":
            ref = f"{row}.{_mq(column)}"
            out.append(f"HEX({ref})" if kind == "bytes" else ref)
        else:
            ref = f"{row}.{_q(column)}"
            if kind == "bytes":
                out.append(f"encode({ref}, 'hex')" if dialect == "postgresql" else f"hex({ref})")
            else:
                out.append(ref)
    function = {"postgresql": "json_build_array", "sqlite": "json_array", "mysql": "JSON_ARRAY"}
    return f"{function[dialect]}({', '.join(out)})"


def install_sql(dialect: str, w: Watched) -> list[str]:
    """Statements that (re)install the triggers of one table: run them again after a change of
    its unique columns. The outbox must exist (see :func:`outbox_sql`)."""
    if not w.lookups:
        return []  # nothing the cache serves: nothing to record
    spec = w.spec
    if dialect == "postgresql":
        return _pg_triggers(w, spec)
    if dialect == "sqlite":
        return _row_triggers(w, spec, dialect, _q)
    if dialect == "mysql":
        return _row_triggers(w, spec, dialect, _mq)
    raise _unsupported(dialect)


def _pg_triggers(w: Watched, spec: str) -> list[str]:
    # Statement-level triggers with transition tables: one outbox row per statement. The
    # transition tables have no indexes, so they are never joined (see the prototype's notes).
    # A connection that announces (see Announcements) gets its rows owned and announced to it
    # by a NOTICE, which it delivers itself after its commit; other rows wake the relay.
    table = f"{_q(w.schema)}.{_q(w.table)}" if w.schema else _q(w.table)
    schema = _q(w.schema) + "." if w.schema else ""
    function = f"{schema}{_q(w.tag)}"
    body = _pg_body(w, spec, schema)
    out = [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$cachecow$\n{body}\n$cachecow$"
    ]
    for event, name, tables in [
        ("INSERT", "cachecow_insert", "NEW TABLE AS new_rows"),
        ("UPDATE", "cachecow_update", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "cachecow_delete", "OLD TABLE AS old_rows"),
    ]:
        out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        out.append(
            f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {tables} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    return out


def _pg_body(w: Watched, spec: str, schema: str) -> str:
    """The trigger function's body: one outbox row for the statement's rows, announced to the
    writing connection (owned) or signalled to the relays."""
    cols = ", ".join(_q(c) for c in w.columns)
    values = _values(w, "r", "postgresql")
    # An UPDATE that leaves a row's lookups alone records it once: duplicates are told by
    # their JSON text (UNION would compare the values with their collations: 'A' and 'a' are
    # one value in a case-insensitive one, and the cache would miss the other's entry).
    each = {
        "INSERT": f"SELECT json_agg({values}) INTO lookups FROM new_rows r",
        "UPDATE": (
            "SELECT ('[' || string_agg(v, ',') || ']')::json INTO lookups FROM (SELECT DISTINCT "
            f"{values}::text AS v FROM (SELECT {cols} FROM old_rows UNION ALL SELECT {cols} "
            "FROM new_rows) r) d"
        ),
        "DELETE": f"SELECT json_agg({values}) INTO lookups FROM old_rows r",
    }
    return (
        f"-- {TRIGGER_VERSION}\n"
        "DECLARE lookups json; row_id bigint; owned boolean;\n"
        "BEGIN\n"
        + "".join(
            f"  {'IF' if op == 'INSERT' else 'ELSIF'} TG_OP = '{op}' THEN {sql};\n"
            for op, sql in each.items()
        )
        + "  END IF;\n"
        "  IF lookups IS NULL THEN RETURN NULL; END IF;\n"
        f"  owned := coalesce(current_setting('{ANNOUNCE}', true), '') = 'on'\n"
        "    AND current_setting('client_min_messages') NOT IN ('warning', 'error');\n"
        f"  INSERT INTO {schema}{OUTBOX} (spec, lookups, owned) VALUES ('{spec}', lookups, owned)"
        " RETURNING id INTO row_id;\n"
        "  IF owned THEN\n"
        f"    RAISE NOTICE USING MESSAGE = '{OUTBOX} ' || row_id || ' ' || txid_current() "
        f"|| chr(10) || '{spec}' || chr(10) || lookups;\n"
        f"  ELSE PERFORM pg_notify('{CHANNEL}', ''); END IF;\n"
        "  RETURN NULL;\n"
        "END"
    )


def _row_triggers(w: Watched, spec: str, dialect: str, q: Callable[[str], str]) -> list[str]:
    out = []
    for event, rows in [
        ("INSERT", ["NEW"]),
        ("UPDATE", ["OLD", "NEW"]),
        ("DELETE", ["OLD"]),
    ]:
        name = q(f"{w.tag}_{event.lower()}")
        array = "JSON_ARRAY" if dialect == "mysql" else "json_array"
        values = f"{array}({', '.join(_values(w, row, dialect) for row in rows)})"
        insert = f"INSERT INTO {OUTBOX} (spec, lookups) VALUES ('{spec}', {values})"
        out.append(f"DROP TRIGGER IF EXISTS {name}")
        if dialect == "mysql":
            out.append(f"CREATE TRIGGER {name} AFTER {event} ON {q(w.table)} FOR EACH ROW {insert}")
        else:
            out.append(f"CREATE TRIGGER {name} AFTER {event} ON {q(w.table)} BEGIN {insert}; END")
    if dialect == "sqlite":
        # INSERT OR REPLACE deletes the rows it conflicts with without firing delete triggers
        # (unless recursive_triggers is on): record those rows before the insert.
        name = q(f"{w.tag}_replace")
        conflicts = " OR ".join(
            "(" + " AND ".join(f"o.{q(c)} = NEW.{q(c)}" for c in _lookup_columns(w, lk)) + ")"
            for lk in w.lookups
        )
        out.append(f"DROP TRIGGER IF EXISTS {name}")
        out.append(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {q(w.table)} BEGIN "
            f"INSERT INTO {OUTBOX} (spec, lookups) SELECT '{spec}', "
            f"json_array({_values(w, 'o', dialect)}) FROM {q(w.table)} o WHERE {conflicts}; END"
        )
    return out


def _lookup_columns(w: Watched, lookup: Field) -> list[str]:
    by_attr = dict(zip(w.attrs, w.columns, strict=True))
    return [by_attr[a] for a in (lookup if isinstance(lookup, tuple) else (lookup,))]


class Connection(Protocol):
    """An autocommit database connection: run one SQL string (on PostgreSQL, maybe two
    statements), get the rows of its last statement (if any)."""

    def __call__(self, sql: str) -> list[tuple[Any, ...]]: ...


def run_on(dbapi_connection: Any, sql: str) -> list[tuple[Any, ...]]:
    """:class:`Connection` over a DB-API connection: the rows of the last statement of ``sql``."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        rows: list[tuple[Any, ...]] = []
        while True:
            if cursor.description:
                rows = [tuple(r) for r in cursor.fetchall()]
            try:
                if not cursor.nextset():
                    break
            except Exception:  # no nextset (sqlite3, psycopg2): one result only
                break
        return rows
    finally:
        cursor.close()


def installed(dialect: str, run: Connection, w: Watched) -> bool:
    """Whether ``w``'s three triggers are installed, each recording its current lookups."""
    spec = w.spec
    if dialect == "postgresql":
        schema = f"'{w.schema}'" if w.schema else "current_schema()"
        rows = run(
            "SELECT t.tgname, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relname = '{w.table}' AND n.nspname = {schema} "
            "AND t.tgname IN ('cachecow_insert', 'cachecow_update', 'cachecow_delete')"
        )
    elif dialect == "sqlite":
        rows = run(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
            f"AND tbl_name = '{w.table}' AND name IN ('{w.tag}_insert', '{w.tag}_update', "
            f"'{w.tag}_delete', '{w.tag}_replace')"
        )
    elif dialect == "mysql":
        rows = run(
            "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            f"WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = '{w.table}' "
            f"AND TRIGGER_NAME IN ('{w.tag}_insert', '{w.tag}_update', '{w.tag}_delete')"
        )
    else:
        raise _unsupported(dialect)
    expected = 4 if dialect == "sqlite" else 3
    marks = (spec, TRIGGER_VERSION) if dialect == "postgresql" else (spec,)
    return len(rows) == expected and all(m in str(source) for _, source in rows for m in marks)


# -- reading the outbox -------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _spec(spec: str) -> tuple[str, list[tuple[Field, tuple[int, ...]]], list[Any], tuple[Any, ...]]:
    """A spec read once: its label, each lookup (canonical) with the positions of its values
    in a row, each column's decoder, and each column's type where JSON gives it as it is."""
    label, fields, attrs, kinds = json.loads(spec)
    lookups = []
    for names in fields:
        field, at = normalize_lookup(tuple(names), tuple(attrs.index(n) for n in names))
        lookups.append((field, at if isinstance(at, tuple) else (at,)))
    exact = tuple({"int": int, "str": str, "bool": bool}.get(kind) for kind in kinds)
    return label, lookups, [_DECODE[kind] for kind in kinds], exact


def decode(spec: str, lookups: str) -> list[Lookup]:
    """The ``(label, field, value)`` lookups an outbox row holds, values in their column's type."""
    label, fields, decoders, exact = _spec(spec)
    out: list[Lookup] = []
    # Rows once each (SQLite's and MariaDB's triggers record an UPDATE's unchanged row twice).
    for raw in dict.fromkeys(map(tuple, json.loads(lookups, parse_float=decimal.Decimal))):
        values = raw
        for v, t in zip(raw, exact, strict=True):
            if type(v) is not t and v is not None:  # a value JSON does not give as it is
                pairs = zip(raw, decoders, strict=True)
                values = tuple(None if v is None else d(v) for v, d in pairs)
                break
        for field, at in fields:
            if len(at) == 1:
                value = values[at[0]]
                if value is not None:
                    out.append((label, field, value))
            else:
                value = tuple(values[i] for i in at)
                if not any(v is None for v in value):  # a NULL: no unique lookup matches it
                    out.append((label, field, value))
    return out


@dataclass
class _SQL:
    begin: tuple[str, ...]
    # (limit, skip_locked, grace) -> SELECT or DELETE ... RETURNING; grace: the age from which
    # rows a writer owns are claimed (None: at once)
    claim: Callable[[int, bool, float | None], str]
    delete: Callable[[Sequence[int]], str] | None  # None: the claim deleted the rows already


def _ids(rows: Sequence[int]) -> str:
    return ", ".join(str(int(i)) for i in rows)


def _dialect_sql(dialect: str) -> _SQL:
    if dialect == "postgresql":

        def claim(n: int, skip: bool, grace: float | None) -> str:
            owned = ""
            if grace is not None:
                age = f"clock_timestamp() - interval '{grace:.3f} s'"
                owned = f" WHERE NOT owned OR created < {age}"
            # BEGIN goes with the claim, in one round trip (a simple query of two statements).
            return (
                f"BEGIN; DELETE FROM {OUTBOX} WHERE id IN (SELECT id FROM {OUTBOX}{owned} "
                f"ORDER BY id LIMIT {n} FOR UPDATE{' SKIP LOCKED' if skip else ''}) "
                "RETURNING id, spec, lookups::text"
            )

        return _SQL((), claim, None)
    if dialect == "sqlite":
        # SQLite has no row locks: BEGIN IMMEDIATE takes the write lock for the claim.
        return _SQL(
            ("BEGIN IMMEDIATE",),
            lambda n, skip, grace: (
                f"DELETE FROM {OUTBOX} WHERE id IN (SELECT id FROM {OUTBOX} ORDER BY id "
                f"LIMIT {n}) RETURNING id, spec, lookups"
            ),
            None,
        )
    if dialect == "mysql":
        # READ COMMITTED: no gap locks, so writers' triggers can insert while rows are held.
        return _SQL(
            ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "START TRANSACTION"),
            lambda n, skip, grace: (
                f"SELECT id, spec, lookups FROM {OUTBOX} ORDER BY id LIMIT {n} "
                f"FOR UPDATE{' SKIP LOCKED' if skip else ''}"
            ),
            lambda rows: f"DELETE FROM {OUTBOX} WHERE id IN ({_ids(rows)})",
        )
    raise _unsupported(dialect)


Deliver = Callable[[list[Lookup]], None]
"""Invalidate lookups in Redis, or raise (the rows then stay in the outbox)."""


@dataclass
class DrainStats:
    """What the drains of one :class:`Drainer` did."""

    delivered_rows: int = 0
    delivered_lookups: int = 0
    announced_rows: int = 0  # of delivered_rows: announced to their writer, delivered by it
    failures: int = 0
    skipped: int = 0  # after-commit deliveries left to the relay while Redis was failing
    dropped: int = 0  # rows that could not be read


class Announcements:
    """The outbox rows a psycopg 3 connection's own writes announced to it.

    On PostgreSQL a connection that sets :data:`ANNOUNCE` gets its writes' outbox rows
    *owned*: the trigger sends each row to it as a NOTICE, in the statement's reply, and
    does not wake the relays. After its commit the writer delivers them with no database
    round trip (:meth:`Drainer.deliver_announced`); the relays claim an owned row only once
    it is :attr:`Drainer.grace` seconds old (its writer died, or Redis failed it).
    """

    def __init__(self) -> None:
        self._rows: list[tuple[int, str, str]] = []
        self._transaction = ""  # the transaction that announced them
        self._savepoints: dict[str, int] = {}
        self.count = 0  # rows announced so far

    def __call__(self, diagnostic: Any) -> None:  # psycopg's notice handler
        message = diagnostic.message_primary
        if message and message.startswith(_ANNOUNCED):
            head, spec, lookups = message.split("\n", 2)
            row_id, transaction = head[len(_ANNOUNCED) :].split(" ")
            if transaction != self._transaction:
                # A new transaction: the rows of the last one either were rolled back or
                # committed without their delivery (they wait in the outbox for a relay).
                self._rows.clear()
                self._savepoints.clear()
                self._transaction = transaction
            self._rows.append((int(row_id), spec, lookups))
            self.count += 1

    @property
    def pending(self) -> bool:
        """Whether rows wait to be taken."""
        return bool(self._rows)

    def take(self) -> list[tuple[int, str, str]]:
        """The rows the connection's last transaction announced, if not taken yet (they are
        committed when the connection is idle and that transaction was not rolled back)."""
        rows, self._rows = self._rows, []
        self._savepoints.clear()
        return rows

    def savepoint(self, name: str) -> None:
        """A savepoint was set: :meth:`rollback_to` it forgets the rows announced after."""
        self._savepoints[name] = len(self._rows)

    def rollback_to(self, name: str) -> None:
        """The savepoint was rolled back, and with it the rows announced since it was set."""
        del self._rows[self._savepoints.get(name, len(self._rows)) :]

    @staticmethod
    def of(connection: Any) -> Announcements | None:
        """The announcements of a psycopg 3 connection, if :func:`announce` set it up."""
        try:
            return _announcing.get(connection)
        except TypeError:  # not weakly referable (sqlite3): not a psycopg connection
            return None


_ANNOUNCED = OUTBOX + " "
_announcing: weakref.WeakKeyDictionary[Any, Announcements] = weakref.WeakKeyDictionary()


def announce(connection: Any) -> Announcements:
    """Set a psycopg 3 connection up (once) so that its writes' outbox rows are announced to
    it; it must not be inside a transaction."""
    found = _announcing.get(connection)
    if found is not None:
        return found
    found = Announcements()
    connection.add_notice_handler(found)
    idle = connection.info.transaction_status == 0  # psycopg.pq.TransactionStatus.IDLE
    connection.execute(f"SET {ANNOUNCE} = 'on'")
    if idle and connection.info.transaction_status != 0:
        connection.commit()  # the SET began a transaction: end it, the setting stays
    _announcing[connection] = found
    return found


def idle(connection: Any) -> bool:
    """Whether a psycopg 3 connection is outside any transaction (its writes committed)."""
    return bool(connection.info.transaction_status == 0)


class Drainer:
    """Delivers outbox rows to Redis: claim, invalidate in one round trip, delete, commit.

    :param dialect: ``postgresql``, ``sqlite`` or ``mysql`` (MariaDB).
    :param connect: opens an autocommit :class:`Connection` and closes it (a context manager).
    :param deliver: invalidates lookups in Redis, raising on failure.
    :param batch: rows claimed per transaction.
    :param retry_interval: after a Redis failure, after-commit drains are left to the relay
        for this long (a write never waits on a Redis that is down).
    """

    grace = 0.5
    """The age in seconds from which a drain claims rows announced to their writer
    (PostgreSQL); within ``retry_interval + grace`` of a Redis failure it claims them at once."""

    def __init__(
        self,
        dialect: str,
        connect: Callable[[], Any],
        deliver: Deliver,
        *,
        batch: int = 500,
        retry_interval: float = 1.0,
    ) -> None:
        self.dialect = dialect
        self._sql = _dialect_sql(dialect)
        self._connect = connect
        self._deliver = deliver
        self.batch = batch
        self.retry_interval = retry_interval
        self.stats = DrainStats()
        self._failing_since: float | None = None
        self._failed_at = -math.inf
        self._lock = threading.Lock()
        self._acked: list[int] = []  # announced rows delivered, to delete from the outbox

    @property
    def failing(self) -> bool:
        """Whether the last delivery failed (Redis unreachable): an outage in progress."""
        return self._failing_since is not None

    def _resting(self) -> bool:
        """Whether Redis failed a delivery within ``retry_interval``: writes then leave
        their rows to the relay (a write never waits on a Redis that is down)."""
        since = self._failing_since
        if since is not None and time.monotonic() - since < self.retry_interval:
            self.stats.skipped += 1
            return True
        return False

    def after_commit(self) -> None:
        """Drain after a commit that wrote watched tables: deliver every row visible now,
        waiting for rows another drain holds, so the write's own invalidations have reached
        Redis when this returns. Never raises for Redis: a failure leaves the rows to the
        relay, and is logged once per outage.

        MariaDB skips the rows another drain holds instead: InnoDB's locking read would also
        wait for every transaction still open that inserted outbox rows."""
        if self._resting():
            return
        try:
            self.drain(skip_locked=self.dialect == "mysql")
        except Exception:
            pass  # logged and counted by drain

    def deliver_announced(self, announced: Announcements) -> int:
        """After a commit of the connection of ``announced`` (it must be idle now): deliver
        the rows its writes announced, in one Redis round trip and no database one; return
        how many. Never raises for Redis: a failure leaves the rows to the relays."""
        rows = announced.take()
        if not rows or self._resting():
            return 0
        lookups = self._lookups(rows)
        try:
            self._deliver(lookups)
        except Exception as exc:
            self._failed(exc)
            return 0
        self._recovered()
        self.stats.delivered_rows += len(rows)
        self.stats.announced_rows += len(rows)
        self.stats.delivered_lookups += len(lookups)
        with self._lock:
            self._acked.extend(row[0] for row in rows)
            flush = len(self._acked) >= 4 * self.batch  # no relay deletes them: do it now
        if flush:
            try:
                with self._connect() as run:
                    self._delete_acked(run)
            except Exception as exc:
                logger.warning("deleting delivered outbox rows failed: %s", exc)
        return len(rows)

    def _delete_acked(self, run: Connection) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        try:
            for at in range(0, len(acked), 1000):
                run(f"DELETE FROM {OUTBOX} WHERE id IN ({_ids(acked[at : at + 1000])})")
        except BaseException:
            with self._lock:
                self._acked.extend(acked)  # deleted again next time (a no-op if done)
            raise

    def drain(self, *, skip_locked: bool = True, limit: int | None = None) -> int:
        """Deliver outbox rows until none is left (or ``limit`` rows); return how many.

        Raises what delivering raised (the claimed rows then stay), after logging it.
        """
        total = 0
        with self._connect() as run:
            if self._acked:
                self._delete_acked(run)
            while limit is None or total < limit:
                n = self._drain_once(run, skip_locked)
                total += n
                if n < self.batch:
                    break
        return total

    def _drain_once(self, run: Connection, skip_locked: bool) -> int:
        sql = self._sql
        if self.dialect == "sqlite" and not run(f"SELECT 1 FROM {OUTBOX} LIMIT 1"):
            # Nothing committed to deliver: never wait for the write lock (another
            # connection's transaction may hold it for long, a test's outer one say).
            return 0
        # Rows announced to a writer are its to deliver, unless it is late; after Redis
        # failed, the writers' rows wait for no one.
        outage = time.monotonic() - self._failed_at < self.retry_interval + self.grace
        grace = None if outage else self.grace
        for statement in sql.begin:
            run(statement)
        try:
            rows = run(sql.claim(self.batch, skip_locked, grace))
            if rows:
                lookups = self._lookups(rows)
                self._deliver(lookups)
                if sql.delete is not None:
                    run(sql.delete([row[0] for row in rows]))
        except BaseException as exc:
            run("ROLLBACK")
            self._failed(exc)
            raise
        run("COMMIT")
        if rows:
            self._recovered()
            self.stats.delivered_rows += len(rows)
            self.stats.delivered_lookups += len(lookups)
        return len(rows)

    def _lookups(self, rows: Sequence[tuple[Any, ...]]) -> list[Lookup]:
        if len(rows) == 1:
            return self._decoded(rows[0])
        return list(dict.fromkeys(lk for row in rows for lk in self._decoded(row)))

    def _decoded(self, row: tuple[Any, ...]) -> list[Lookup]:
        """A row's lookups; a row that cannot be read (written by hand, or by a trigger of a
        later version) is logged and dropped: retrying it could never succeed, and keeping it
        would stop every delivery behind it."""
        try:
            return decode(row[1], row[2])
        except (ValueError, TypeError, KeyError, LookupError, AttributeError) as exc:
            self.stats.dropped += 1
            logger.error("outbox row %s cannot be read, dropped (%s): %r", row[0], exc, row[1:])
            return []

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.stats.failures += 1
            first = self._failing_since is None
            self._failing_since = self._failed_at = time.monotonic()
        if first and isinstance(exc, Exception):
            logger.warning(
                "outbox delivery failed, the rows stay for the relay: %s: %s",
                type(exc).__name__,
                exc,
            )

    def _recovered(self) -> None:
        with self._lock:
            was = self._failing_since
            self._failing_since = None
        if was is not None:
            logger.warning("outbox delivery works again")

    def lag(self) -> float:
        """Age in seconds of the oldest row waiting in the outbox (0.0 when it is empty).

        On PostgreSQL a row announced to its writer waits only once it is ``grace`` seconds
        old: before, its writer delivers it, or has delivered it and a drain deletes it."""
        where = ""
        if self.dialect == "postgresql":
            where = f" WHERE NOT owned OR created < clock_timestamp() - interval '{self.grace} s'"
        age = {
            "postgresql": "extract(epoch FROM clock_timestamp() - min(created))",
            "sqlite": "(julianday('now') - 2440587.5) * 86400.0 - min(created)",
            "mysql": "TIMESTAMPDIFF(MICROSECOND, min(created), CURRENT_TIMESTAMP(6)) / 1e6",
        }[self.dialect]
        with self._connect() as run:
            rows = run(f"SELECT {age} FROM {OUTBOX}{where}")
        value = rows[0][0] if rows else None
        return 0.0 if value is None else max(0.0, float(value))


class Listener(Protocol):
    """Wakes the relay when the outbox may have rows (PostgreSQL's LISTEN/NOTIFY)."""

    def wait(self, timeout: float) -> bool:
        """Return True on a notification, False after ``timeout`` seconds."""

    def close(self) -> None:
        """Release the connection it listens on."""


class PgListener:
    """A :class:`Listener` on PostgreSQL: LISTEN on a psycopg 3 connection of its own, made by
    ``connect`` (autocommit, out of any pool), made again after it fails."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._pg: Any = None

    def wait(self, timeout: float) -> bool:
        if self._pg is None:
            pg = self._connect()
            pg.autocommit = True
            pg.execute(f"LISTEN {CHANNEL}")
            self._pg = pg
        try:
            for _ in self._pg.notifies(timeout=timeout, stop_after=1):
                return True
        except Exception:
            self.close()
            raise
        return False

    def close(self) -> None:
        pg, self._pg = self._pg, None
        if pg is not None:
            pg.close()


class Relay:
    """Drains the outbox in a thread of its own: what no after-commit drain delivered (a
    process that died after its commit, writes made outside the application, commits made
    while Redis was down). Woken by a :class:`Listener`, or every ``interval`` seconds.
    """

    def __init__(
        self,
        drainer: Drainer,
        *,
        interval: float = 0.2,
        listener: Listener | None = None,
        name: str = "cachecow-relay",
    ) -> None:
        if interval <= 0:
            raise ConfigurationError(f"relay interval must be positive, got {interval!r}")
        self.drainer = drainer
        self.interval = interval
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (after its current drain or wait) and wait for it."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.drainer.drain(skip_locked=True)
                except Exception:
                    pass  # logged once per outage by the drainer; retried after the interval
                self._pause()
        finally:
            if self._listener is not None:
                self._listener.close()

    def _pause(self) -> None:
        if self._stop.is_set():
            return
        if self._listener is None or self.drainer.failing:
            self._stop.wait(self.interval)
            return
        deadline = time.monotonic() + self.interval
        try:  # in short slices, so that stop() is answered within a quarter of a second
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self._listener.wait(min(left, 0.25)):
                    return
        except Exception as exc:
            logger.warning("cachecow relay: listening failed, retrying: %s", exc)
            self._stop.wait(self.interval)


def deliver_to(cache: Any) -> Deliver:
    """A :data:`Deliver` through a sync cache: every lookup's keys in one ``DEL`` round trip.

    The labels are the model labels the triggers recorded, so no adapter hook runs."""

    def deliver(lookups: list[Lookup]) -> None:
        cache._invalidate_pairs(keys_of(cache, lookups))

    return deliver


def keys_of(cache: Any, lookups: Iterable[Lookup]) -> list[tuple[str, str]]:
    """The Redis keys of outbox lookups (in one pass per field, unless ``get_keys`` is
    overridden)."""
    if type(cache).get_keys is not CacheCowBase.get_keys:
        return [cache.get_keys(label, field, value) for label, field, value in lookups]
    groups: dict[tuple[str, Field], list[Any]] = {}
    for label, field, value in lookups:
        groups.setdefault((label, field), []).append(value)
    return [
        pair
        for (label, field), values in groups.items()
        for pair in build_many_keys(cache.prefix, label, field, values)
    ]
