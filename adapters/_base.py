"""What every adapter shares: unique lookups, a model's info and its cache, the lookup hooks,
the batched fetch and the default cache. An adapter supplies :meth:`ModelCache.inspect_model`,
``fetch``, :meth:`ModelCache.select_many` (one query), ``serialize``/``deserialize`` (with
:meth:`ModelInfo.encode_row`/:meth:`ModelInfo.decode_row` for a row of columns) and its
invalidation."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cachecow import InvalidLookup
from cachecow.keys import Field, check_value

from ._codecs import Codec

__all__ = [
    "DefaultCache",
    "Lookup",
    "ModelCache",
    "ModelInfo",
    "filter_in",
    "has_null",
    "keys_of",
    "kwargs_of",
    "to_python",
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


@dataclass(kw_only=True)
class ModelInfo:
    """A model as an adapter sees it: its unique lookups and, for adapters that cache rows,
    the attributes a row holds, their codecs and the fingerprint of the model's schema."""

    cls: Any
    label: str  # the model's name in messages
    lookups: list[Field]  # its unique lookups, the primary key first
    attrs: list[str] = field(default_factory=list)  # the attributes a cached row holds
    codecs: list[Codec] = field(default_factory=list)  # one per attribute
    fingerprint: str = ""  # of the columns: a row cached under another schema is a miss

    @property
    def primary_key(self) -> Field:
        return self.lookups[0]

    @functools.cached_property
    def lookup_keys(self) -> list[str]:
        """Every attribute that is part of a unique lookup, in lookup order."""
        return list(dict.fromkeys(k for lookup in self.lookups for k in keys_of(lookup)))

    def value_of(self, obj: Any, lookup: Field) -> Any:
        if isinstance(lookup, tuple):
            return tuple(getattr(obj, key) for key in lookup)
        return getattr(obj, lookup)

    def unique_lookups(self, obj: Any) -> list[tuple[Field, Any]]:
        """``obj``'s lookups whose value holds no None."""
        values = ((lookup, self.value_of(obj, lookup)) for lookup in self.lookups)
        return [(lookup, value) for lookup, value in values if not has_null(value)]

    def row_lookups(self, row: Mapping[str, Any]) -> list[Lookup]:
        """The lookups whose every field a row of values (by attribute name) has, and whose
        value holds no None."""
        out: list[Lookup] = []
        for lookup in self.lookups:
            keys = keys_of(lookup)
            if all(k in row for k in keys):
                got = [row[k] for k in keys]
                value = tuple(got) if isinstance(lookup, tuple) else got[0]
                if not has_null(value):
                    out.append((self.cls, lookup, value))
        return out

    def by_value(self, lookup: Field, objs: Iterable[Any]) -> dict[Any, Any]:
        """``objs`` by their value of ``lookup``, as ``fetch_many`` returns them."""
        return {self.value_of(obj, lookup): obj for obj in objs}

    def encode_row(self, values: Iterable[Any]) -> list[Any]:
        """The fingerprint, then each attribute's value (in :attr:`attrs` order) encoded."""
        row: list[Any] = [self.fingerprint]
        for codec, value in zip(self.codecs, values, strict=True):
            row.append(None if value is None else codec.encode(value))
        return row

    def decode_row(self, row: Any) -> list[Any]:
        """The attributes' values of an :meth:`encode_row` row; ValueError for another's."""
        if not isinstance(row, list) or len(row) != len(self.attrs) + 1:
            raise ValueError("not a row of this model")
        if row[0] != self.fingerprint:
            raise ValueError("cached under another schema of this model")
        return [
            None if v is None else codec.decode(v)
            for codec, v in zip(self.codecs, row[1:], strict=True)
        ]


InfoT = TypeVar("InfoT", bound=ModelInfo)


class ModelCache(Generic[InfoT]):
    """The hooks every adapter implements alike, on its :class:`ModelInfo`: put it before
    :class:`~cachecow.CacheCow` (or ``AsyncCacheCow``) among the bases, and set
    ``self._models = {}`` in ``__init__``."""

    _models: dict[Any, InfoT]
    lookup_hint = ""  # appended to the refusal of a lookup that is not unique

    def inspect_model(self, cls: Any) -> InfoT:
        """What the adapter knows of ``cls``; ConfigurationError if it cannot cache it."""
        raise NotImplementedError

    def model_info(self, cls: Any) -> InfoT:
        """:meth:`inspect_model`, once per class."""
        info = self._models.get(cls)
        if info is None:
            info = self._models[cls] = self.inspect_model(cls)
        return info

    def check_lookup(self, cls: Any, id_field: Field) -> None:
        info = self.model_info(cls)
        if id_field not in info.lookups:
            asked = id_field if isinstance(id_field, str) else _shown(id_field)
            valid = ", ".join(_shown(lookup) for lookup in info.lookups)
            raise InvalidLookup(
                f"{info.label}: {asked!r} is not a unique lookup; valid lookups are "
                f"{valid}{self.lookup_hint}"
            )

    def coerce_lookup(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        info = self.model_info(cls)
        if isinstance(id_field, str) and isinstance(id_val, (tuple, list)):
            raise InvalidLookup(
                f"{info.label}: {id_field!r} is one field, so its lookup value is one value, "
                f"not {id_val!r}"
            )
        check_value(id_val)  # before the ORM's field converts it (Django makes "{}" of {})
        if isinstance(id_field, tuple):
            return tuple(
                self.coerce_value(info, name, value)
                for name, value in zip(id_field, id_val, strict=True)
            )
        return self.coerce_value(info, id_field, id_val)

    def coerce_value(self, info: InfoT, name: str, value: Any) -> Any:
        """One field's lookup value in its field's type (:meth:`coerce_lookup`, field by
        field); the default keeps it."""
        return value

    def unique_lookups(self, obj: Any) -> Iterable[tuple[Field, Any]]:
        return self.model_info(type(obj)).unique_lookups(obj)

    def select_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> Iterable[Any]:
        """The objects whose ``id_field`` is one of ``id_vals``, read in one query (committed
        data, a transaction of its own), for :meth:`fetch_many`."""
        raise NotImplementedError

    def fetch_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> Mapping[Any, Any]:
        info = self.model_info(cls)
        return info.by_value(id_field, self.select_many(cls, id_field, id_vals))


def _shown(lookup: Field) -> str:
    """``'email'``, ``(org_id, user_id)``."""
    return repr(lookup) if isinstance(lookup, str) else "(" + ", ".join(lookup) + ")"


def to_python(field_of: Callable[[str], Any], name: str, value: Any) -> Any:
    """``value`` as the Django or MongoEngine field ``field_of(name)`` converts it, or as it
    is if it cannot."""
    try:
        return field_of(name).to_python(value)
    except Exception:
        return value


def filter_in(queryset: Any, q: Callable[..., Any], id_field: Field, values: Sequence[Any]) -> Any:
    """``queryset`` narrowed to the lookup ``values``, Django's way (MongoEngine's too): one
    ``__in`` for one field, an OR of ``Q`` objects for a composite one."""
    if isinstance(id_field, str):
        return queryset.filter(**{f"{id_field}__in": list(values)})
    query = q()
    for value in values:
        query |= q(**kwargs_of(id_field, value))
    return queryset.filter(query)


class _Watcher(Protocol):
    def unwatch(self) -> None: ...


C = TypeVar("C", bound=_Watcher)


class DefaultCache(Generic[C]):
    """The cache of a module's ``default_cache()``/``set_default_cache()``: ``cache`` is it
    (None until set or built), made by ``build`` on first use."""

    def __init__(self, build: Callable[[], C]) -> None:
        self.cache: C | None = None
        self._build = build
        self._lock = threading.Lock()

    def get(self) -> C:
        with self._lock:
            if self.cache is None:
                self.cache = self._build()
            return self.cache

    def set(self, cache: C | None) -> None:
        """Make ``cache`` the default; the one it replaces stops watching."""
        with self._lock:
            previous, self.cache = self.cache, cache
        if previous is not None and previous is not cache:
            previous.unwatch()
