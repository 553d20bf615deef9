"""The lookups of the public calls: each checked by the cache's ``check_lookup`` and converted
by its ``coerce_lookup``, in the canonical form keys are built from (composite fields sorted),
and the keys of the lookups an invalidation names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from .exceptions import InvalidLookup
from .keys import Field, build_many_keys, check_value, memo_key, normalize_lookup

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

__all__ = ["keyed", "keyed_many", "lookups_keys", "normalized", "normalized_many", "object_keys"]

Lookup = tuple[Any, Field, Any]


def normalized(cache: Cache, cls: Any, id_field: Any, id_val: Any) -> tuple[Field, Any]:
    """The canonical field and value of a lookup, checked and converted by ``cache``."""
    field, value = normalize_lookup(id_field, id_val)
    cache.check_lookup(cls, field)
    value = cache.coerce_lookup(cls, field, value)
    check_value(value, encoded=False)  # the default keys encode it (or refuse it) anyway
    return field, value


def keyed(cache: Cache, cls: Any, id_field: Any, id_val: Any) -> tuple[Lookup, tuple[str, str]]:
    """A lookup as a call names it, in canonical form (see :func:`normalized`), and its keys.

    With the default keys, remembered by the call's own arguments (see
    :func:`~cachecow.keys.memo_key`), so a hot lookup is converted and hashed once: conversions
    depend on the lookup alone, and so do the default keys (a cache's own ``get_keys`` may not:
    it may carry a namespace version, say). ``check_lookup`` runs on every call: it may depend
    on more than the lookup (MongoEngine's ``switch_db``)."""
    memo = memo_key(cls, id_field, id_val) if cache._default_keys else None
    if memo is not None:
        try:
            found = cache._lookup_memo.get(memo)
        except TypeError:  # an unhashable model, or a list of fields
            memo = None
        else:
            if found is not None:
                cache.check_lookup(cls, found[0][1])
                return found
    field, value = normalized(cache, cls, id_field, id_val)
    lookup = (cls, field, value)
    found = (lookup, cache.get_keys(cls, field, value))
    if memo is not None:
        _remember(cache, memo, found)
    return found


def keyed_many(
    cache: Cache, cls: Any, id_field: Any, id_vals: Iterable[Any]
) -> tuple[Field, list[Any], list[tuple[str, str]]]:
    """A batch's canonical field and values (see :func:`normalized_many`), and their keys, in
    order; with the default keys each lookup remembered as :func:`keyed` remembers it, in the
    same memo, so a hot batch is converted and hashed once."""
    raw = _values(id_vals)
    memo = cache._lookup_memo
    found: list[tuple[Lookup, tuple[str, str]] | None] = []
    memos: list[Any] = []
    try:
        for id_val in raw if cache._default_keys else ():
            key = memo_key(cls, id_field, id_val)
            memos.append(key)
            found.append(None if key is None else memo.get(key))
    except TypeError:  # an unhashable model, or a list of fields
        found, memos = [], []
    if found and None not in found:  # all remembered: checked only
        cache.check_lookup(cls, cast(tuple[Lookup, Any], found[0])[0][1])
    else:
        missing = [i for i in range(len(raw)) if not found or found[i] is None]
        field, values = normalized_many(cache, cls, id_field, [raw[i] for i in missing])
        if cache._default_keys:
            pairs = build_many_keys(cache.prefix, cache.model_label(cls), field, values)
        else:
            pairs = [cache.get_keys(cls, field, value) for value in values]
        if not found:
            return field, values, pairs
        for i, value, keys in zip(missing, values, pairs, strict=True):
            found[i] = entry = ((cls, field, value), keys)
            if memos[i] is not None:
                _remember(cache, memos[i], entry)
    entries = cast(list[tuple[Lookup, tuple[str, str]]], found)
    return entries[0][0][1], [lookup[2] for lookup, _ in entries], [keys for _, keys in entries]


def _remember(cache: Cache, memo: Any, found: tuple[Lookup, tuple[str, str]]) -> None:
    if len(cache._lookup_memo) >= cache.key_memo_size:
        cache._lookup_memo.clear()
    cache._lookup_memo[memo] = found


def normalized_many(
    cache: Cache, cls: Any, id_field: Any, id_vals: Iterable[Any]
) -> tuple[Field, list[Any]]:
    """The canonical field and values of a batch (composite values reordered like the field)."""
    field: Field | None = None
    values: list[Any] = []
    for id_val in _values(id_vals):
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


def _values(id_vals: Iterable[Any]) -> list[Any]:
    """A batch's lookup values, as a list (a string is not a batch)."""
    if isinstance(id_vals, (str, bytes)) or not isinstance(id_vals, Iterable):
        raise InvalidLookup(f"id_vals must be an iterable of lookup values, got {id_vals!r}")
    return list(id_vals)


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
