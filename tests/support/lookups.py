"""Lookup values no adapter may pass to its database: each must raise ``InvalidLookup`` in
every public call, before Redis or the database sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BAD_VALUES: list[Any] = [{"a": 1}, [1], set(), frozenset({1}), object(), (1, [2]), (1, 2)]
"""A dict, a list, sets, an arbitrary object, a tuple holding a list, a tuple for one field."""


def calls(cache: Any, model: Any, field: str, value: Any) -> dict[str, Callable[[], Any]]:
    """Every public call of a sync cache with the lookup ``(model, field, value)``."""
    return {
        "get": lambda: cache.get(model, field, value),
        "get_many": lambda: cache.get_many(model, field, [value]),
        "peek": lambda: cache.peek(model, field, value),
        "invalidate": lambda: cache.invalidate(model, field, value),
        "invalidate_many": lambda: cache.invalidate_many(model, field, [value]),
        "invalidate_lookups": lambda: cache.invalidate_lookups([(model, field, value)]),
    }
