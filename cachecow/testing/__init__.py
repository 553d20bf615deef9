"""Test support for cachecow and for adapters built on it.

- :mod:`cachecow.testing.server`: start and stop a private ``redis-server`` on a free port.
- :mod:`cachecow.testing.plugin`: pytest fixtures over it (load with
  ``pytest -p cachecow.testing.plugin`` or ``pytest_plugins = ["cachecow.testing.plugin"]``).
- :mod:`cachecow.testing.contract`: the contract suite every cache class must pass, including
  one forced interleaving per protocol race; subclass it in your adapter's tests.

Importing this package needs pytest (``pip install 'cachecow-orm[dev]'``); the library itself
does not.
"""

from .server import (
    RedisClusterServers,
    RedisSentinelGroup,
    RedisServer,
    RedisServerUnavailable,
    free_port,
)

__all__ = [
    "RedisClusterServers",
    "RedisSentinelGroup",
    "RedisServer",
    "RedisServerUnavailable",
    "free_port",
]
