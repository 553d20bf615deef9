"""Cache entries: what a read makes of the bytes it found, and what it stores for an object it
fetched. Both run a cache's hooks (``deserialize``/``verify``, ``verify``/``serialize``), so a
cached entry is always one its object's own values reach, which is what invalidations delete.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._ops import _TOMB, _UNUSABLE, TOMBSTONE
from .keys import Field

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

__all__ = ["decoded", "encoded", "fetched", "jittered_ms"]

logger = logging.getLogger("cachecow")


def jittered_ms(seconds: float, jitter: float, unit_random: float) -> int:
    """``seconds`` in milliseconds, shortened by up to ``jitter`` (a fraction); at least 1 ms.

    ``unit_random`` is a number in [0, 1). The configured TTL is the upper bound: jitter only
    ever shortens it, so entries written together expire spread over ``[ttl * (1 - jitter), ttl]``.
    """
    return max(1, int(seconds * 1000.0 * (1.0 - jitter * unit_random)))


def decoded(
    cache: Cache,
    lookup: tuple[Any, Field, Any],
    reply: bytes,
    tally: dict[str, int] | None = None,
    *,
    model: str | None = None,
) -> Any:
    """A hit's object, :data:`_TOMB` for a tombstone, or :data:`_UNUSABLE` (bytes that do not
    decode, or an object that fails ``verify``: a miss).

    What it finds is counted in the metrics (for ``model``, the lookup's model label, which the
    caller may know already), or in ``tally`` for the caller to add at once.
    """
    cls, id_field, id_val = lookup
    if reply == TOMBSTONE:
        outcome, counter = _TOMB, "tombstone_hits"
    else:
        try:
            obj = cache.deserialize(cls, reply)
        except Exception:
            outcome, counter = _UNUSABLE, "decode_failures"
        else:
            try:
                verified = bool(cache.verify(cls, id_field, id_val, obj))
            except Exception:
                verified = False
            outcome, counter = (obj, "hits") if verified else (_UNUSABLE, "verify_failures")
    if tally is None:
        cache.metrics.count(cache.model_label(cls) if model is None else model, (counter,))
    else:
        tally[counter] = tally.get(counter, 0) + 1
    return outcome


def encoded(
    cache: Cache, lookup: tuple[Any, Field, Any], obj: Any, ttl: float
) -> tuple[bytes, int] | None:
    """What to commit for a fetched object, and its TTL in ms, ``ttl`` seconds shortened by the
    jitter (``None``: it may not be cached).

    ``None`` (no such object) is a tombstone. An object that fails ``verify``, or whose bytes
    are over ``max_value_bytes``, is returned to its reader but not cached: counted, and logged
    once per reason, model and field.
    """
    options = cache.options
    if obj is None:
        return TOMBSTONE, options.tombstone_ttl_ms
    if not _verified(cache, lookup, obj):
        cache.metrics.incr("uncacheable", 1, cache.model_label(lookup[0]))
        _not_cached(
            cache,
            lookup,
            "fails verify()",
            "Pass lookup values in the field's own type (5, not '5'), or override verify().",
        )
        return None
    payload = cache.serialize(obj)
    if options.max_value_bytes is not None and len(payload) > options.max_value_bytes:
        cache.metrics.incr("oversized_values", 1, cache.model_label(lookup[0]))
        _not_cached(
            cache,
            lookup,
            f"serializes to over max_value_bytes={options.max_value_bytes}",
            "Raise max_value_bytes (None: no limit) if Redis should hold such values.",
        )
        return None
    return payload, jittered_ms(ttl, options.ttl_jitter, cache._random.random())


def fetched(cache: Cache, lookup: tuple[Any, Field, Any], obj: Any) -> Any:
    """What a caller gets for a fetched object: the object, or the not-found exception."""
    if obj is None:
        raise cache.not_found(*lookup)
    return obj


def _verified(cache: Cache, lookup: tuple[Any, Field, Any], obj: Any) -> bool:
    try:
        return bool(cache.verify(*lookup, obj))
    except Exception:
        return False


def _not_cached(cache: Cache, lookup: tuple[Any, Field, Any], why: str, advice: str) -> None:
    """Log that a fetched object is returned but not cached, once per reason, model and field."""
    cls, id_field, id_val = lookup
    label = cache.model_label(cls)
    if (why, label, id_field) in cache._warned:
        return
    cache._warned.add((why, label, id_field))
    logger.warning(
        "fetch(%s, %r, %r) returned an object that %s; it is returned but never cached. %s "
        "Logged once per model and field.",
        label,
        id_field,
        id_val,
        why,
        advice,
    )
