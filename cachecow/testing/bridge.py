"""Blocking access to an :class:`~cachecow.AsyncCacheCow`, for thread-based test scenarios.

The contract suite forces interleavings with threads: a reader blocks inside ``fetch`` until the
test lets it go. :class:`SyncFacade` runs an async cache on an event loop of its own thread and
offers the blocking methods the scenarios call, so the very same scenarios drive the async
class: every ``get`` through a facade is a task on that loop, and concurrent readers are
concurrent tasks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from cachecow._async import AsyncCacheCow

__all__ = ["LoopThread", "SyncFacade"]

T = TypeVar("T")

TIMEOUT = 30.0


class LoopThread:
    """An asyncio event loop running forever in a daemon thread, until :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """Run ``coro`` on the loop and block until it is done; its result or its error."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread, and close the loop."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


class SyncFacade:
    """The blocking face of an :class:`~cachecow.AsyncCacheCow` running on a :class:`LoopThread`.

    ``get``, ``get_many`` and the invalidations block until the coroutine is done; every other
    attribute (``metrics``, ``get_keys``, hooks...) is the async cache's own, and setting an
    attribute (replacing a hook, say) sets it on the async cache.
    """

    def __init__(self, cache: AsyncCacheCow, loop: LoopThread) -> None:
        object.__setattr__(self, "wrapped", cache)
        object.__setattr__(self, "runner", loop)

    wrapped: AsyncCacheCow
    runner: LoopThread

    def get(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return self.runner.run(self.wrapped.get(cls, id_field, id_val))

    def get_many(self, cls: Any, id_field: Any, id_vals: Any) -> list[Any]:
        return self.runner.run(self.wrapped.get_many(cls, id_field, id_vals))

    def invalidate(self, cls: Any, id_field: Any, id_val: Any) -> None:
        self.runner.run(self.wrapped.invalidate(cls, id_field, id_val))

    def invalidate_many(self, cls: Any, id_field: Any, id_vals: Any) -> None:
        self.runner.run(self.wrapped.invalidate_many(cls, id_field, id_vals))

    def invalidate_lookups(self, lookups: Any) -> None:
        self.runner.run(self.wrapped.invalidate_lookups(lookups))

    def invalidate_object(self, obj: Any, *, previous: Any = None, model: Any = None) -> None:
        self.runner.run(self.wrapped.invalidate_object(obj, previous=previous, model=model))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.wrapped, name, value)
