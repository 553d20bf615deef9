"""The lookups of the public calls: each checked by the cache's ``check_lookup`` and converted
by its ``coerce_lookup``, in the canonical form keys are built from (composite fields sorted),
and the keys of the lookups an invalidation names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .exceptions import InvalidLookup
from .keys import Field, check_value, normalize_lookup

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

__all__ = ["lookups_keys", "normalized", "normalized_many", "object_keys"]


def normalized(cache: Cache, cls: Any, id_field: Any, id_val: Any) -> tuple[Field, Any]:
    """The canonical field and value of a lookup, checked and converted by ``cache``."""
    field, value = normalize_lookup(id_field, id_val)
    cache.check_lookup(cls, field)
    value = cache.coerce_lookup(cls, field, value)
    check_value(value, encoded=False)  # the default keys encode it (or refuse it) anyway
    return field, value


def normalized_many(
    cache: Cache, cls: Any, id_field: Any, id_vals: Iterable[Any]
) -> tuple[Field, list[Any]]:
    """The canonical field and values of a batch (composite values reordered like the field)."""
    if isinstance(id_vals, (str, bytes)) or not isinstance(id_vals, Iterable):
        raise InvalidLookup(f"id_vals must be an iterable of lookup values, got {id_vals!r}")
    field: Field | None = None
    values: list[Any] = []
    for id_val in id_vals:
        field, value = normalize_lookup(id_field, id_val)
        values.append(value)
    if field is None:
        field, _ = (
            normalize_lookup(id_field, (None,) * len(id_field))
            if isinstance(id_field, (tuple, list))
            else normalize_lookup(id_field, None)
        )
    cache.check_lookup(cls, field)
    coerced = [cache.coerce_lookup(cls, field, value) for value in values]
    for value in coerced:
        check_value(value, encoded=False)  # the default keys encode it (or refuse it) anyway
    return field, coerced


def object_keys(cache: Cache, obj: Any, previous: Any, model: Any) -> list[tuple[str, str]]:
    """The keys of every unique lookup of ``obj`` (and of ``previous``, its old values)."""
    cls = type(obj) if model is None else model
    pairs: list[tuple[str, str]] = []
    for source in (obj,) if previous is None else (obj, previous):
        for id_field, id_val in cache.unique_lookups(source):
            field, value = normalize_lookup(id_field, id_val)
            check_value(value, encoded=False)  # the default keys encode it (or refuse it) anyway
            pairs.append(cache.get_keys(cls, field, value))
    return pairs


def lookups_keys(cache: Cache, lookups: Iterable[tuple[Any, Any, Any]]) -> list[tuple[str, str]]:
    """The keys of ``(cls, id_field, id_val)`` lookups, each normalized."""
    pairs = []
    for cls, id_field, id_val in lookups:
        field, value = normalized(cache, cls, id_field, id_val)
        pairs.append(cache.get_keys(cls, field, value))
    return pairs
