"""Cache keys: lookups canonicalised, encoded and hashed into a value key and a flag key.

A lookup is ``(model, field, value)``: a field name and a value, or, for a composite unique key,
a tuple of field names and a tuple of values. :func:`normalize_lookup` puts composite lookups in
one canonical order (sorted by field name), so ``(("b", "a"), (2, 1))`` and
``(("a", "b"), (1, 2))`` are the same lookup.

Values are encoded *with their type*: ``5``, ``"5"``, ``5.0`` and ``True`` are four different
lookups with four different keys. This is deliberate: an entry can only be invalidated by the
exact value it was cached under, and a write hook invalidates with the object's own attribute
values. :meth:`cachecow.CacheCow.verify` (by default) refuses to cache an object whose attribute
does not encode to the lookup's value, so a lookup in the wrong type (``"5"`` for an integer
primary key) is served correctly but never cached, and can never leave an entry behind that an
invalidation of ``5`` would miss. Equal instants are one value: aware datetimes are normalised
to UTC, ``Decimal`` values are normalised, and ``-0.0`` is ``0.0``.

A key must be the same in every process, or one process's invalidation misses another's entry.
So only values with a process-independent encoding are keys: ``None``, ``bool``, ``int``,
``float``, ``str``, ``bytes``, ``Decimal``, ``UUID``, ``datetime``, ``date``, ``time``,
``timedelta``, enum members, :mod:`ipaddress` addresses, networks and interfaces, bson's
``ObjectId`` and ``Decimal128``, and tuples (or lists) of these nested at most
:data:`MAX_NESTING` deep. Anything else raises :class:`InvalidLookup`: a set or a frozenset
(its order, and so its key, differs between processes), a dict, any other object.

Both keys share one Redis Cluster hash tag (``{<128-bit xxh3 hex>}``), so every script that
touches both works on any deployment::

    <prefix><model label>:<fields>:{<hash>}          the value key
    <prefix><model label>:<fields>:{<hash>}:lease    the flag key
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import functools
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import xxhash

from ._telemetry import remember_label
from .exceptions import ConfigurationError, InvalidLookup

__all__ = [
    "MAX_NESTING",
    "MEMO_MAX_SIZE",
    "Field",
    "build_keys",
    "build_many_keys",
    "check_value",
    "encode_lookup",
    "encode_value",
    "memo_key",
    "model_label",
    "normalize_lookup",
    "same_value",
    "validate_prefix",
]

Field = str | tuple[str, ...]
"""A lookup's field: one name, or a tuple of names for a composite unique key."""

_PREFIX_RE = re.compile(r"^[^{}\s]*$")
_UNSAFE_RE = re.compile(r"[{}\s]")
_UTC = _dt.timezone.utc

MAX_NESTING = 4
"""How deep tuples of values may nest in a lookup value (a composite lookup's is one deep)."""

# Decimals are encoded in this context, never the thread's own: no rounding, no trap, the same
# text in every process and thread.
_DECIMALS = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)

# Types outside the standard ones that are keyed by their text form, which is canonical and
# process-independent (by their qualified name: a subclass can change its text form).
_TEXT_TYPES = frozenset(
    {
        "bson.objectid.ObjectId",
        "bson.decimal128.Decimal128",
        "datetime.timedelta",
        *(
            f"ipaddress.IPv{v}{kind}"
            for v in (4, 6)
            for kind in ("Address", "Network", "Interface")
        ),
    }
)


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is usable as a key prefix (no braces, no white space)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ConfigurationError(
            f"key prefix {prefix!r} must be a string without braces or white space "
            "(braces would change the Redis Cluster hash tag)"
        )
    return prefix


def normalize_lookup(field: Any, value: Any) -> tuple[Field, Any]:
    """Return the canonical ``(field, value)`` of a lookup, or raise :class:`InvalidLookup`.

    A composite lookup (a tuple or list of field names with as many values) is sorted by field
    name; a one-field composite becomes a plain lookup.
    """
    if isinstance(field, str):
        if not field:
            raise InvalidLookup("the lookup field is an empty string")
        return field, value
    if isinstance(field, (tuple, list)):
        fields = tuple(field)
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise InvalidLookup(f"composite lookup fields must be non-empty strings: {field!r}")
        if len(set(fields)) != len(fields):
            raise InvalidLookup(f"composite lookup names a field twice: {field!r}")
        if not isinstance(value, (tuple, list)) or len(value) != len(fields):
            raise InvalidLookup(
                f"composite lookup {fields!r} needs a tuple of {len(fields)} values, got {value!r}"
            )
        if len(fields) == 1:
            return fields[0], value[0]
        pairs = sorted(zip(fields, value, strict=True), key=lambda pair: pair[0])
        return tuple(f for f, _ in pairs), tuple(v for _, v in pairs)
    raise InvalidLookup(f"a lookup field is a string or a tuple of strings, got {field!r}")


_PLAIN = frozenset({int, str, bytes, bool, float, uuid.UUID, type(None)})
"""Types whose values are always keys (hashable, with an encoding): checked by type alone."""


def check_value(value: Any, *, encoded: bool = True) -> None:
    """Raise :class:`InvalidLookup` unless ``value`` is a lookup value: hashable (a list, a
    dict or a set is not; no database query could take it either) and, if ``encoded``, with a
    key encoding (see :func:`encode_value`; a cache whose ``get_keys`` is its own makes its
    keys its way). Every public call checks its lookups so, before Redis or the database."""
    kind = type(value)
    if kind in _PLAIN or (kind is tuple and all(type(v) in _PLAIN for v in value)):
        return
    try:
        hash(value)
    except TypeError:
        raise InvalidLookup(_unhashable(value)) from None
    if encoded:
        _encode(value, 0)


def _unhashable(value: Any) -> str:
    """Why an unhashable ``value`` is no lookup value."""
    if isinstance(value, (tuple, list)):
        inner = next((v for v in value if not _hashable(v)), value)
        if inner is not value:
            return f"cannot build a cache key from {value!r}: {_unhashable(inner)}"
    kind: Any = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, list):
        return (
            f"cannot build a cache key from a list ({value!r}): a lookup value is hashable; "
            "pass a tuple (for a unique key of several fields, a tuple of field names and a "
            "tuple of values)"
        )
    return _refusal(value, name)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _text(tag: str, text: str) -> str:
    # Length-prefixed, so no value can forge the boundary of the next one in a tuple.
    return f"{tag}{len(text)}:{text}"


def encode_value(value: Any) -> str:
    """Encode one lookup value canonically, keeping its type; raise :class:`InvalidLookup`
    for a value with no process-independent encoding (see the module docstring)."""
    return _encode(value, 0)


def _encode(value: Any, depth: int) -> str:
    """:func:`encode_value` of a value inside ``depth`` tuples."""
    if value is None:
        return "n"
    if isinstance(value, enum.Enum):
        cls = type(value)
        return _text("e", f"{cls.__module__}.{cls.__qualname__}") + _encode(value.value, depth)
    if isinstance(value, bool):
        return "b1" if value else "b0"
    if isinstance(value, int):
        try:
            return _text("i", str(int(value)))
        except ValueError:  # more digits than sys.get_int_max_str_digits(), a setting
            raise InvalidLookup(_BIG_INT) from None
    if isinstance(value, float):
        return _text("f", repr(value + 0.0))  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, str):
        return _text("s", value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _text("y", bytes(value).hex())
    if isinstance(value, decimal.Decimal):
        # Zeros of every sign and exponent are 0; normalize() drops trailing zeros: 1.0 and
        # 1.00 are one value.
        if not value.is_finite():
            return _text("d", str(value))
        return _text("d", "0" if value.is_zero() else str(value.normalize(_DECIMALS)))
    if isinstance(value, uuid.UUID):
        return _text("u", value.hex)
    if isinstance(value, _dt.datetime):
        if value.utcoffset() is not None:
            return _text("dz", value.astimezone(_UTC).isoformat())
        return _text("dn", value.isoformat())
    if isinstance(value, _dt.date):
        return _text("da", value.isoformat())
    if isinstance(value, _dt.time):
        if value.utcoffset() is not None:
            moment = _dt.datetime.combine(_dt.date(2000, 1, 1), value).astimezone(_UTC)
            return _text("tz", moment.timetz().isoformat())
        return _text("t", value.isoformat())
    if isinstance(value, (tuple, list)):
        if depth >= MAX_NESTING:
            raise InvalidLookup(
                f"cannot build a cache key from tuples nested more than {MAX_NESTING} deep "
                "(a composite lookup's value is one tuple of plain values)"
            )
        return f"({len(value)}:" + "".join([_encode(v, depth + 1) for v in value]) + ")"
    kind: Any = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if name in _TEXT_TYPES:  # by its qualified type name and its text form
        return _text("o", name) + _text("", str(value))
    raise InvalidLookup(_refusal(value, name))


_BIG_INT = (
    "cannot build a cache key from an int with more digits than Python converts to text "
    "(sys.get_int_max_str_digits())"
)


def _refusal(value: Any, name: str) -> str:
    """Why ``value`` (of the type named ``name``) cannot be a key, and what to pass instead."""
    head = f"cannot build a cache key from a {name.removeprefix('builtins.')}"
    if isinstance(value, AbstractSet):
        return (
            f"{head}: a set's order, and so its key, differs between processes (another "
            "process's invalidation would miss it); pass a tuple in a fixed order, such as "
            "tuple(sorted(values))"
        )
    if isinstance(value, Mapping):
        return (
            f"{head}: a mapping is not a lookup value; for a unique key of several fields pass "
            "a tuple of field names and a tuple of values"
        )
    return (
        f"{head}: it has no stable text form that is the same in every process; pass None, a "
        "bool, int, float, str, bytes, Decimal, UUID, datetime, date, time, timedelta, enum "
        "member, IP address, ObjectId or a tuple of these (convert it in coerce_lookup and "
        "unique_lookups, or override get_keys)"
    )


def model_label(model: Any) -> str:
    """The model's identity in keys: ``module.QualName`` of a class, or a string label as it is."""
    if isinstance(model, str):
        if not model:
            raise InvalidLookup("the model label is an empty string")
        return model
    if not isinstance(model, type):
        raise InvalidLookup(f"a model is a class or a string label, got {model!r}")
    return f"{model.__module__}.{model.__qualname__}"


def encode_lookup(label: str, field: Field, value: Any) -> bytes:
    """The canonical bytes hashed into a key: label, field names and typed values."""
    return (_lookup_head(label, field) + _encode(value, 0)).encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=1024)
def _lookup_head(label: str, field: Field) -> str:
    """The part of :func:`encode_lookup` that does not depend on the value."""
    fields = field if isinstance(field, tuple) else (field,)
    return "\x00".join(["cachecow-key-v1", _text("", label), *(_text("", f) for f in fields), ""])


@functools.lru_cache(maxsize=1024)
def model_prefix(prefix: str, label: str) -> str:
    """The start of every default key of a model: ``<prefix><label>:``, the label's braces
    and white space made ``_`` (as in the keys)."""
    return prefix + _UNSAFE_RE.sub("_", label) + ":"


def _readable(prefix: str, label: str, field: Field) -> str:
    """The readable start of a key: ``<prefix><label>:<fields>:``."""
    fields = "+".join(field) if isinstance(field, tuple) else field
    readable = prefix + _UNSAFE_RE.sub("_", f"{label}:{fields}") + ":"
    remember_label(readable, label)  # the model of an invalidated key, for its metrics
    return readable


def build_keys(
    prefix: str,
    label: str,
    field: Field,
    value: Any,
    *,
    digest: Callable[[bytes], str] = xxhash.xxh3_128_hexdigest,
) -> tuple[str, str]:
    """Return ``(value_key, flag_key)`` for a normalized lookup (see the module docstring)."""
    value_key = f"{_readable(prefix, label, field)}{{{digest(encode_lookup(label, field, value))}}}"
    return value_key, value_key + ":lease"


def build_many_keys(
    prefix: str, label: str, field: Field, values: Iterable[Any]
) -> list[tuple[str, str]]:
    """:func:`build_keys` for many values of one field: the same keys, computed in one pass."""
    readable = _readable(prefix, label, field)
    head = _lookup_head(label, field)
    digest = xxhash.xxh3_128_hexdigest
    out = []
    try:
        for value in values:
            kind = type(value)
            if kind is int:  # encode_value's own encodings, without its chain of type tests
                text = str(value)
                encoded = f"i{len(text)}:{text}"
            elif kind is str:
                encoded = f"s{len(value)}:{value}"
            else:
                encoded = _encode(value, 0)
            body = (head + encoded).encode("utf-8", "surrogatepass")
            value_key = f"{readable}{{{digest(body)}}}"
            out.append((value_key, value_key + ":lease"))
    except ValueError as exc:
        if isinstance(exc, InvalidLookup):
            raise
        raise InvalidLookup(_BIG_INT) from None  # str() of an int past the digit limit
    return out


_EXACT_TYPES = frozenset({int, str, bytes, bool, uuid.UUID})
"""Types whose equality already implies equal encodings (no normalisation to compare)."""


def same_value(actual: Any, expected: Any) -> bool:
    """Whether two lookup values are one value: equal, with equal typed encodings."""
    kind = type(actual)
    if kind is type(expected) and kind in _EXACT_TYPES:
        return bool(actual == expected)
    try:
        return bool(actual == expected) and encode_value(actual) == encode_value(expected)
    except Exception:
        return False


MEMO_MAX_SIZE = 256
"""The longest string or bytes value (and the most characters and bytes in a tuple value) whose
keys :func:`memo_key` lets a cache memoise: a memo entry never keeps a large value alive."""

_MEMO_INT = 1 << 256  # ints below 2**256 in magnitude (at most 78 digits) are memoised
_MEMO_INT_MIN = -_MEMO_INT
_UUID = uuid.UUID
_MEMO_MAX_ITEMS = 16


def memo_key(model: Any, field: Field, value: Any) -> tuple[Any, ...] | None:
    """A dict key that tells apart every lookup with a distinct cache key (types included),
    for lookups of small plain values; ``None`` for lookups that are not worth memoising
    (other types, strings and bytes over :data:`MEMO_MAX_SIZE`, huge ints, big tuples)."""
    kind = type(value)
    if kind is int:
        if _MEMO_INT_MIN < value < _MEMO_INT:
            return (model, field, kind, value)
    elif kind is str or kind is bytes:
        if len(value) <= MEMO_MAX_SIZE:
            return (model, field, kind, value)
    elif kind is bool or kind is _UUID:
        return (model, field, kind, value)
    elif kind is tuple:
        return _memo_tuple(model, field, value)
    return None


def _memo_tuple(model: Any, field: Field, value: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if len(value) > _MEMO_MAX_ITEMS:
        return None
    size = 0
    kinds = []
    for v in value:
        kind = type(v)
        if kind is int:
            if not _MEMO_INT_MIN < v < _MEMO_INT:
                return None
        elif kind is str or kind is bytes:
            size += len(v)
        elif kind is not bool and kind is not _UUID:
            return None
        kinds.append(kind)
    if size > MEMO_MAX_SIZE:
        return None
    return (model, field, tuple(kinds), value)
