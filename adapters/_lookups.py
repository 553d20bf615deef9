"""Unique lookups as every adapter handles them: keys, NULLs, messages, conversion, rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cachecow import InvalidLookup
from cachecow.keys import Field

__all__ = [
    "Lookup",
    "coerce",
    "describe",
    "has_null",
    "keys_of",
    "kwargs_of",
    "refuse",
    "row_lookups",
]

Lookup = tuple[Any, Field, Any]
"""``(model, field, value)``, as :meth:`cachecow.CacheCow.invalidate_lookups` takes them."""


def keys_of(lookup: Field) -> tuple[str, ...]:
    """The field names of a lookup."""
    return lookup if isinstance(lookup, tuple) else (lookup,)


def has_null(value: Any) -> bool:
    """Whether a lookup value is, or holds, None (a NULL no unique lookup can match)."""
    return value is None or (isinstance(value, tuple) and any(v is None for v in value))


def kwargs_of(id_field: Field, id_val: Any) -> dict[str, Any]:
    """A lookup as ORM keyword arguments."""
    if isinstance(id_field, tuple):
        return dict(zip(id_field, id_val, strict=True))
    return {id_field: id_val}


def describe(lookups: Sequence[Field]) -> str:
    """``'id', 'email', (org_id, user_id)``."""
    return ", ".join(
        repr(lookup) if isinstance(lookup, str) else "(" + ", ".join(lookup) + ")"
        for lookup in lookups
    )


def refuse(label: str, id_field: Field, lookups: Sequence[Field], hint: str = "") -> InvalidLookup:
    """The error for a lookup that is not one of ``lookups``."""
    shown = id_field if isinstance(id_field, str) else "(" + ", ".join(id_field) + ")"
    return InvalidLookup(
        f"{label}: {shown!r} is not a unique lookup; valid lookups are {describe(lookups)}{hint}"
    )


def coerce(id_field: Field, id_val: Any, convert: Callable[[str, Any], Any]) -> Any:
    """A lookup value converted field by field (composite values too)."""
    if isinstance(id_field, tuple):
        return tuple(convert(name, value) for name, value in zip(id_field, id_val, strict=True))
    return convert(id_field, id_val)


def row_lookups(model: Any, lookups: Sequence[Field], row: Mapping[str, Any]) -> list[Lookup]:
    """The lookups a row of values (by field name) carries: those it has every field of, and
    whose value holds no NULL."""
    out: list[Lookup] = []
    for lookup in lookups:
        keys = keys_of(lookup)
        if all(k in row for k in keys):
            got = [row[k] for k in keys]
            value = tuple(got) if isinstance(lookup, tuple) else got[0]
            if not has_null(value):
                out.append((model, lookup, value))
    return out
