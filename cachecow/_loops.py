"""The warning of a synchronous cache called inside a running asyncio event loop: every call
then blocks the loop (and every other task on it) until Redis, and ``fetch``, answer."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

__all__ = ["warn_in_loop"]

_OURS = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    # the adapters: installed inside the package, or (editable install) beside it
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adapters") + os.sep,
)


def warn_in_loop(cache: Any) -> None:
    """Warn (once per cache: the caller sets ``_loop_warned``) that ``cache`` blocks a loop,
    pointing at the first caller outside cachecow."""
    cache._loop_warned = True
    level = 1
    frame: Any = sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_OURS):
        frame = frame.f_back
        level += 1
    warnings.warn(
        f"{type(cache).__qualname__} is synchronous and was called inside a running asyncio "
        "event loop: each call blocks the loop until Redis (and fetch) answer. Use "
        "cachecow.AsyncCacheCow (or the adapter's async class), or run the call in a thread "
        "(asyncio.to_thread). Warned once per cache.",
        RuntimeWarning,
        stacklevel=level,
    )
