"""Run a cache's protocol flows against scripted replies: no Redis, no database, no threads.

Every read and invalidation of cachecow is a generator (a *flow*) that yields the operations it
needs, a script call, a Redis command, a ``fetch``, and gets each one's result back; the sync
and asyncio classes only perform them. :class:`Scripted` performs them from a list instead:
each operation the flow yields is answered by the next reply, and recorded, so a test can say
exactly what a read did for any sequence of answers::

    run = Scripted(cache).get(User, "id", 1, [LEASED, {"id": 1}, STORED])
    assert run.names() == ["get_or_lease", "fetch", "commit"]
    assert run.value() == {"id": 1}

A reply is the operation's result (the bytes or code a script returns, ``[bytes, LEASED]``
for a hit that came with the lease to refresh it under ``refresh_ahead``, the object ``fetch``
returns), an exception (raised into the flow at that operation, as the driver would raise a
Redis error or a ``fetch`` error), or a function of the operation (its result computed from
what was sent, such as a token). ``Sleep`` operations need no reply: they are slept on the
cache's clock (give the cache :class:`~cachecow.testing.contract.FakeClock` to wait without
waiting). A flow that yields an operation after the replies ran out, or ends with replies left
over, fails the run with :class:`ScriptError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cachecow._batch import BatchRead, read_many
from cachecow._lookups import keyed_many, normalized, normalized_many
from cachecow._ops import (
    Command,
    Fetch,
    FetchMany,
    Pipeline,
    ReplicatedWrite,
    Script,
    Sleep,
    TimeBoxed,
    Wait,
)
from cachecow._protocol import CacheCowBase

__all__ = ["BUSY", "LEASED", "REFUSED", "STORED", "FlowRun", "ScriptError", "Scripted"]

LEASED = 1
"""``get_or_lease``: the lease is this reader's."""
BUSY = 0
"""``get_or_lease``: another reader holds the lease."""
STORED = 1
"""``commit``: the value was stored under this reader's live lease."""
REFUSED = 0
"""``commit``: the lease was gone (invalidated, expired, taken over); nothing was stored."""


class ScriptError(AssertionError):
    """The flow and its script disagree: an operation with no reply left, or replies unused."""


@dataclass
class FlowRun:
    """What one scripted flow did: the operations it yielded, in order, and how it ended."""

    ops: list[Any] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None

    def names(self) -> list[str]:
        """A short name per operation: a script's name, a command's name (``"DEL"``),
        ``"fetch"``, ``"fetch_many"``, ``"sleep"``, ``"wait"``, ``"pipeline"``,
        ``"replicated_write"``, and ``"timeboxed"`` before the operations of a bounded release."""
        return [_name(op) for op in self.ops]

    def value(self) -> Any:
        """The flow's result, or its exception raised."""
        if self.error is not None:
            raise self.error
        return self.result

    def scripts(self, name: str) -> list[Script]:
        """The calls of script ``name``, in order."""
        return [op for op in self.ops if isinstance(op, Script) and op.name == name]


def _name(op: Any) -> str:
    if isinstance(op, Script):
        return op.name
    if isinstance(op, Command):
        return str(op.args[0])
    return {
        Fetch: "fetch",
        FetchMany: "fetch_many",
        Sleep: "sleep",
        Wait: "wait",
        Pipeline: "pipeline",
        ReplicatedWrite: "replicated_write",
        TimeBoxed: "timeboxed",
    }[type(op)]


class Scripted:
    """Runs the flows of ``cache`` (any :class:`cachecow.CacheCow` or
    :class:`cachecow.AsyncCacheCow`; its client is never called) against scripted replies.

    Each method takes the same arguments as the cache's method of that name, then the replies.
    """

    def __init__(self, cache: CacheCowBase[Any]) -> None:
        self.cache = cache

    def get(self, cls: Any, id_field: Any, id_val: Any, replies: Iterable[Any]) -> FlowRun:
        field, value = normalized(self.cache, cls, id_field, id_val)
        return self.run(self.cache._get_flow((cls, field, value)), replies)

    def get_many(
        self,
        cls: Any,
        id_field: Any,
        id_vals: Iterable[Any],
        replies: Iterable[Any],
        *,
        reader: Any = None,
    ) -> FlowRun:
        """With ``reader`` (any identity, as a thread's id), the batch takes part in single
        flight with the flights already in ``cache._flights``, and a ``Wait`` for another
        reader's flight is answered from the replies too (``True``: it landed)."""
        field, values, keys = keyed_many(self.cache, cls, id_field, id_vals)
        together = None if reader is None else (reader, None)
        flow = read_many(BatchRead(self.cache, cls, field), values, keys, together)
        return self.run(flow, replies)

    def peek(self, cls: Any, id_field: Any, id_val: Any, replies: Iterable[Any]) -> FlowRun:
        field, value = normalized(self.cache, cls, id_field, id_val)
        return self.run(self.cache._peek_flow(cls, field, value), replies)

    def invalidate(self, cls: Any, id_field: Any, id_val: Any, replies: Iterable[Any]) -> FlowRun:
        field, value = normalized(self.cache, cls, id_field, id_val)
        return self.run(self.cache._invalidate_flow(cls, field, value), replies)

    def invalidate_many(
        self, cls: Any, id_field: Any, id_vals: Iterable[Any], replies: Iterable[Any]
    ) -> FlowRun:
        field, values = normalized_many(self.cache, cls, id_field, id_vals)
        pairs = [self.cache.get_keys(cls, field, value) for value in values]
        return self.run(self.cache._invalidate_keys_flow(pairs), replies)

    def run(self, flow: Any, replies: Iterable[Any]) -> FlowRun:
        """Drive ``flow`` (a generator of operations) with ``replies``."""
        run = FlowRun()
        pending = iter(replies)
        try:
            run.result = _drive(flow, pending, run.ops, self.cache.clock.sleep)
        except ScriptError:
            raise
        except BaseException as exc:  # the flow's own outcome, a cancellation included
            run.error = exc
        left = list(pending)
        if left:
            raise ScriptError(
                f"the flow ended ({_ending(run)}) with {len(left)} replies unused: {left!r}; "
                f"it yielded {run.names()}"
            )
        return run


def _ending(run: FlowRun) -> str:
    return "returned" if run.error is None else f"raised {type(run.error).__name__}"


def _drive(flow: Any, replies: Iterator[Any], ops: list[Any], sleep: Any) -> Any:
    """Perform the flow's operations from ``replies`` as a driver would; its return value."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value
        ops.append(op)
        result, error = None, None
        if isinstance(op, Sleep):
            sleep(op.seconds)
            continue
        if isinstance(op, TimeBoxed):  # a bounded release: its operations are scripted too
            _drive(op.flow, replies, ops, sleep)
            continue
        try:
            reply = next(replies)
        except StopIteration:
            flow.close()
            raise ScriptError(f"no reply left for {_name(op)} (operations: {ops!r})") from None
        if isinstance(reply, BaseException):
            error = reply
        elif callable(reply):
            result = reply(op)
        else:
            result = reply
