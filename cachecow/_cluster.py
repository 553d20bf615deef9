"""Calls through redis-py's cluster clients, mended where redis-py 8.1 fails mid-resharding.

When a cluster grows, slots move to a new master that serves no slot yet. While a slot
migrates, its old owner answers ``ASK`` for the keys it no longer holds, naming the new master.
redis-py builds its map of the cluster from ``CLUSTER SLOTS``, which lists only masters that
serve slots, and follows an ``ASK`` only to a node on that map: to the new master it fails
with an ``AttributeError`` on ``None`` (redis/redis-py#4015, sync and asyncio alike), not a
``RedisError``, so neither ``fail_open`` nor ``InvalidationFailed`` would see it.

:func:`cluster_execute` and :func:`async_cluster_execute` wrap ``execute_command``: on an
``AttributeError`` they add every live master missing from the client's map (from ``CLUSTER
NODES``) and send the command once more; if it fails again the error becomes a
:class:`~redis.exceptions.ClusterError`, which cachecow handles like any Redis failure. The
one retry is safe for every command cachecow sends: each either never reached Redis (the
failure is on the way out) or is harmless twice (a ``DEL``; a commit whose lease is gone is
refused).

The asyncio client fails the same way when, at every 5th ``MOVED`` reply, it closes every
connection under the calls in flight (an ``AttributeError`` on a vanished writer); the same
retry covers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.cluster import PRIMARY, ClusterNode
from redis.exceptions import ClusterError

__all__ = ["async_cluster_execute", "cluster_execute", "missing_masters"]


def missing_masters(nodes: dict[str, Any], known: Any) -> list[tuple[str, int]]:
    """The ``(host, port)`` of each live master in a parsed ``CLUSTER NODES`` reply that is not
    in ``known`` (node names, ``"host:port"``)."""
    missing = []
    for name, info in nodes.items():
        flags = set(str(info.get("flags", "")).split(","))
        host, _, port = str(name).rpartition(":")
        if "master" not in flags or flags & {"fail", "handshake", "noaddr"} or not host:
            continue
        if name not in known and info.get("connected", True):
            missing.append((host, int(port)))
    return missing


def _failed(exc: AttributeError) -> ClusterError:
    return ClusterError(f"redis-py's cluster client failed mid-command: {exc}")


def cluster_execute(cluster: Any) -> Callable[..., Any]:
    """``cluster.execute_command``, mended as this module describes."""
    execute = cluster.execute_command

    def learn_masters() -> None:
        manager: Any = cluster.nodes_manager
        nodes: dict[str, Any] = execute("CLUSTER NODES")
        for host, port in missing_masters(nodes, manager.nodes_cache):
            node: Any = ClusterNode(host, port, server_type=PRIMARY)  # type: ignore[no-untyped-call]
            manager.nodes_cache.setdefault(node.name, node)

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return execute(*args, **kwargs)
        except AttributeError:
            learn_masters()
        try:
            return execute(*args, **kwargs)
        except AttributeError as again:
            raise _failed(again) from again

    return run


def async_cluster_execute(cluster: Any) -> Callable[..., Awaitable[Any]]:
    """``cluster.execute_command`` of an asyncio cluster client, mended the same way."""
    execute = cluster.execute_command

    async def learn_masters() -> None:
        manager: Any = cluster.nodes_manager
        nodes: dict[str, Any] = await execute("CLUSTER NODES")
        for host, port in missing_masters(nodes, manager.nodes_cache):
            node = AsyncClusterNode(host, port, PRIMARY, **manager.connection_kwargs)
            if node.name not in manager.nodes_cache:
                manager.set_nodes(manager.nodes_cache, {node.name: node})

    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await execute(*args, **kwargs)
        except AttributeError:
            await learn_masters()
        try:
            return await execute(*args, **kwargs)
        except AttributeError as again:
            raise _failed(again) from again

    return run
