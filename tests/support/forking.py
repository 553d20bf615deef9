"""Run a check in a forked child process, for the tests of what survives ``fork()``."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Callable

import pytest


def passes_in_a_forked_child(check: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    """Fork; the child runs ``check`` and exits 0 if it returned True (1 if it returned False
    or raised). The test fails if the child has not exited within ``timeout`` (it is killed)."""
    with warnings.catch_warnings():
        # Python 3.12 warns that forking a process with threads may deadlock: that hazard is
        # what the tests calling this check cachecow survives.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into the test session
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {timeout} s")
        time.sleep(0.02)
