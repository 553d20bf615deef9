"""cachecow: cache ORM objects in Redis; nothing read before an invalidation is cached after it.

A leased cache-aside protocol: a reader that misses takes a lease (a flag key holding a random
token) before it reads the database, and stores what it read only if its lease survived, so a
value read before an invalidation is never cached after it.
"""

from ._async import AsyncCacheCow
from ._clock import AsyncClock, Clock, SystemClock
from ._connect import (
    connect,
    connect_async,
    connect_cluster,
    connect_cluster_async,
    connect_sentinel,
    connect_sentinel_async,
)
from ._core import CacheCow
from ._ops import TOMBSTONE
from ._options import BusyName, BusyPolicy, CacheOptions
from ._version import __version__
from .exceptions import (
    CacheCowError,
    CacheUnavailable,
    ConfigurationError,
    InvalidationFailed,
    InvalidLookup,
    NotFound,
    SerializationError,
)
from .metrics import Metrics, MetricsSnapshot
from .serializers import JsonSerializer, MsgpackSerializer, PickleSerializer, Serializer

__all__ = [
    "TOMBSTONE",
    "AsyncCacheCow",
    "AsyncClock",
    "BusyName",
    "BusyPolicy",
    "CacheCow",
    "CacheCowError",
    "CacheOptions",
    "CacheUnavailable",
    "Clock",
    "ConfigurationError",
    "InvalidLookup",
    "InvalidationFailed",
    "JsonSerializer",
    "Metrics",
    "MetricsSnapshot",
    "MsgpackSerializer",
    "NotFound",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "SystemClock",
    "__version__",
    "connect",
    "connect_async",
    "connect_cluster",
    "connect_cluster_async",
    "connect_sentinel",
    "connect_sentinel_async",
]
