"""Worker threads for the sync class's cluster batches: one call per node, all nodes at once.

A batch on Redis Cluster sends one pipeline to each node it touches, the nodes in parallel. A
fixed pool of threads would queue a node's call behind others' whenever the pool is busy, and
one stalled node keeps a pool busy: each of its calls holds a thread for the socket timeout
and a fallback call after it, so batches that touch only healthy nodes would wait seconds
behind them (a helper measured 3.5 s with an 8-thread pool and a 0.5 s timeout). So
:class:`NodeRunner` never queues: an idle worker takes each call, or a new worker starts.
Workers are reused while there is work and exit after ``idle_seconds`` without any, so the
number of threads follows the number of node calls in flight, which the application's own
concurrency bounds.

Two more cases a pool gets wrong, handled here: after ``fork()`` the child has none of the
parent's threads (a pool that believes it has idle workers would wait forever), so the runner
starts afresh in a new process; and when no thread can start (at interpreter shutdown, where
a pool refuses new work with a ``RuntimeError``), a call runs in the caller's thread.
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
