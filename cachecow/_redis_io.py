"""How the synchronous driver performs a flow's Redis operations with a redis-py client.

:class:`RedisIO` runs the operations that reach Redis (:class:`Script`, :class:`Command`,
:class:`Pipeline`, :class:`ReplicatedWrite`) on a single server, a Sentinel-managed master or a
Redis Cluster: scripts by EVALSHA (loaded again after a restart or a failover, or sent by EVAL
where an ACL refuses the script commands), batches as pipelines (per node on a cluster, the
nodes in parallel). ``_async_redis_io.py`` is its asyncio twin.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import redis as redis_py
from redis.cluster import RedisCluster
from redis.exceptions import NoPermissionError, NoScriptError

from ._client import ScriptCall, check_client, script_calls
from ._cluster import cluster_execute
from ._ops import Command, Pipeline, ReplicatedWrite, Script, all_answered
from ._sentinel import mend_sentinel_pool
from ._threads import node_runner

__all__ = ["RedisIO", "item_args"]

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

    def _item_args(self, item: Script | Command) -> tuple[Any, ...]:
        return item_args(self.scripts, item, eval_only=self.eval_only)
