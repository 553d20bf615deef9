"""The worker threads of the sync class's cluster batches (cachecow/_threads.py), on their own:
calls never queue, workers are reused and retire when idle, a forked child starts afresh, and
when no thread can start the calls run in the caller's thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cachecow._threads import NodeRunner
from tests.support.forking import passes_in_a_forked_child


def test_every_call_runs_and_reports_what_it_raised() -> None:
    runner = NodeRunner()
    threads: list[str] = []

    def ok() -> None:
        threads.append(threading.current_thread().name)

    def boom() -> None:
        threads.append(threading.current_thread().name)
        raise KeyError("x")

    errors = runner.run_all([ok, boom, ok])
    assert errors[0] is None
    assert errors[2] is None
    assert isinstance(errors[1], KeyError)
    assert threading.current_thread().name in threads  # the first call ran here
    assert threads.count("cachecow-node") == 2


def test_calls_never_queue_behind_blocked_ones() -> None:
    """Twelve calls are held at once (more than a fixed pool of 8 would run); one more call,
    handed over while they are held, still runs at once."""
    runner = NodeRunner()
    gate = threading.Event()
    held = threading.Semaphore(0)

    def blocked() -> None:
        held.release()
        assert gate.wait(10)

    callers = [
        threading.Thread(target=runner.run_all, args=([lambda: None, blocked],)) for _ in range(12)
    ]
    for caller in callers:
        caller.start()
    for _ in range(12):
        assert held.acquire(timeout=5)  # all twelve are held in workers
    ran = threading.Event()
    late = threading.Thread(target=runner.run_all, args=([lambda: None, ran.set],))
    late.start()
    try:
        assert ran.wait(5), "a call waited behind the held ones"
    finally:
        gate.set()
        for caller in [*callers, late]:
            caller.join(10)
    assert runner.idle_workers() == 13


def test_workers_are_reused_then_retire() -> None:
    runner = NodeRunner(idle_seconds=1.0)  # long enough for the reuse below, even under load
    seen: list[int] = []

    def record() -> None:
        seen.append(threading.get_ident())

    runner.run_all([lambda: None, record])
    runner.run_all([lambda: None, record])
    assert seen[0] == seen[1]  # the same worker took both
    assert runner.idle_workers() == 1
    deadline = time.monotonic() + 5
    while runner.idle_workers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.idle_workers() == 0  # it retired after 1 s without work
    runner.run_all([lambda: None, record])  # a new worker starts
    assert len(seen) == 3


def test_a_forked_child_starts_afresh() -> None:
    """The parent has idle workers; the child has none of their threads. A runner that
    trusted its list would hand the child's call to a worker that does not exist there and
    wait forever."""
    runner = NodeRunner()
    runner.run_all([lambda: None, lambda: None, lambda: None])
    assert runner.idle_workers() == 2

    def check() -> bool:
        done: list[int] = []
        runner.run_all([lambda: done.append(1), lambda: done.append(2)])
        return sorted(done) == [1, 2]

    assert passes_in_a_forked_child(check)


def test_when_no_thread_can_start_calls_run_in_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = NodeRunner()

    def refuse(self: Any) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    threads: list[str] = []
    errors = runner.run_all([lambda: threads.append(threading.current_thread().name)] * 3)
    assert errors == [None, None, None]
    assert threads == [threading.current_thread().name] * 3
