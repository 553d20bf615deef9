"""Calls through redis-py's cluster clients, mended where redis-py 8 fails mid-resharding.

:func:`mend_ask_target` lets an ``ASK`` to a master the client's map does not know yet reach
it (redis/redis-py#4015); :func:`cluster_execute` and :func:`async_cluster_execute` wrap
``execute_command`` so that any other ``AttributeError`` out of the client becomes one retry
with the missing masters added, then a :class:`~redis.exceptions.ClusterError`. Why, and what
was seen: docs/internals.md#ask-to-new-master and #cluster-attributeerror.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.cluster import PRIMARY, ClusterNode
from redis.exceptions import ClusterError

__all__ = ["async_cluster_execute", "cluster_execute", "mend_ask_target", "missing_masters"]

# True while cachecow's own call runs through a cluster client (in this thread, or this task).
_IN_CACHECOW_CALL: ContextVar[bool] = ContextVar("cachecow_cluster_call", default=False)


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


def _add_primary(manager: Any, host: str, port: int, is_async: bool) -> Any:
    """The client's node for the master at ``host:port``, added to its map if missing (at the
    address the client's ``address_remap`` gives, as its own map has it)."""
    remap = getattr(manager, "remap_host_port", None)
    if remap is not None:
        host, port = remap(host, port)
    if is_async:
        node: Any = AsyncClusterNode(host, port, PRIMARY, **manager.connection_kwargs)
        if node.name not in manager.nodes_cache:
            manager.set_nodes(manager.nodes_cache, {node.name: node})
        return manager.nodes_cache[node.name]
    node = ClusterNode(host, port, server_type=PRIMARY)  # type: ignore[no-untyped-call]
    return manager.nodes_cache.setdefault(node.name, node)


def mend_ask_target(cluster: Any, *, is_async: bool) -> None:
    """Make ``cluster.get_node(node_name=...)`` answer an unknown ``host:port`` with a new
    primary node, registered in the client's map, while a cachecow call runs (see above)."""
    if getattr(cluster, "_cachecow_mended", False):
        return  # a second cache on the same client
    real = cluster.get_node

    def get_node(
        host: str | None = None, port: int | None = None, node_name: str | None = None
    ) -> Any:
        node = real(host=host, port=port, node_name=node_name)
        if node is not None or not _IN_CACHECOW_CALL.get():
            return node
        if node_name and not (host or port):  # redis-py 8.1 asks by name
            host, _, port_part = node_name.rpartition(":")
            port = int(port_part) if port_part.isdigit() else None
        if host and port:  # redis-py 8.2 by address
            node = _add_primary(cluster.nodes_manager, host, int(port), is_async)
        return node

    cluster.get_node = get_node
    cluster._cachecow_mended = True


def cluster_execute(cluster: Any) -> Callable[..., Any]:
    """``cluster.execute_command``, mended as this module describes."""
    mend_ask_target(cluster, is_async=False)
    execute = cluster.execute_command

    def learn_masters() -> None:
        manager: Any = cluster.nodes_manager
        nodes: dict[str, Any] = execute("CLUSTER NODES")
        for host, port in missing_masters(nodes, manager.nodes_cache):
            _add_primary(manager, host, port, is_async=False)

    def run(*args: Any, **kwargs: Any) -> Any:
        mark = _IN_CACHECOW_CALL.set(True)
        try:
            try:
                return execute(*args, **kwargs)
            except AttributeError:
                learn_masters()
            try:
                return execute(*args, **kwargs)
            except AttributeError as again:
                raise _failed(again) from again
        finally:
            _IN_CACHECOW_CALL.reset(mark)

    return run


def async_cluster_execute(cluster: Any) -> Callable[..., Awaitable[Any]]:
    """``cluster.execute_command`` of an asyncio cluster client, mended the same way."""
    mend_ask_target(cluster, is_async=True)
    execute = cluster.execute_command

    async def learn_masters() -> None:
        manager: Any = cluster.nodes_manager
        nodes: dict[str, Any] = await execute("CLUSTER NODES")
        for host, port in missing_masters(nodes, manager.nodes_cache):
            _add_primary(manager, host, port, is_async=True)

    async def run(*args: Any, **kwargs: Any) -> Any:
        mark = _IN_CACHECOW_CALL.set(True)
        try:
            try:
                return await execute(*args, **kwargs)
            except AttributeError:
                await learn_masters()
            try:
                return await execute(*args, **kwargs)
            except AttributeError as again:
                raise _failed(again) from again
        finally:
            _IN_CACHECOW_CALL.reset(mark)

    return run
