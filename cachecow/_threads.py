"""Worker threads for the sync class's cluster pipelines: one call per node, all nodes at once.

:class:`NodeRunner` never queues a node's call behind another's (an idle worker takes it, or a
new worker starts), starts afresh after ``fork()``, and runs a call in the caller's thread when
no thread can start. Why a plain thread pool is not enough: docs/internals.md#node-runner.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["NodeRunner", "node_runner"]

Call = Callable[[], None]


def _capture(call: Call) -> BaseException | None:
    try:
        call()
    except BaseException as exc:
        return exc
    return None


class _Worker:
    def __init__(self, runner: NodeRunner, idle_seconds: float) -> None:
        self.runner = runner
        self.idle_seconds = idle_seconds
        self.inbox: queue.SimpleQueue[tuple[Call, Future[BaseException | None]]] = (
            queue.SimpleQueue()
        )

    def loop(self) -> None:
        while True:
            try:
                call, done = self.inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                if self.runner._retire(self):
                    return
                continue  # a call was handed over just as the wait ended
            error = _capture(call)
            self.runner._idle_again(self)  # before the caller learns it is done: reusable
            done.set_result(error)


class NodeRunner:
    """Runs calls in worker threads, never queueing one (see the module's docstring)."""

    def __init__(self, *, idle_seconds: float = 30.0) -> None:
        self.idle_seconds = idle_seconds
        self._fresh()

    def _fresh(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def run_all(self, calls: list[Call]) -> list[BaseException | None]:
        """Run every call at once, the first in this thread, the others in workers; wait for
        all of them; return what each raised (``None`` for a call that returned)."""
        if os.getpid() != self._pid:  # a forked child: the parent's workers are not here
            self._fresh()
        first, *others = calls
        handed = [self._hand_over(call) for call in others]
        errors = [_capture(first)]
        errors.extend(done.result() for done in handed)
        return errors

    def _hand_over(self, call: Call) -> Future[BaseException | None]:
        done: Future[BaseException | None] = Future()
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self, self.idle_seconds)
            thread = threading.Thread(target=worker.loop, name="cachecow-node", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no new threads (interpreter shutdown): run it here
                done.set_result(_capture(call))
                return done
        worker.inbox.put((call, done))
        return done

    def _idle_again(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def _retire(self, worker: _Worker) -> bool:
        """Take an idle ``worker`` off the idle list to exit; False if a call was just handed
        to it (it is no longer on the list)."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False

    def idle_workers(self) -> int:
        """How many workers wait for a call now."""
        with self._lock:
            return len(self._idle)


_RUNNER = NodeRunner()


def node_runner() -> NodeRunner:
    """The runner every sync cache shares."""
    return _RUNNER
