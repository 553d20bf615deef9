"""Invalidation: delete lookups' value and flag keys in one round trip.

Deleting the flag voids every lease in flight for the lookup: a reader that fetched before the
invalidation finds its token gone at commit, and stores nothing (docs/protocol.md). A lost
invalidation always raises :class:`~cachecow.InvalidationFailed`, whatever ``fail_open`` says:
only the writer can retry it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn

from redis.exceptions import RedisError

from ._ops import Command, Flow, PartialPipelineError, Pipeline, ReplicatedWrite, Sleep
from ._telemetry import decision, label_of_key, logger
from .exceptions import InvalidationFailed
from .metrics import UNATTRIBUTED

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]


def invalidate(cache: Cache, pairs: list[tuple[str, str]]) -> Flow:
    """Delete these ``(value key, flag key)`` pairs: one ``DEL`` (one per cluster slot, in a
    pipeline), then, with ``wait_replicas``, a ``WAIT`` on the same connection."""
    flags = dict(pairs)
    if not flags:
        return
    groups = cache._slot_groups(list(flags))
    ops = tuple(Command(("DEL", *(k for vk in group for k in (vk, flags[vk])))) for group in groups)
    keys = tuple(k for pair in pairs for k in pair)
    models: dict[str, int] = {}  # label -> lookups (of default keys; else "")
    for value_key in flags:
        label = label_of_key(value_key)
        models[label] = models.get(label, 0) + 1
    model = next(iter(models)) if len(models) == 1 else UNATTRIBUTED
    options = cache.options
    try:
        if options.wait_replicas:
            acked = yield ReplicatedWrite(ops, options.wait_replicas, options.wait_replicas_ms)
        elif len(ops) == 1:
            yield ops[0]
        else:
            yield Pipeline(ops)
    except RedisError as exc:
        _failed(cache, exc, keys, model)
    finally:
        # After the delete, not before: a read of this process that got the old bytes
        # before the delete reached Redis must not keep them (its ticket is older than this).
        if cache._near is not None:
            cache._near.drop(flags)
    if options.wait_replicas:
        _check_replicated(cache, acked, keys, model)
    for label, count in models.items():
        cache.metrics.incr("invalidations", count, label)
    if logger.isEnabledFor(logging.DEBUG):
        for value_key in flags:
            decision("invalidate", label_of_key(value_key), value_key)


def _check_replicated(cache: Cache, acked: Any, keys: tuple[str, ...], model: str) -> None:
    """Raise unless ``wait_replicas`` replicas acknowledged an invalidation in time: a failover
    to a replica that never received it would bring the old values back."""
    options = cache.options
    if int(acked) >= options.wait_replicas:
        return
    cache.metrics.incr("redis_errors", 1, model)
    raise InvalidationFailed(
        f"invalidation of {_listed(keys)} reached the master but only {int(acked)} of "
        f"wait_replicas={options.wait_replicas} replicas within {options.wait_replicas_timeout}s; "
        "a failover now could bring old values back: retry it",
        operation="invalidate",
        keys=keys,
    )


def _failed(cache: Cache, exc: BaseException, keys: tuple[str, ...], model: str) -> NoReturn:
    cache.metrics.incr("redis_errors", 1, model)
    if isinstance(exc, PartialPipelineError):  # the callers see the error itself
        exc = exc.error
    raise InvalidationFailed(
        f"invalidation of {_listed(keys)} did not reach Redis ({type(exc).__name__}: {exc}); "
        "the cache may still hold old values",
        operation="invalidate",
        keys=keys,
    ) from exc


def _listed(keys: tuple[str, ...]) -> str:
    return f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"


def pause(seconds: float) -> Flow:
    """Wait ``seconds`` (nothing if not positive), through the driver's clock."""
    if seconds > 0:
        yield Sleep(seconds)


def scan_failed(pattern: str, exc: BaseException) -> InvalidationFailed:
    """The error of an :meth:`invalidate_model` whose ``SCAN`` failed part way."""
    return InvalidationFailed(
        f"invalidate_model could not scan {pattern!r} ({type(exc).__name__}: {exc}); "
        "part of the model's entries may remain: run it again",
        operation="invalidate_model",
    )


def settle_seconds(cache: Cache) -> float:
    """How long until every lease taken before now has expired (``flag_ttl``, with a margin
    for the server's clock running a little slow against this one's)."""
    return cache.options.flag_ttl * 1.01 + 0.01
