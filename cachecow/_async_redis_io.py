"""How the asyncio driver performs a flow's Redis operations with a ``redis.asyncio`` client.

The twin of ``_redis_io.py`` (``tests/pure/test_parity.py`` fails when the two drift), plus what
asyncio needs of its own: on a cluster, a gate on the number of calls under way (redis-py's
asyncio cluster client has no blocking pool), and the cluster's map loaded before the first
command.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import (
    MaxConnectionsError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)

from ._client import check_client, node_script_calls, script_calls
from ._cluster import async_cluster_execute
from ._ops import Command, Pipeline, ReplicatedWrite, Script, all_answered, as_redis_error
from ._redis_io import (
    _UNSENT,
    BatchCall,
    NodeCall,
    each_lookup,
    item_args,
    item_key,
    refuses_node_scripts,
    unanswered,
)

__all__ = ["AsyncRedisIO"]

_UNREAD: Any = object()  # a node pipeline's command whose reply was never read


class AsyncRedisIO:
    """Performs Redis operations on a ``redis.asyncio`` client; refuses one it cannot drive."""

    def __init__(self, client: aredis.Redis) -> None:
        check_client(client, is_async=True)
        self.client: Any = client
        self.cluster = isinstance(client, AsyncRedisCluster)
        self.execute: Callable[..., Any] = (
            async_cluster_execute(client) if self.cluster else client.execute_command
        )
        self.scripts = script_calls()
        # The node forms of the batch scripts, on a cluster: None once a node refused one (a
        # server older than Redis 7); each node then gets one call per slot.
        self.node_scripts = node_script_calls(self.scripts) if self.cluster else None
        # redis-py 8.1's asyncio cluster client has no blocking pool: a call that finds a
        # node's max_connections in use fails at once. A gate of that many calls at a time
        # (each uses at most one connection per node) makes the others wait, bounded by the
        # socket timeout, as connect_async()'s blocking pool does.
        self.gate: asyncio.Semaphore | None = None
        self.gate_timeout = 0.5
        if self.cluster:
            options = client.nodes_manager.connection_kwargs  # type: ignore[attr-defined]
            self.gate = asyncio.Semaphore(options.get("max_connections") or 100)
            self.gate_timeout = options.get("socket_timeout") or 0.5
        # Where an ACL refuses script commands (NOPERM) but EVAL works: without SCRIPT LOAD,
        # a NOSCRIPT is answered by EVAL (which caches the script for the next EVALSHA);
        # without EVALSHA, every script goes by EVAL. Set on the first refusal.
        self.no_script_load = False
        self.eval_only = False

    async def ready(self) -> BaseException | None:
        """Load a cluster's map before a flow's first command (a no-op once loaded); the
        error if the cluster cannot be reached. Without it, redis-py 8.1 routes a script to a
        random node, and every 5th MOVED reply closes every connection, those of concurrent
        calls too. Only called for a cluster client."""
        try:
            await self.client.initialize()
        except (RedisError, RedisClusterException) as exc:
            return as_redis_error(exc)
        return None

    def perform(self, op: Script | Command | Pipeline | ReplicatedWrite) -> Awaitable[Any]:
        """Run one operation; its reply (or its replies, for a batch). On a cluster, once fewer
        than ``max_connections`` calls are under way (waiting at most the socket timeout, then
        ``MaxConnectionsError``); off a cluster, no coroutine around the call."""
        if isinstance(op, Script):
            call = self.script(op)
        elif isinstance(op, Command):
            call = self.execute(*op.args)
        elif isinstance(op, Pipeline):
            call = self.pipeline(op)
        else:
            call = self.replicated(op)
        return call if self.gate is None else self._through_gate(self.gate, call)

    async def _through_gate(self, gate: asyncio.Semaphore, call: Coroutine[Any, Any, Any]) -> Any:
        try:
            await asyncio.wait_for(gate.acquire(), self.gate_timeout)
        except BaseException as exc:  # never sent (a timeout, a cancellation): close it unrun
            call.close()
            if isinstance(exc, TimeoutError):
                raise MaxConnectionsError(
                    f"no cluster connection freed up within {self.gate_timeout}s"
                ) from None
            raise
        try:
            return await call
        finally:
            gate.release()

    async def scan(self, pattern: str, count: int) -> AsyncIterator[bytes]:
        """The keys matching ``pattern``, ``count`` at a time (on a cluster, every primary's)."""
        nodes = {"target_nodes": AsyncRedisCluster.PRIMARIES} if self.cluster else {}
        async for key in self.client.scan_iter(match=pattern, count=count, **nodes):
            yield key

    async def one(self, item: Script | Command) -> Any:
        """A batch item sent alone (through the cluster client, which follows moves)."""
        if isinstance(item, Script):
            return await self.script(item)
        return await self.execute(*item.args)

    async def script(self, op: Script) -> Any:
        if op.shared is not None and self.cluster:
            return await self._cluster_batch(BatchCall(op))
        call = self.scripts[op.name]
        if self.eval_only:
            return await self.execute(*call.eval_args(op.keys, op.args))
        try:
            return await self.execute(*call.args(op.keys, op.args))
        except NoScriptError:  # a restarted server, a failover, SCRIPT FLUSH
            if self.no_script_load:  # EVAL, which also caches it for the next EVALSHA
                return await self.execute(*call.eval_args(op.keys, op.args))
            try:
                if self.cluster:  # every primary at once, not one node per NOSCRIPT
                    primaries = self.client.get_primaries()
                    await self.execute("SCRIPT", "LOAD", call.source, target_nodes=primaries)
                else:
                    await self.client.script_load(call.source)
            except NoPermissionError:  # an ACL without SCRIPT LOAD: EVAL, from now on
                reply = await self.execute(*call.eval_args(op.keys, op.args))
                self.no_script_load = True
                return reply
            try:
                return await self.execute(*call.args(op.keys, op.args))
            except NoScriptError:  # flushed again between the load and the call
                return await self.execute(*call.eval_args(op.keys, op.args))
        except NoPermissionError:  # an ACL without EVALSHA: EVAL for every script from now on
            reply = await self.execute(*call.eval_args(op.keys, op.args))
            self.eval_only = True
            return reply

    async def pipeline(self, op: Pipeline) -> list[Any]:
        if self.cluster:
            return await self._cluster_pipeline(op)
        pipe: Any = self.client.pipeline(transaction=False)
        for item in op.ops:
            pipe.execute_command(*self._item_args(item))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for index, (item, reply) in enumerate(zip(op.ops, replies, strict=True)):
            # A script that Redis did not run (NOSCRIPT, or NOPERM for EVALSHA): alone, which
            # loads it or falls back to EVAL.
            if isinstance(item, Script) and isinstance(reply, NoScriptError | NoPermissionError):
                replies[index] = await self.script(item)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def replicated(self, op: ReplicatedWrite) -> int:
        """Commands, then WAIT on the same connection; the fewest replicas that acknowledged."""
        if not self.cluster:
            pipe: Any = self.client.pipeline(transaction=False)
            for item in op.ops:
                pipe.execute_command(*item.args)
            pipe.execute_command("WAIT", op.replicas, op.timeout_ms)
            replies = await pipe.execute(raise_on_error=True)
            return int(replies[-1])
        try:
            return await self._replicated_per_node(op)
        except Exception:
            # A moved slot or a failed node: through the cluster client, which follows moves
            # and refreshes its map, then once more with the WAIT (deleting twice is harmless).
            for item in op.ops:
                await self.one(item)
            return await self._replicated_per_node(op)

    async def _replicated_per_node(self, op: ReplicatedWrite) -> int:
        cluster = cast(AsyncRedisCluster, self.client)
        by_node: dict[str, tuple[ClusterNode, list[PipelineCommand]]] = {}
        for index, item in enumerate(op.ops):
            node = cluster.get_node_from_key(item.args[1])
            if node is None:
                raise RedisError(f"no node serves the slot of {item.args[1]!r} now")
            by_node.setdefault(node.name, (node, []))[1].append(PipelineCommand(index, *item.args))
        groups = [
            (node, [*commands, PipelineCommand(-1, "WAIT", op.replicas, op.timeout_ms)])
            for node, commands in by_node.values()
        ]
        await asyncio.gather(*(node.execute_pipeline(commands) for node, commands in groups))
        acked = []
        for _node, commands in groups:
            for command in commands:
                if isinstance(command.result, Exception):
                    raise command.result
            acked.append(int(cast(Any, commands[-1].result)))
        return min(acked, default=op.replicas)

    async def _cluster_pipeline(self, op: Pipeline) -> list[Any]:
        """A batch on Redis Cluster: one pipeline per node (each item touches one slot), the
        nodes concurrently, each pipeline on a connection of its own from its node's pool.

        Then, one at a time, every item that got no good reply goes again alone through the
        cluster client, which loads scripts, follows moves, refreshes its map of the cluster
        and retries (and raises if the error persists): an item whose reply is an error
        (NOSCRIPT after SCRIPT FLUSH or a failover, MOVED/ASK during resharding), and each
        unread item of a node whose pipeline failed as a whole (a dead node, a failover).
        The pipelines bypass the cluster client's error handling, and the items sent alone go
        one at a time once every pipeline is done, for the reason :meth:`ready` loads the map.
        """
        cluster = cast(AsyncRedisCluster, self.client)
        await cluster.initialize()  # a no-op once the client knows the cluster
        by_node: dict[str, tuple[ClusterNode, list[PipelineCommand]]] = {}
        alone: list[int] = []  # the indexes of the items to send alone
        for index, item in enumerate(op.ops):
            try:
                node = cluster.get_node_from_key(item_key(item))
            except RedisError:  # a slot no node serves now: the cluster client will find one
                node = None
            if node is None:
                alone.append(index)
                continue
            command = PipelineCommand(index, *self._item_args(item))
            command.result = _UNREAD
            by_node.setdefault(node.name, (node, []))[1].append(command)
        groups = list(by_node.values())
        if len(groups) == 1:
            await _node_pipeline(*groups[0])
        elif groups:
            await asyncio.gather(*(_node_pipeline(node, commands) for node, commands in groups))
        results: list[Any] = [None] * len(op.ops)
        for _node, commands in groups:
            for command in commands:
                if command.result is _UNREAD or isinstance(command.result, Exception):
                    alone.append(command.position)
                else:
                    results[command.position] = command.result
        failed: RedisError | None = None
        for index in sorted(alone):
            if failed is not None:  # the cluster is failing: send nothing more alone
                results[index] = failed
                continue
            try:
                results[index] = await self.one(op.ops[index])
            except RedisError as exc:
                failed = results[index] = exc
        return all_answered(results)

    async def _cluster_batch(self, batch: BatchCall) -> Any:
        """A batch script's call on Redis Cluster: one call per node (see
        :class:`~cachecow._redis_io.BatchCall`), each in a pipeline of its own, the nodes
        concurrently; then, one slot at a time, the calls of the lookups that got no good reply
        go alone through the cluster client (as in :meth:`_cluster_pipeline`). The reply of
        each lookup (see :func:`~cachecow._ops.all_answered` for the errors)."""
        if len(set(batch.slots)) <= 1:  # one slot: the call as it is, through the cluster client
            return await self.script(batch.item(list(range(batch.count))))
        cluster = cast(AsyncRedisCluster, self.client)
        await cluster.initialize()  # a no-op once the client knows the cluster
        results: list[Any] = [_UNSENT] * batch.count
        groups = [
            (node, batch.calls(lookups, self.scripts, self.node_scripts, eval_only=self.eval_only))
            for node, lookups in batch.by_node(cluster.nodes_manager.slots_cache)
        ]
        if len(groups) == 1:
            replies = [await _node_calls(*groups[0])]
        else:
            replies = await asyncio.gather(*(_node_calls(node, calls) for node, calls in groups))
        for (_node, calls), node_replies in zip(groups, replies, strict=True):
            for call, reply in zip(calls, node_replies, strict=True):
                if reply is not _UNREAD:
                    parts = self._each_lookup(call, reply)
                    for i, part in zip(call.lookups, parts, strict=True):
                        results[i] = part
        again = [i for i in range(batch.count) if unanswered(results[i])]
        await self._batch_alone(batch, again, results)
        return all_answered(results)

    def _each_lookup(self, call: NodeCall, reply: Any) -> list[Any]:
        """Each of ``call``'s lookups' reply, or an error (to send its call again alone)."""
        if call.node_form and refuses_node_scripts(reply):
            self.node_scripts = None  # one call per slot from now on
        return each_lookup(reply, len(call.lookups))

    async def _batch_alone(self, batch: BatchCall, lookups: list[int], results: list[Any]) -> None:
        """Send the calls of ``lookups``, one per slot, through the cluster client (which
        follows moves, loads scripts, refreshes its map and retries); once one fails, the
        others are not sent and fail with it."""
        failed: BaseException | None = None
        for group in batch.by_slot(lookups):
            parts: list[Any] = [failed] * len(group)
            if failed is None:
                try:
                    parts = each_lookup(await self.one(batch.item(group)), len(group))
                except RedisError as exc:
                    failed = exc
                    parts = [exc] * len(group)
            for i, part in zip(group, parts, strict=True):
                results[i] = part

    def _item_args(self, item: Script | Command) -> tuple[Any, ...]:
        return item_args(self.scripts, item, eval_only=self.eval_only)


async def _node_pipeline(node: ClusterNode, commands: list[PipelineCommand]) -> None:
    """Send ``commands`` to ``node`` in one round trip; each reply (or error) lands in its
    command's ``result``. If the pipeline fails as a whole, the commands whose replies were
    not read keep the ``_UNREAD`` mark."""
    try:
        await node.execute_pipeline(commands)
    except Exception:  # a connection lost, refused, timed out, closed under it: not cancelled
        return


async def _node_calls(node: ClusterNode, calls: list[NodeCall]) -> list[Any]:
    """A batch script's ``calls`` to ``node`` in one round trip: each one's reply (or error),
    or ``_UNREAD`` if the pipeline failed before it was read. A script the node has not
    loaded yet (NOSCRIPT) is sent again by EVAL, which loads it as it runs."""
    commands = [PipelineCommand(position, *call.args) for position, call in enumerate(calls)]
    for command in commands:
        command.result = _UNREAD
    await _node_pipeline(node, commands)
    for command, call in zip(commands, calls, strict=True):
        if isinstance(command.result, NoScriptError):
            again = PipelineCommand(0, *call.eval_args())
            again.result = _UNREAD
            await _node_pipeline(node, [again])
            command.result = again.result
    return [command.result for command in commands]
