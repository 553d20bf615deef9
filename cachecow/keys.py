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
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from .exceptions import ConfigurationError, InvalidLookup

__all__ = [
    "Field",
    "build_keys",
    "build_many_keys",
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


def _text(tag: str, text: str) -> str:
    # Length-prefixed, so no value can forge the boundary of the next one in a tuple.
    return f"{tag}{len(text)}:{text}"


def encode_value(value: Any) -> str:
    """Encode one lookup value canonically, keeping its type; raise :class:`InvalidLookup`."""
    if value is None:
        return "n"
    if isinstance(value, enum.Enum):
        cls = type(value)
        return _text("e", f"{cls.__module__}.{cls.__qualname__}") + encode_value(value.value)
    if isinstance(value, bool):
        return "b1" if value else "b0"
    if isinstance(value, int):
        return _text("i", str(int(value)))
    if isinstance(value, float):
        return _text("f", repr(value + 0.0))  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, str):
        return _text("s", value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _text("y", bytes(value).hex())
    if isinstance(value, decimal.Decimal):
        # + 0 turns -0 into 0; normalize() drops trailing zeros: 1.0 and 1.00 are one value.
        return _text("d", str((value + 0).normalize()) if value.is_finite() else str(value))
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
        return f"({len(value)}:" + "".join(encode_value(v) for v in value) + ")"
    kind: Any = type(value)
    if kind.__str__ is object.__str__ and kind.__repr__ is object.__repr__:
        raise InvalidLookup(
            f"cannot build a cache key from a {kind.__qualname__}: it has no stable text form "
            "(give it __str__, or pass a plain value)"
        )
    # Other types (bson's ObjectId, for one) by their qualified type name and text form.
    return _text("o", f"{kind.__module__}.{kind.__qualname__}") + _text("", str(value))


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
    return (_lookup_head(label, field) + encode_value(value)).encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=1024)
def _lookup_head(label: str, field: Field) -> str:
    """The part of :func:`encode_lookup` that does not depend on the value."""
    fields = field if isinstance(field, tuple) else (field,)
    return "\x00".join(["cachecow-key-v1", _text("", label), *(_text("", f) for f in fields), ""])


@functools.lru_cache(maxsize=1024)
def _readable(prefix: str, label: str, field: Field) -> str:
    """The readable start of a key: ``<prefix><label>:<fields>:``."""
    fields = "+".join(field) if isinstance(field, tuple) else field
    return prefix + _UNSAFE_RE.sub("_", f"{label}:{fields}") + ":"


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
    for value in values:
        kind = type(value)
        if kind is int:  # encode_value's own encodings, without its chain of type tests
            text = str(value)
            encoded = f"i{len(text)}:{text}"
        elif kind is str:
            encoded = f"s{len(value)}:{value}"
        else:
            encoded = encode_value(value)
        body = (head + encoded).encode("utf-8", "surrogatepass")
        value_key = f"{readable}{{{digest(body)}}}"
        out.append((value_key, value_key + ":lease"))
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


def memo_key(model: Any, field: Field, value: Any) -> tuple[Any, ...] | None:
    """A dict key that tells apart every lookup with a distinct cache key (types included),
    for lookups of plain values; ``None`` for lookups that are not worth memoising."""
    kind = type(value)
    if kind in _EXACT_TYPES:
        return (model, field, kind, value)
    if kind is tuple and all(type(v) in _EXACT_TYPES for v in value):
        return (model, field, tuple(type(v) for v in value), value)
    return None
