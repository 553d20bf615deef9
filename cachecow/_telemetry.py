"""What the drivers and flows tell about themselves: the durations of the public calls (the
``timed`` decorator, the same on both drivers' methods), the model of an invalidated key, and
the DEBUG record of each decision a read or an invalidation makes (``decision``)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .metrics import UNATTRIBUTED

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

__all__ = ["decision", "label_of_key", "timed"]

logger = logging.getLogger("cachecow")

F = TypeVar("F", bound=Callable[..., Any])
ModelOf = Callable[["Cache", tuple[Any, ...], dict[str, Any]], str]


def first_argument(cache: Cache, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The model label of a call whose first argument is the model (``get(cls, ...)``)."""
    return cache.model_label(args[0] if args else kwargs["cls"])


def object_model(cache: Cache, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The model label of ``invalidate_object(obj, model=...)``."""
    model = kwargs.get("model")
    return cache.model_label(type(args[0] if args else kwargs["obj"]) if model is None else model)


def no_model(cache: Cache, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Calls of many models (``invalidate_lookups``)."""
    return UNATTRIBUTED


def timed(operation: str, model_of: ModelOf = first_argument) -> Callable[[F], F]:
    """Record each call's duration in the cache's metrics, as ``operation`` on the model
    ``model_of`` names (a coroutine method is timed until it finishes)."""

    def decorate(method: F) -> F:
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def timed_async(self: Cache, *args: Any, **kwargs: Any) -> Any:
                started = perf_counter()
                try:
                    return await method(self, *args, **kwargs)
                finally:
                    _record(self, operation, model_of, args, kwargs, perf_counter() - started)

            return cast(F, timed_async)

        @functools.wraps(method)
        def timed_sync(self: Cache, *args: Any, **kwargs: Any) -> Any:
            started = perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                _record(self, operation, model_of, args, kwargs, perf_counter() - started)

        return cast(F, timed_sync)

    return decorate


def _record(
    cache: Cache,
    operation: str,
    model_of: ModelOf,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
) -> None:
    try:
        model = model_of(cache, args, kwargs)
    except Exception:  # the call was refused (a bad model): it raised already
        model = UNATTRIBUTED
    cache.metrics.observe(operation, model, seconds)


_LABELS: dict[str, str] = {}
"""The readable start of default keys (``<prefix><label>:<fields>:``) -> the model label."""


def remember_label(readable: str, label: str) -> None:
    """Note which model label a default key's readable start belongs to (see ``keys.py``)."""
    if len(_LABELS) >= 65536:  # as many models and fields as any application has, and more
        _LABELS.clear()
    _LABELS[readable] = label


def label_of_key(value_key: str) -> str:
    """The model label of a default value key this process has built (``""`` otherwise)."""
    return _LABELS.get(value_key[: value_key.rfind("{")], UNATTRIBUTED)


def decision(event: str, model: str, key: str, **fields: Any) -> None:
    """Log one decision at DEBUG on the ``cachecow`` logger, its fields (``event``, ``model``,
    ``key`` and any more) in the record's ``cachecow`` attribute; nothing when DEBUG is off."""
    if logger.isEnabledFor(logging.DEBUG):
        details = "".join(f" {name}={value!r}" for name, value in fields.items())
        logger.debug(
            "%s model=%s key=%s%s",
            event,
            model,
            key,
            details,
            extra={"cachecow": {"event": event, "model": model, "key": key, **fields}},
        )
