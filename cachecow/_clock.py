"""Time as the protocol sees it: the clocks (inject a fake one to test waiting without
sleeping) and the backoff of a reader that waits for another's lease."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["AsyncClock", "Clock", "SystemClock", "backoff_delay"]


@runtime_checkable
class Clock(Protocol):
    """Time as the protocol sees it; inject a fake one to test waiting without sleeping."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        ...


@runtime_checkable
class AsyncClock(Clock, Protocol):
    """A clock that can also sleep without blocking an event loop (for AsyncCacheCow)."""

    async def async_sleep(self, seconds: float) -> None:
        """Wait ``seconds`` without blocking the event loop."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.sleep`."""

    def monotonic(self) -> float:
        """Seconds on the system's monotonic clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds``."""
        time.sleep(seconds)

    async def async_sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` without blocking the event loop (used by AsyncCacheCow)."""
        await asyncio.sleep(seconds)


def backoff_delay(attempt: int, unit_random: float, *, first: float, cap: float) -> float:
    """The pause before poll ``attempt`` (0-based) of a waiting reader, in seconds.

    Doubles from ``first`` up to ``cap``, and keeps a random half of it ("equal jitter"), so
    waiters that arrived together do not poll in lockstep.
    """
    base = min(cap, first * (2.0 ** min(attempt, 32)))
    return base / 2.0 + base / 2.0 * unit_random
