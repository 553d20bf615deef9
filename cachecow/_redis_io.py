"""How the synchronous driver performs a flow's Redis operations with a redis-py client.

:class:`RedisIO` runs the operations that reach Redis (:class:`Script`, :class:`Command`,
:class:`Pipeline`, :class:`ReplicatedWrite`) on a single server, a Sentinel-managed master or a
Redis Cluster: scripts by EVALSHA (loaded again after a restart or a failover, or sent by EVAL
where an ACL refuses the script commands), batches as pipelines (per node on a cluster, the
nodes in parallel). On a cluster, a batch script's call over many lookups is split by node,
one call per node whatever the slots of its lookups (see :class:`BatchCall`).
``_async_redis_io.py`` is its asyncio twin.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis as redis_py
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    NoPermissionError,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)

from ._client import ScriptCall, check_client, node_script_calls, script_calls
from ._cluster import cluster_execute
from ._ops import Command, Pipeline, ReplicatedWrite, Script, all_answered, lookup_replies
from ._sentinel import mend_sentinel_pool
from ._threads import node_runner

__all__ = ["BatchCall", "NodeCall", "RedisIO", "item_args"]

_UNSENT: Any = object()  # a batch item with no reply yet


def item_args(
    calls: dict[str, ScriptCall], item: Script | Command, *, eval_only: bool
) -> tuple[Any, ...]:
    """A batch item's command: a script by EVALSHA, or by EVAL where the ACL refuses EVALSHA."""
    if isinstance(item, Script):
        call = calls[item.name]
        return (
            call.eval_args(item.keys, item.args) if eval_only else call.args(item.keys, item.args)
        )
    return item.args


def item_key(item: Script | Command) -> Any:
    """The key whose slot a batch item touches (its first key)."""
    return item.keys[0] if isinstance(item, Script) else item.args[1]


@dataclass(slots=True)
class NodeCall:
    """One command of a node's pipeline for a batch script: a call of ``script`` (the batch
    script itself, for the lookups of one slot, or its node form, ``node_form``) with ``keys``
    and ``argv``, sent as ``args``, for the lookups at ``lookups`` (their indexes)."""

    lookups: list[int]
    script: ScriptCall
    keys: tuple[Any, ...]
    argv: tuple[Any, ...]
    node_form: bool
    args: tuple[Any, ...]

    def eval_args(self) -> tuple[Any, ...]:
        """The call by EVAL, for a node that has not loaded the script (it loads it)."""
        return self.script.eval_args(self.keys, self.argv)


class BatchCall:
    """A batch script's call (a :class:`Script` with ``shared`` set) lookup by lookup, to be
    split over a cluster's nodes.

    Each node gets one call: the script's node form (``cachecow/lua/per_node.lua``) over all
    the node's lookups, or, where they all lie in one slot (or the servers refused the node
    forms), the script itself once per slot, in one pipeline. A call the node answers NOSCRIPT
    is sent again by EVAL on that node. A lookup that the node form answers NOTHERE (its slot
    moved or is migrating), and each lookup of a call that failed, goes again in its slot's
    call alone, through the cluster client, which follows moves and loads scripts."""

    __slots__ = ("count", "op", "per", "slots")

    def __init__(self, op: Script) -> None:
        self.op = op
        self.count = len(op.keys) // 2
        shared = op.shared or 0
        self.per = (len(op.args) - shared) // self.count if self.count else 0
        if len(op.keys) % 2 or shared + self.per * self.count != len(op.args):
            raise ValueError(f"{op.name}: not two keys and {self.per} arguments per lookup")
        self.slots = [key_slot(value_key.encode()) for value_key in op.keys[::2]]

    def _parts(self, i: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """Lookup ``i``'s two keys and its own arguments."""
        start = (self.op.shared or 0) + i * self.per
        return self.op.keys[2 * i : 2 * i + 2], self.op.args[start : start + self.per]

    def item(self, lookups: list[int]) -> Script:
        """The script's own call for these lookups (of one slot)."""
        keys: list[Any] = []
        args: list[Any] = list(self.op.args[: self.op.shared or 0])
        for i in lookups:
            pair, own = self._parts(i)
            keys += pair
            args += own
        return Script(self.op.name, tuple(keys), tuple(args))

    def by_node(self, slots_cache: dict[int, list[Any]]) -> list[tuple[Any, list[int]]]:
        """The lookups grouped by the node that serves their slot, as a cluster client's map
        (``slots_cache``) has it; ``SlotNotCoveredError`` for a slot it has no node for, as
        the client's own ``get_node_from_key``."""
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, slot in enumerate(self.slots):
            nodes = slots_cache.get(slot)
            if not nodes:
                raise SlotNotCoveredError(f'Slot "{slot}" is not covered by the cluster.')
            by_node.setdefault(nodes[0].name, (nodes[0], []))[1].append(i)
        return list(by_node.values())

    def by_slot(self, lookups: list[int]) -> list[list[int]]:
        """``lookups`` grouped by slot."""
        groups: dict[int, list[int]] = {}
        for i in lookups:
            groups.setdefault(self.slots[i], []).append(i)
        return list(groups.values())

    def calls(
        self,
        lookups: list[int],
        scripts: dict[str, ScriptCall],
        node_scripts: dict[str, ScriptCall] | None,
        *,
        eval_only: bool,
    ) -> list[NodeCall]:
        """The commands of the pipeline to the node that serves ``lookups``."""
        node_script = None if node_scripts is None else node_scripts.get(self.op.name)
        slots, first = self.slots, self.slots[lookups[0]]
        if node_script is None or all(slots[i] == first for i in lookups):
            calls = []
            for group in self.by_slot(lookups):
                item, script = self.item(group), scripts[self.op.name]
                args = item_args(scripts, item, eval_only=eval_only)
                calls.append(NodeCall(group, script, item.keys, item.args, False, args))
            return calls
        keys, args, shared, per = self.op.keys, self.op.args, self.op.shared or 0, self.per
        argv: list[Any] = [shared, per, *args[:shared]]
        for i in lookups:
            argv += keys[2 * i : 2 * i + 2]
            if per:
                argv += args[shared + i * per : shared + (i + 1) * per]
        sent = tuple(argv)
        call = node_script.eval_args if eval_only else node_script.args
        return [NodeCall(lookups, node_script, (), sent, True, call((), sent))]


def each_lookup(reply: Any, count: int) -> list[Any]:
    """A batch script's reply for ``count`` lookups (an error: that error for each)."""
    if isinstance(reply, Exception):
        return [reply] * count
    reply = lookup_replies(reply)
    if not isinstance(reply, list) or len(reply) != count:
        return [ResponseError(f"unexpected reply from a batch script: {reply!r}")] * count
    return reply


def send_calls(client: Any, calls: list[NodeCall]) -> Any:
    """Send ``calls`` in one write on a connection of ``client``'s pool (a cluster node's);
    the connection, to read the replies from, or ``None`` if no connection could be had or
    the write failed (the node's calls then go alone, through the cluster client)."""
    pool = client.connection_pool
    try:
        connection = pool.get_connection()
    except RedisError:
        return None
    try:
        connection.send_packed_command(connection.pack_commands([call.args for call in calls]))
    except BaseException as exc:
        connection.disconnect()
        pool.release(connection)
        if isinstance(exc, RedisError):
            return None
        raise
    return connection


def receive_replies(client: Any, connection: Any, count: int) -> list[Any]:
    """The replies of ``count`` calls sent on ``connection`` by :func:`send_calls` (an error
    reply as its exception), then the connection back to ``client``'s pool. If the connection
    fails (lost, timed out), the replies not read are ``_UNSENT`` and the connection is
    dropped: no later call may read a reply meant for this one."""
    replies: list[Any] = []
    if connection is None:
        return [_UNSENT] * count
    pool = client.connection_pool
    try:
        while len(replies) < count:
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except RedisError:
        connection.disconnect()
        replies += [_UNSENT] * (count - len(replies))
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    return replies


def unanswered(result: Any) -> bool:
    """Whether a lookup of a batch got no good reply (none yet, or an error) in its node's
    pipeline: its call is sent again alone."""
    return result is _UNSENT or isinstance(result, Exception)


def refuses_node_scripts(reply: Any) -> bool:
    """Whether a node form's reply says the server cannot run one at all (a server older than
    Redis 7 cannot compile its shebang line, another may not know its flag)."""
    if not isinstance(reply, ResponseError) or isinstance(reply, NoScriptError):
        return False
    text = str(reply).lower()
    return "shebang" in text or "compiling" in text


class RedisIO:
    """Performs Redis operations on a redis-py client; refuses a client it cannot drive."""

    def __init__(self, client: redis_py.Redis) -> None:
        check_client(client, is_async=False)
        mend_sentinel_pool(client)
        self.client: Any = client
        self.cluster = isinstance(client, RedisCluster)
        self.execute: Callable[..., Any] = (
            cluster_execute(client) if self.cluster else client.execute_command
        )
        self.scripts = script_calls()
        # The node forms of the batch scripts, on a cluster: None once a node refused one (a
        # server older than Redis 7); each node then gets one call per slot.
        self.node_scripts = node_script_calls(self.scripts) if self.cluster else None
        # Where an ACL refuses script commands (NOPERM) but EVAL works: without SCRIPT LOAD,
        # a NOSCRIPT is answered by EVAL (which caches the script for the next EVALSHA);
        # without EVALSHA, every script goes by EVAL. Set on the first refusal.
        self.no_script_load = False
        self.eval_only = False

    def perform(self, op: Script | Command | Pipeline | ReplicatedWrite) -> Any:
        """Run one operation; its reply (or its replies, for a batch)."""
        if isinstance(op, Script):
            return self.script(op)
        if isinstance(op, Command):
            return self.execute(*op.args)
        if isinstance(op, Pipeline):
            return self.pipeline(op)
        return self.replicated(op)

    def scan(self, pattern: str, count: int) -> Iterator[bytes]:
        """The keys matching ``pattern``, ``count`` at a time (on a cluster, every primary's)."""
        nodes = {"target_nodes": RedisCluster.PRIMARIES} if self.cluster else {}
        yield from self.client.scan_iter(match=pattern, count=count, **nodes)

    def one(self, item: Script | Command) -> Any:
        """A batch item sent alone (through the cluster client, which follows moves)."""
        if isinstance(item, Script):
            return self.script(item)
        return self.execute(*item.args)

    def script(self, op: Script) -> Any:
        if op.shared is not None and self.cluster:
            return self._cluster_batch(BatchCall(op))
        call = self.scripts[op.name]
        if self.eval_only:
            return self.execute(*call.eval_args(op.keys, op.args))
        try:
            return self.execute(*call.args(op.keys, op.args))
        except NoScriptError:  # a restarted server, a failover, SCRIPT FLUSH
            if self.no_script_load:  # EVAL, which also caches it for the next EVALSHA
                return self.execute(*call.eval_args(op.keys, op.args))
            try:
                if self.cluster:  # every primary at once, not one node per NOSCRIPT
                    primaries = self.client.get_primaries()
                    self.execute("SCRIPT", "LOAD", call.source, target_nodes=primaries)
                else:
                    self.client.script_load(call.source)
            except NoPermissionError:  # an ACL without SCRIPT LOAD: EVAL, from now on
                reply = self.execute(*call.eval_args(op.keys, op.args))
                self.no_script_load = True
                return reply
            try:
                return self.execute(*call.args(op.keys, op.args))
            except NoScriptError:  # flushed again between the load and the call
                return self.execute(*call.eval_args(op.keys, op.args))
        except NoPermissionError:  # an ACL without EVALSHA: EVAL for every script from now on
            reply = self.execute(*call.eval_args(op.keys, op.args))
            self.eval_only = True
            return reply

    def pipeline(self, op: Pipeline) -> list[Any]:
        if self.cluster:
            return self._cluster_pipeline(op)
        pipe: Any = self.client.pipeline(transaction=False)
        for item in op.ops:
            pipe.execute_command(*self._item_args(item))
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for index, (item, reply) in enumerate(zip(op.ops, replies, strict=True)):
            # A script that Redis did not run (NOSCRIPT, or NOPERM for EVALSHA): alone, which
            # loads it or falls back to EVAL.
            if isinstance(item, Script) and isinstance(reply, NoScriptError | NoPermissionError):
                replies[index] = self.script(item)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def replicated(self, op: ReplicatedWrite) -> int:
        """Commands, then WAIT on the same connection; the fewest replicas that acknowledged."""
        if not self.cluster:
            pipe: Any = self.client.pipeline(transaction=False)
            for item in op.ops:
                pipe.execute_command(*item.args)
            pipe.execute_command("WAIT", op.replicas, op.timeout_ms)
            return int(pipe.execute(raise_on_error=True)[-1])
        acked: list[int] = []

        def run(node: Any, indexes: list[int]) -> None:
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
            for index in indexes:
                pipe.execute_command(*op.ops[index].args)
            pipe.execute_command("WAIT", op.replicas, op.timeout_ms)
            acked.append(int(pipe.execute(raise_on_error=True)[-1]))

        try:
            self._per_node(op.ops, run)
        except redis_py.RedisError:
            # A moved slot or a failed node: through the cluster client, which follows moves
            # and refreshes its view of the cluster, then once more with the WAIT (deleting
            # twice is harmless).
            for item in op.ops:
                self.one(item)
            acked.clear()
            self._per_node(op.ops, run)
        return min(acked, default=op.replicas)

    def _per_node(self, ops: tuple[Script | Command, ...], run: Any) -> None:
        """Group a cluster batch's items by the node that owns their slot and call
        ``run(node, indexes)`` for each node, the nodes in parallel."""
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for index, item in enumerate(ops):
            node = self.client.get_node_from_key(item_key(item))
            by_node.setdefault(node.name, (node, []))[1].append(index)
        groups = list(by_node.values())
        if len(groups) == 1:
            run(*groups[0])
            return
        # One node's call in this thread, the others in workers that never queue a call
        # behind another (see cachecow/_threads.py); every call ends before any error rises.
        errors = node_runner().run_all([functools.partial(run, *group) for group in groups])
        for error in errors:
            if error is not None:
                raise error

    def _cluster_pipeline(self, op: Pipeline) -> list[Any]:
        """A batch on Redis Cluster: one pipeline per node (each item touches one slot), the
        nodes in parallel. An item a node refuses (NOSCRIPT, MOVED/ASK during resharding) is
        sent again alone through the cluster client, which loads scripts and follows moves; so
        are all of a node's items when the node fails as a whole (a dead node, a failover): the
        cluster client then refreshes its view of the cluster, retries, or raises. If some
        items still fail while others were answered, :class:`PartialPipelineError` says which."""
        results: list[Any] = [_UNSENT] * len(op.ops)

        def run(node: Any, indexes: list[int]) -> None:
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
            for index in indexes:
                pipe.execute_command(*self._item_args(op.ops[index]))
            try:
                try:
                    replies = pipe.execute(raise_on_error=False)
                except redis_py.RedisError:
                    for index in indexes:
                        results[index] = self.one(op.ops[index])
                    return
                for index, reply in zip(indexes, replies, strict=True):
                    if isinstance(reply, Exception):
                        reply = self.one(op.ops[index])
                    results[index] = reply
            except redis_py.RedisError as exc:  # this node's other items are not sent again
                for index in indexes:
                    if results[index] is _UNSENT:
                        results[index] = exc

        self._per_node(op.ops, run)
        return all_answered(results)

    def _cluster_batch(self, batch: BatchCall) -> Any:
        """A batch script's call on Redis Cluster: one call per node (see :class:`BatchCall`),
        every node's sent before any reply is read, so the nodes work at once, from this
        thread (no worker to hand over to, none to queue behind a stalled node). Then, node by
        node, the lookups that got no good reply go again, alone (once one of a node's fails,
        that node's others are not sent). The reply of each lookup (see
        :func:`~cachecow._ops.all_answered` for the errors)."""
        if len(set(batch.slots)) <= 1:  # one slot: the call as it is, through the cluster client
            return self.script(batch.item(list(range(batch.count))))
        results: list[Any] = [_UNSENT] * batch.count
        node_scripts = self.node_scripts  # the same for every node of this batch
        sent: list[tuple[Any, list[int], list[NodeCall], Any]] = []
        received: list[tuple[Any, list[int], list[NodeCall], list[Any]]] = []
        try:
            for node, lookups in batch.by_node(self.client.nodes_manager.slots_cache):
                client = self.client.get_redis_connection(node)
                calls = batch.calls(lookups, self.scripts, node_scripts, eval_only=self.eval_only)
                sent.append((client, lookups, calls, send_calls(client, calls)))
            while sent:
                client, lookups, calls, connection = sent.pop(0)
                replies = receive_replies(client, connection, len(calls))
                received.append((client, lookups, calls, replies))
        finally:
            for client, _lookups, _calls, connection in sent:  # replies left unread
                if connection is not None:
                    connection.disconnect()
                    client.connection_pool.release(connection)
        for client, lookups, calls, replies in received:
            for call, reply in zip(calls, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    try:  # the node has not loaded it yet: EVAL loads it as it runs
                        reply = client.execute_command(*call.eval_args())
                    except RedisError as exc:
                        reply = exc
                if reply is not _UNSENT:
                    parts = self._each_lookup(call, reply)
                    for i, part in zip(call.lookups, parts, strict=True):
                        results[i] = part
            self._batch_alone(batch, [i for i in lookups if unanswered(results[i])], results)
        return all_answered(results)

    def _each_lookup(self, call: NodeCall, reply: Any) -> list[Any]:
        """Each of ``call``'s lookups' reply, or an error (to send its call again alone)."""
        if call.node_form and refuses_node_scripts(reply):
            self.node_scripts = None  # one call per slot from now on
        return each_lookup(reply, len(call.lookups))

    def _batch_alone(self, batch: BatchCall, lookups: list[int], results: list[Any]) -> None:
        """Send the calls of ``lookups``, one per slot, through the cluster client (which
        follows moves, loads scripts, refreshes its map and retries); once one fails, the
        others are not sent and fail with it."""
        failed: BaseException | None = None
        for group in batch.by_slot(lookups):
            parts: list[Any] = [failed] * len(group)
            if failed is None:
                try:
                    parts = each_lookup(self.one(batch.item(group)), len(group))
                except RedisError as exc:
                    failed = exc
                    parts = [exc] * len(group)
            for i, part in zip(group, parts, strict=True):
                results[i] = part

    def _item_args(self, item: Script | Command) -> tuple[Any, ...]:
        return item_args(self.scripts, item, eval_only=self.eval_only)
