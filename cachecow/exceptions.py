"""Exceptions raised by cachecow.

Every exception cachecow raises on its own account derives from :class:`CacheCowError`::

    CacheCowError
    ├── ConfigurationError      (also a ValueError) bad constructor options or client setup
    ├── InvalidLookup           (also a ValueError) a lookup that cannot be turned into a key
    ├── NotFound                (also a LookupError) the object does not exist
    ├── SerializationError      a serializer refused to decode bytes (a bad pickle signature)
    └── CacheUnavailable        Redis failed on a read and ``fail_open`` is off
        └── InvalidationFailed  Redis failed on an invalidation (always raised)

Errors raised by your own ``fetch`` hook are never wrapped: they reach the caller unchanged.
Errors of a cached value (undecodable bytes, a ``verify`` mismatch) are never raised at all:
the value is treated as a miss, deleted and counted.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CacheCowError",
    "CacheUnavailable",
    "ConfigurationError",
    "InvalidLookup",
    "InvalidationFailed",
    "NotFound",
    "SerializationError",
]


class CacheCowError(Exception):
    """The root of every exception cachecow raises on its own account."""


class ConfigurationError(CacheCowError, ValueError):
    """An option given to cachecow is invalid."""


class InvalidLookup(CacheCowError, ValueError):
    """A (field, value) lookup cannot be encoded into a cache key."""


class NotFound(CacheCowError, LookupError):
    """No object exists for the lookup.

    Raise it from ``fetch`` (or return ``None``) to say "no such object": the answer is cached as
    a tombstone for ``tombstone_ttl`` seconds, and every ``get`` of that lookup until then raises
    the exception built by :meth:`CacheCow.not_found` (by default this class), without a fetch.
    """

    def __init__(
        self, model: Any = None, field: Any = None, value: Any = None, message: str | None = None
    ) -> None:
        self.model = model
        self.field = field
        self.value = value
        if message is None:
            name = model if isinstance(model, str) else getattr(model, "__qualname__", repr(model))
            message = f"no {name} with {field}={value!r}" if model is not None else "not found"
        super().__init__(message)


class SerializationError(CacheCowError):
    """A serializer refused to decode bytes (for example, a bad pickle signature).

    Inside ``get`` it is never raised: the value counts as a miss. Encoding failures are not
    wrapped: ``serialize`` raising ``TypeError`` or ``ValueError`` reaches the caller unchanged.
    """


class CacheUnavailable(CacheCowError):
    """Redis could not be used for this operation; the original error is ``__cause__``."""

    def __init__(self, message: str, *, operation: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.operation = operation
        self.keys = keys


class InvalidationFailed(CacheUnavailable):
    """An invalidation did not reach Redis, so the cache may still hold the old value."""
