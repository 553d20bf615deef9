"""What a read does when Redis fails: raise :class:`~cachecow.CacheUnavailable`, or under
``fail_open`` serve from the database, logging the failure at most once per
``fail_open_log_interval``. (An invalidation always raises: see ``_invalidation.py``.)"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._ops import PartialPipelineError
from .exceptions import CacheUnavailable
from .metrics import UNATTRIBUTED

if TYPE_CHECKING:
    from ._protocol import CacheCowBase

    Cache = CacheCowBase[Any]

__all__ = ["redis_failed"]

logger = logging.getLogger("cachecow")


def redis_failed(
    cache: Cache,
    exc: BaseException,
    operation: str,
    keys: tuple[str, ...],
    model: str = UNATTRIBUTED,
) -> None:
    """Count a Redis failure on a read of ``model`` (a label); raise unless ``fail_open``
    (then log, rate-limited)."""
    cache.metrics.incr("redis_errors", 1, model)
    if isinstance(exc, PartialPipelineError):  # the callers see the error itself
        exc = exc.error
    options = cache.options
    if not options.fail_open:
        raise CacheUnavailable(
            f"Redis failed during {operation} ({type(exc).__name__}: {exc}); "
            "pass fail_open=True to serve reads from the database instead",
            operation=operation,
            keys=keys,
        ) from exc
    now = cache.clock.monotonic()
    last = cache._last_error_log
    if last is None or now - last >= options.fail_open_log_interval:
        cache._last_error_log = now
        logger.warning(
            "Redis failed during %s (%s: %s); serving from the database without caching "
            "(logged at most every %gs)",
            operation,
            type(exc).__name__,
            exc,
            options.fail_open_log_interval,
        )
