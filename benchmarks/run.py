"""cachecow side by side with raw redis-py, dogpile.cache and cashews, on one private redis-server.

Run from the repository root (the ``bench`` extra installs dogpile.cache, cashews, hiredis and
matplotlib)::

    python3 -m venv .venv && .venv/bin/pip install -q -e '.[bench]'
    .venv/bin/python benchmarks/run.py

It starts its own ``redis-server`` on a free port and stops it at the end. Every system caches
the same ORM-like rows (an id and ten fields of mixed types, a datetime and a 200-byte text among
them) with the same encoding (compact JSON, datetimes as ISO strings), and is measured in the
same rounds, the systems interleaved, so each ratio compares figures taken moments apart:

- the limit: raw redis-py ``GET`` / ``MGET`` (and ``SET`` / ``MSET`` for misses), same decoding;
- cachecow, sync and async, without and with its near cache (``near_bytes``: the bytes decoded
  per hit, and ``near_shared=True``: one decoded object handed to every hit);
- dogpile.cache's Redis backend, without and with ``distributed_lock``;
- cashews' client-side cache (asyncio only: it is compared in the async figures).

What a user's process sees. Each system runs in a process of its own (``spawn``ed, so nothing
is inherited), with its own client, connection pool, heap, garbage collector and key memo, and a
near cache's tracker thread only where that system has one; the parent sends each process one
slice of work at a time (a figure's operations for that round), so the processes never run at
once. Each round rebuilds every system under fresh keys of its own, and rotates the order of
the systems so that none is always first. A slice of hits is gone over again until it has taken
0.1 s (a near cache answers 3,000 hits in a few ms).

Where the processes run. ``--placement apart`` (the default) pins ``redis-server`` to one core
and every client process to another, as a Redis on its own host would be: each round trip pays a
wake-up on the other core. ``together`` pins both to one core (the shortest round trip, so the
largest ratios: cachecow's own Python weighs most); ``free`` leaves it to the scheduler, as
this script did before issue 18. Left free, the scheduler moves the client and the server
between sharing a core and not, within a run: the round trip of a raw ``GET`` on a 2-core VM
is about 30-35 µs on one core and 65-160 µs across two, and the same cachecow overhead (about
20-30 µs per hit) then reads as 1.6x or as 1.2-1.4x. That was the disagreement between this
script and a harness of one process per system (docs/benchmarks.md); the process layout, a
shared client, GC, a cold key memo and the slice length each moved the ratio by less than the
noise, and hiredis by 0.03-0.07. The figures carry the time over the limit in µs too, which
depends much less on the round trip than the ratio does.

Figures are medians over the rounds of each round's mean time per operation. The results go to
``benchmarks/results/`` (``results.md``, ``results.json``, ``chart.png``). ``--quick`` runs a
few hundred operations in one round: a smoke run that checks the harness works, not a
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import redis
import redis.asyncio as aredis
from dogpile.cache import make_region

import cachecow
from cachecow._scripts import SCRIPT_NAMES, script_source
from cachecow.testing import RedisServer
from cachecow.testing.plugin import CountingConnection

RESULTS = Path(__file__).parent / "results"
TTL = 3600
MODEL = "bench.User"

# -- the objects --------------------------------------------------------------------------------

BIO = ("Enchantress of numbers; wrote the first published algorithm for a machine. " * 3)[:200]


def row(i: int) -> dict[str, Any]:
    """An ORM-like row: an id and ten fields of mixed types."""
    return {
        "id": i,
        "email": f"user{i}@example.com",
        "name": "Ada Lovelace",
        "age": 36,
        "score": 98.25,
        "active": True,
        "created": dt.datetime(2024, 5, 1, 12, 0, i % 60, tzinfo=dt.timezone.utc),
        "team_id": 7,
        "tags": ["admin", "ops"],
        "balance_cents": 123456,
        "bio": BIO,
    }


def to_plain(obj: dict[str, Any]) -> dict[str, Any]:
    plain = dict(obj)
    plain["created"] = obj["created"].isoformat()
    return plain


def from_plain(plain: dict[str, Any]) -> dict[str, Any]:
    plain["created"] = dt.datetime.fromisoformat(plain["created"])
    return plain


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(to_plain(obj), separators=(",", ":")).encode()


def decode_json(data: bytes) -> dict[str, Any]:
    return from_plain(json.loads(data))


def encode_msgpack(obj: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(to_plain(obj), use_bin_type=True)
    return data


def decode_msgpack(data: bytes) -> dict[str, Any]:
    return from_plain(msgpack.unpackb(data, raw=False))


class Database:
    """The fetches every system makes, counted; optionally each costs ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.fetches = 0
        self._lock = threading.Lock()

    def fetch(self, i: int) -> dict[str, Any]:
        with self._lock:
            self.fetches += 1
        if self.delay:
            time.sleep(self.delay)
        return row(i)

    def fetch_many(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        with self._lock:
            self.fetches += len(ids)
        if self.delay:
            time.sleep(self.delay)
        return [row(i) for i in ids]

    async def afetch(self, i: int) -> dict[str, Any]:
        with self._lock:
            self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return row(i)

    async def afetch_many(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        with self._lock:
            self.fetches += len(ids)
        if self.delay:
            await asyncio.sleep(self.delay)
        return [row(i) for i in ids]


# -- the systems --------------------------------------------------------------------------------


class Raw:
    """The limit: what redis-py costs with no protocol at all (no lease, no stale-write check)."""

    name = "raw redis-py (limit)"

    def __init__(self, client: redis.Redis, db: Database, tag: str) -> None:
        self.r, self.db, self.tag = client, db, tag

    def key(self, i: int) -> str:
        return f"raw{self.tag}:{i}"

    def hit(self, i: int) -> Any:
        return decode_json(self.r.get(self.key(i)))  # type: ignore[arg-type]

    def miss(self, i: int) -> Any:
        data = self.r.get(self.key(i))
        if data is not None:
            return decode_json(data)  # type: ignore[arg-type]
        obj = self.db.fetch(i)
        self.r.set(self.key(i), encode_json(obj), ex=TTL)
        return obj

    def many_hits(self, ids: Sequence[int]) -> Any:
        return [decode_json(v) for v in self.r.mget([self.key(i) for i in ids])]  # type: ignore[union-attr]

    def many_misses(self, ids: Sequence[int]) -> Any:
        keys = [self.key(i) for i in ids]
        found = self.r.mget(keys)  # type: ignore[misc]
        missing = [i for i, v in zip(ids, found, strict=True) if v is None]  # type: ignore[arg-type]
        objs = self.db.fetch_many(missing)
        self.r.mset({self.key(o["id"]): encode_json(o) for o in objs})
        return objs

    def invalidate(self, i: int) -> None:
        self.r.delete(self.key(i))

    def warm(self, ids: Iterable[int]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.set(self.key(i), encode_json(row(i)), ex=TTL)
        pipe.execute()


class Cow(cachecow.CacheCow):
    """cachecow with the benchmark's encoding."""

    def __init__(self, client: redis.Redis, db: Database, *, encoding: str = "json", **kw: Any):
        super().__init__(client, ttl=TTL, **kw)
        self.db = db
        self.encode, self.decode = (
            (encode_json, decode_json) if encoding == "json" else (encode_msgpack, decode_msgpack)
        )

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return self.db.fetch(id_val)

    def fetch_many(self, cls: Any, id_field: Any, id_vals: Sequence[Any]) -> Any:
        return {o["id"]: o for o in self.db.fetch_many(id_vals)}

    def serialize(self, obj: Any) -> bytes:
        return self.encode(obj)

    def deserialize(self, cls: Any, data: bytes) -> Any:
        return self.decode(data)


class CowSystem:
    name = "cachecow"

    def __init__(self, client: redis.Redis, db: Database, tag: str, **kw: Any) -> None:
        self.cache = Cow(client, db, prefix=f"cc{tag}:", **kw)
        if kw.get("near_bytes"):
            self.name = "cachecow + near cache" + (", shared" if kw.get("near_shared") else "")

    def hit(self, i: int) -> Any:
        return self.cache.get(MODEL, "id", i)

    miss = hit

    def many_hits(self, ids: Sequence[int]) -> Any:
        return self.cache.get_many(MODEL, "id", ids)

    many_misses = many_hits

    def invalidate(self, i: int) -> None:
        self.cache.invalidate(MODEL, "id", i)

    def warm(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self.cache.get_many(MODEL, "id", ids)  # misses, committed (kept near if the channel is up)
        if self.cache._near is not None:
            self.settle()
            self.cache.get_many(MODEL, "id", ids)  # near hits, or Redis hits now kept

    def settle(self) -> None:
        """Wait until the near cache's channel is up and its tracker has handled the messages
        of every write so far (the commits' own would drop what a read keeps after them)."""
        near = self.cache._near
        wait_for_channel(near)
        key = settle_key(self.cache.prefix)
        self.cache.redis.set(key, b"", ex=60)
        wait_for_drop(near, key)

    def close(self) -> None:
        self.cache.close()


NEAR_BYTES = 64 * 1024 * 1024


def wait_for_channel(near: Any, timeout: float = 5.0) -> None:
    """Wait until a near cache's invalidation channel is up (it keeps nothing before)."""
    deadline = time.monotonic() + timeout
    while not near.live:
        if time.monotonic() > deadline:
            raise RuntimeError("the near cache's invalidation channel did not come up")
        time.sleep(0.01)


def settle_key(prefix: str) -> str:
    """A key under a near cache's tracked prefix, written to learn when the messages of the
    writes before it have been handled (Redis sends them in order)."""
    return f"{prefix}bench-settle:{time.monotonic_ns()}"


def wait_for_drop(near: Any, key: str, timeout: float = 5.0) -> None:
    """Wait until ``near``'s tracker has handled the message of a write of ``key``."""
    deadline = time.monotonic() + timeout
    while key not in near._dropped:
        if time.monotonic() > deadline:
            raise RuntimeError("the near cache's tracker did not hear of a write")
        time.sleep(0.001)


class ProtocolFloor:
    """cachecow's scripts sent straight through redis-py, keys computed beforehand, no checks:
    what the protocol itself costs Redis and the wire, without any of cachecow's Python."""

    name = "protocol floor (scripts only)"

    def __init__(self, client: redis.Redis, db: Database, tag: str) -> None:
        self.r, self.db = client, db
        self.keys: dict[int, tuple[str, str]] = {}
        self.cow = Cow(client, db, prefix=f"pf{tag}:")
        self.sha = {name: client.script_load(script_source(name)) for name in SCRIPT_NAMES}
        self.token = "f" * 32

    def pair(self, i: int) -> tuple[str, str]:
        pair = self.keys.get(i)
        if pair is None:
            pair = self.keys[i] = self.cow.get_keys(MODEL, "id", i)
        return pair

    def hit(self, i: int) -> Any:
        value_key, flag_key = self.pair(i)
        reply = self.r.evalsha(self.sha["get_or_lease"], 2, value_key, flag_key, self.token, 10000)
        if isinstance(reply, bytes):
            return decode_json(reply)
        obj = self.db.fetch(i)
        self.r.evalsha(
            self.sha["commit"], 2, value_key, flag_key, self.token, encode_json(obj), TTL * 1000
        )
        return obj

    miss = hit

    def many_hits(self, ids: Sequence[int]) -> Any:
        flat = [k for i in ids for k in self.pair(i)]
        head = (self.token, 10000, 0, 0)  # no refresh windows, as cachecow sends by default
        replies = self.r.evalsha(self.sha["get_or_lease_many"], len(flat), *flat, *head)
        leased = [i for i, v in zip(ids, replies, strict=True) if not isinstance(v, bytes)]
        out = [decode_json(v) for v in replies if isinstance(v, bytes)]
        if leased:
            objs = self.db.fetch_many(leased)
            args: list[Any] = [self.token]
            for obj in objs:
                args += (encode_json(obj), TTL * 1000)
            keys = [k for i in leased for k in self.pair(i)]
            self.r.evalsha(self.sha["commit_many"], len(keys), *keys, *args)
            out += objs
        return out

    many_misses = many_hits

    def invalidate(self, i: int) -> None:
        self.r.delete(*self.pair(i))

    def warm(self, ids: Iterable[int]) -> None:
        self.many_hits(list(ids))


class Dogpile:
    """dogpile.cache's Redis backend, the benchmark's encoding as the region's serializer."""

    def __init__(
        self, pool: redis.ConnectionPool, db: Database, tag: str, *, lock: bool, **kw: Any
    ) -> None:
        self.name = "dogpile.cache" + (" + distributed_lock" if lock else "")
        self.db, self.tag = db, tag
        arguments: dict[str, Any] = {
            "connection_pool": pool,
            "redis_expiration_time": TTL,
            "distributed_lock": lock,
            "thread_local_lock": False,
        }
        arguments.update(kw)
        self.region = make_region(serializer=encode_json, deserializer=decode_json).configure(
            "dogpile.cache.redis", expiration_time=TTL, arguments=arguments
        )

    def key(self, i: int) -> str:
        return f"dp{self.tag}:{i}"

    def hit(self, i: int) -> Any:
        return self.region.get_or_create(self.key(i), lambda: self.db.fetch(i))

    miss = hit

    def many_hits(self, ids: Sequence[int]) -> Any:
        keys = [self.key(i) for i in ids]
        by_key = dict(zip(keys, ids, strict=True))
        return self.region.get_or_create_multi(
            keys, lambda *missing: self.db.fetch_many([by_key[k] for k in missing])
        )

    many_misses = many_hits

    def invalidate(self, i: int) -> None:
        self.region.delete(self.key(i))

    def warm(self, ids: Iterable[int]) -> None:
        self.many_hits(list(ids))


class ACow(cachecow.AsyncCacheCow):
    def __init__(self, client: aredis.Redis, db: Database, **kw: Any) -> None:
        super().__init__(client, ttl=TTL, **kw)
        self.db = db

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return await self.db.afetch(id_val)

    async def fetch_many(self, cls: Any, id_field: Any, id_vals: Sequence[Any]) -> Any:
        return {o["id"]: o for o in await self.db.afetch_many(id_vals)}

    def serialize(self, obj: Any) -> bytes:
        return encode_json(obj)

    def deserialize(self, cls: Any, data: bytes) -> Any:
        return decode_json(data)


class ARaw:
    """The asyncio limit: raw ``redis.asyncio`` ``GET`` / ``MGET`` (``SET`` / ``MSET``)."""

    name = "raw redis.asyncio (limit)"

    def __init__(self, port: int, db: Database, tag: str) -> None:
        self.r, self.db, self.tag = aredis.Redis(port=port), db, tag

    def key(self, i: int) -> str:
        return f"araw{self.tag}:{i}"

    async def hit(self, i: int) -> Any:
        return decode_json(await self.r.get(self.key(i)))  # type: ignore[arg-type]

    async def miss(self, i: int) -> Any:
        data = await self.r.get(self.key(i))
        if data is not None:
            return decode_json(data)
        obj = await self.db.afetch(i)
        await self.r.set(self.key(i), encode_json(obj), ex=TTL)
        return obj

    async def many_hits(self, ids: Sequence[int]) -> Any:
        return [decode_json(v) for v in await self.r.mget([self.key(i) for i in ids])]

    async def many_misses(self, ids: Sequence[int]) -> Any:
        keys = [self.key(i) for i in ids]
        found = await self.r.mget(keys)
        objs = await self.db.afetch_many([i for i, v in zip(ids, found, strict=True) if v is None])
        await self.r.mset({self.key(o["id"]): encode_json(o) for o in objs})
        return objs

    async def warm(self, ids: Iterable[int]) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.set(self.key(i), encode_json(row(i)), ex=TTL)
            await pipe.execute()

    async def close(self) -> None:
        await self.r.aclose()


class ACowSystem:
    name = "cachecow async"

    def __init__(self, port: int, db: Database, tag: str, **kw: Any) -> None:
        self.client = aredis.Redis(port=port)
        self.cache = ACow(self.client, db, prefix=f"acc{tag}:", **kw)
        if kw.get("near_bytes"):
            self.name += " + near cache" + (", shared" if kw.get("near_shared") else "")

    async def hit(self, i: int) -> Any:
        return await self.cache.get(MODEL, "id", i)

    miss = hit

    async def many_hits(self, ids: Sequence[int]) -> Any:
        return await self.cache.get_many(MODEL, "id", ids)

    many_misses = many_hits

    async def warm(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        await self.cache.get_many(MODEL, "id", ids)
        near = self.cache._near
        if near is not None:  # as CowSystem.warm
            await asyncio.to_thread(wait_for_channel, near)
            key = settle_key(self.cache.prefix)
            await self.client.set(key, b"", ex=60)
            await asyncio.to_thread(wait_for_drop, near, key)
            await self.cache.get_many(MODEL, "id", ids)

    async def close(self) -> None:
        self.cache.close()
        await self.client.aclose()


class Cashews:
    """cashews' client-side cache (``client_side=True``): Redis's tracking in broadcasting
    mode, as cachecow's near cache; its local copy is the decoded object, handed to every hit
    (as ``near_shared=True``). Cache-aside by hand: ``get``, and on a miss ``set``."""

    name = "cashews client-side"

    def __init__(self, port: int, db: Database, tag: str) -> None:
        from cashews import Cache
        from cashews.serialize import register_type

        # The benchmark's encoding for the rows (dicts) instead of pickle.
        register_type(dict, _cashews_encode, _cashews_decode)
        self.db, self.tag = db, tag
        self.cache = Cache()
        self.cache.setup(
            f"redis://127.0.0.1:{port}/0",
            client_side=True,
            client_side_prefix=f"cw{tag}:",
            local_cache=None,
            pickle_type="null",
            check_repr=False,
        )
        self.ready = False

    def key(self, i: int) -> str:
        return str(i)

    async def hit(self, i: int) -> Any:
        obj = await self.cache.get(self.key(i))
        if obj is None:
            obj = await self.db.afetch(i)
            await self.cache.set(self.key(i), obj, expire=TTL)
        return obj

    miss = hit

    async def many_hits(self, ids: Sequence[int]) -> Any:
        found = await self.cache.get_many(*(self.key(i) for i in ids))
        missing = [i for i, v in zip(ids, found, strict=True) if v is None]
        if not missing:
            return found
        objs = await self.db.afetch_many(missing)
        await self.cache.set_many({self.key(o["id"]): o for o in objs}, expire=TTL)
        return [v for v in found if v is not None] + objs

    many_misses = many_hits

    async def warm(self, ids: Iterable[int]) -> None:
        if not self.ready:
            await self.cache.init()
            self.ready = True
        await self.many_hits(list(ids))

    async def close(self) -> None:
        await self.cache.close()


async def _cashews_encode(value: Any, *args: Any, **kwargs: Any) -> bytes:
    return encode_json(value)


async def _cashews_decode(value: bytes, *args: Any, **kwargs: Any) -> Any:
    return decode_json(value)


# -- timing -------------------------------------------------------------------------------------


def per_op(fn: Callable[[int], Any], args: Sequence[Any]) -> float:
    """Seconds per call of ``fn`` over ``args``."""
    start = time.perf_counter()
    for arg in args:
        fn(arg)
    return (time.perf_counter() - start) / len(args)


async def aper_op(fn: Callable[[Any], Any], args: Sequence[Any]) -> float:
    start = time.perf_counter()
    for arg in args:
        await fn(arg)
    return (time.perf_counter() - start) / len(args)


class Ids:
    """Fresh ids for cold keys: no system ever sees an id twice for a miss."""

    def __init__(self) -> None:
        self._next = itertools.count(1_000_000)

    def take(self, n: int) -> list[int]:
        return [next(self._next) for _ in range(n)]


def batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[k : k + size] for k in range(0, len(ids), size)]


def rotated(items: list[Any], n: int) -> list[Any]:
    """``items`` with the first ``n`` (modulo its length) moved to the end."""
    k = n % len(items)
    return items[k:] + items[:k]


# -- one process per system ---------------------------------------------------------------------

SYNC_SPECS = ("raw", "floor", "cachecow", "near", "near-shared", "dogpile", "dogpile-lock")
ASYNC_SPECS = ("araw", "acachecow", "anear-shared", "cashews")


def make_system(spec: str, host: Host, db: Database, tag: str) -> Any:
    """The system ``spec`` names, on ``host``'s client (the process's own)."""
    near = {"near_bytes": NEAR_BYTES}
    makers: dict[str, Callable[[], Any]] = {
        "raw": lambda: Raw(host.client, db, tag),
        "floor": lambda: ProtocolFloor(host.client, db, tag),
        "cachecow": lambda: CowSystem(host.client, db, tag),
        "near": lambda: CowSystem(host.client, db, tag, **near),
        "near-shared": lambda: CowSystem(host.client, db, tag, **near, near_shared=True),
        "dogpile": lambda: Dogpile(host.pool, db, tag, lock=False),
        "dogpile-lock": lambda: Dogpile(host.pool, db, tag, lock=True),
        "araw": lambda: ARaw(host.port, db, tag),
        "acachecow": lambda: ACowSystem(host.port, db, tag),
        "anear-shared": lambda: ACowSystem(host.port, db, tag, **near, near_shared=True),
        "cashews": lambda: Cashews(host.port, db, tag),
    }
    return makers[spec]()


class Host:
    """A process's one system, built anew for each round under fresh keys; the client, its
    pool and the event loop last as long as the process, as a user's would."""

    def __init__(self, spec: str, port: int) -> None:
        self.spec, self.port = spec, port
        self.client = redis.Redis(port=port)
        self.pool = redis.ConnectionPool(port=port)
        self.loop = asyncio.new_event_loop()
        self.system: Any = None
        self.near_share: dict[str, float] = {}

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if asyncio.iscoroutinefunction(fn):
            return self.loop.run_until_complete(fn(*args))
        return fn(*args)

    def build(self, tag: str, delay: float) -> str:
        self.close()
        # keys of this system's own: no other system reads them, or writes under the
        # prefixes a near cache tracks
        self.system = make_system(self.spec, self, Database(delay), f"{tag}-{self.spec}")
        self.near_share = {}
        return str(self.system.name)

    def warm(self, ids: list[int]) -> None:
        self.call(self.system.warm, ids)

    def time(self, method: str, args: Sequence[Any], at_least: float = 0.0) -> float:
        """Seconds per call of ``method`` over ``args``, gone over again until ``at_least``
        seconds have passed (for hits: a near cache answers a slice in a few ms)."""
        fn = getattr(self.system, method)
        near_hits = self.near_hits()
        spent, calls = 0.0, 0
        while True:
            if asyncio.iscoroutinefunction(fn):
                seconds = float(self.loop.run_until_complete(aper_op(fn, args)))
            else:
                seconds = per_op(fn, args)
            spent, calls = spent + seconds * len(args), calls + len(args)
            if spent >= at_least:
                break
        after = self.near_hits()
        if near_hits is not None and after is not None:  # the share the near cache answered
            lookups = calls * (len(args[0]) if method.startswith("many") else 1)
            self.near_share[method] = (after - near_hits) / lookups
        return spent / calls

    def near_hits(self) -> int | None:
        cache = getattr(self.system, "cache", None)
        if getattr(cache, "_near", None) is None:
            return None
        return int(cache.metrics.snapshot().near_hits)  # type: ignore[union-attr]

    def near_state(self) -> dict[str, Any] | None:
        """What the near cache answered in this round's figures, and its channel's outages."""
        if self.near_hits() is None:
            return None
        tracker = self.system.cache._near.tracker
        return {"share": dict(self.near_share), "outages": tracker.outages if tracker else 0}

    def close(self) -> None:
        if self.system is not None and hasattr(self.system, "close"):
            self.call(self.system.close)
        self.system = None


def _serve(spec: str, port: int, cpu: int | None, conn: Any) -> None:
    """A system's process: run what the parent sends, one message at a time."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    host = Host(spec, port)
    conn.send((True, "ready"))
    while True:
        message = conn.recv()
        if message is None:
            host.close()
            return
        command, *args = message
        try:
            conn.send((True, getattr(host, command)(*args)))
        except Exception:
            conn.send((False, traceback.format_exc()))


class Worker:
    """The parent's handle on a system's process."""

    def __init__(self, ctx: Any, spec: str, port: int, cpu: int | None) -> None:
        self.spec = self.name = spec
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(spec, port, cpu, child), name=f"bench-{spec}", daemon=True
        )
        self.process.start()

    def call(self, command: str, *args: Any) -> Any:
        self.conn.send((command, *args))
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"{self.spec}: {command} failed:\n{value}")
        return value

    def ready(self) -> None:
        ok, value = self.conn.recv()
        if not ok or value != "ready":
            raise RuntimeError(f"{self.spec}: did not start: {value}")

    def build(self, tag: str, delay: float = 0.0) -> None:
        self.name = self.call("build", tag, delay)

    def time(self, method: str, args: Sequence[Any], at_least: float = 0.0) -> float:
        return float(self.call("time", method, args, at_least))

    def stop(self) -> None:
        self.conn.send(None)
        self.process.join(10)


def placement_cpus(placement: str) -> tuple[int | None, int | None]:
    """The cores of ``redis-server`` and of the clients (``None``: not pinned)."""
    if placement == "free" or not hasattr(os, "sched_setaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if placement == "together" or len(cores) < 2:
        return cores[0], cores[0]
    return cores[0], cores[1]


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of process ``pid`` to ``cpu``."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), {cpu})


# -- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, server: RedisServer, quick: bool, client_cpu: int | None) -> None:
        self.port = server.port
        self.quick = quick
        self.n_single = 200 if quick else 3000
        self.n_batches = 3 if quick else 60
        self.warm_ids = list(range(1, (200 if quick else 3000) + 1))
        self.at_least = 0.02 if quick else 0.1  # seconds of hits per system and round
        self.ids = Ids()
        self.client = redis.Redis(port=self.port)
        self.samples: dict[str, dict[str, list[float]]] = {}
        # per near-cache system: the lowest share of hits it answered in a round, and the
        # outages of its channel (a figure taken while it was down went to Redis)
        self.near_checks: dict[str, dict[str, float]] = {}
        ctx = multiprocessing.get_context("spawn")
        self.sync = [Worker(ctx, spec, self.port, client_cpu) for spec in SYNC_SPECS]
        self.async_ = [Worker(ctx, spec, self.port, client_cpu) for spec in ASYNC_SPECS]
        for worker in self.sync + self.async_:
            worker.ready()

    def stop(self) -> None:
        for worker in self.sync + self.async_:
            worker.stop()

    def record(self, figure: str, system: str, seconds: float) -> None:
        self.samples.setdefault(figure, {}).setdefault(system, []).append(seconds)

    def round(self, number: int) -> None:
        self.figures(rotated(self.sync, number), f"r{number}", "")
        slow = rotated(self.sync, number)
        for worker in slow:
            worker.build(f"s{number}", 0.001)
        for worker in slow:
            n = max(20, self.n_single // 10)
            self.record("miss, 1 ms fetch", worker.name, worker.time("miss", self.ids.take(n)))
        self.figures(rotated(self.async_, number), f"a{number}", " (async)")

    def figures(self, workers: list[Worker], tag: str, suffix: str) -> None:
        """The figures of one round, each measured for every system in turn."""
        for worker in workers:
            worker.build(tag)
        for worker in workers:
            worker.call("warm", self.warm_ids)
        hits = self.warm_ids[: self.n_single]
        for worker in workers:
            self.record("hit" + suffix, worker.name, worker.time("hit", hits, self.at_least))
        for worker in workers:
            misses = self.ids.take(self.n_single)
            self.record("miss" + suffix, worker.name, worker.time("miss", misses))
        hit_batches = batches(self.warm_ids, 100)[: self.n_batches] * (2 if self.quick else 1)
        for worker in workers:
            seconds = worker.time("many_hits", hit_batches, self.at_least)
            self.record("get_many 100 hits" + suffix, worker.name, seconds)
        for worker in workers:
            cold = batches(self.ids.take(100 * self.n_batches), 100)
            seconds = worker.time("many_misses", cold)
            self.record("get_many 100 misses" + suffix, worker.name, seconds)
        if not suffix:
            for worker in workers:
                self.record("invalidate", worker.name, worker.time("invalidate", hits))
        for worker in workers:
            state = worker.call("near_state")
            if state is not None:
                checks = self.near_checks.setdefault(worker.name, {"outages": 0})
                checks["outages"] += state["outages"]
                for method in ("hit", "many_hits"):
                    share = state["share"].get(method, 0.0)
                    checks[method] = min(checks.get(method, 1.0), share)

    # -- herds --------------------------------------------------------------------------------

    def herd(self, delay: float, readers: int = 64) -> dict[str, dict[str, float]]:
        """``readers`` threads (each with its own cache instance or region, as separate
        processes would have) read one cold key at once: fetches made, time to serve all."""
        out: dict[str, dict[str, float]] = {}
        factories: list[tuple[str, Callable[[Database, str], Callable[[int], Any]]]] = [
            ("raw redis-py (no protection)", lambda db, tag: Raw(self.client, db, tag).miss),
            (
                "cachecow",
                lambda db, tag: CowSystem(self.client, db, tag, wait_timeout=5.0).hit,
            ),
            (
                "dogpile.cache",
                lambda db, tag: (
                    Dogpile(redis.ConnectionPool(port=self.port), db, tag, lock=False).hit
                ),
            ),
            (
                "dogpile.cache + distributed_lock",
                lambda db, tag: (
                    Dogpile(redis.ConnectionPool(port=self.port), db, tag, lock=True).hit
                ),
            ),
        ]
        for name, make in factories:
            db = Database(delay)
            tag = f"h{name[:3]}{delay}{time.monotonic_ns()}"
            calls = [make(db, tag) for _ in range(readers)]
            key = 42
            barrier = threading.Barrier(readers + 1)
            done: list[float] = []
            threads = [
                threading.Thread(target=_herd_reader, args=(c, key, barrier, done)) for c in calls
            ]
            for t in threads:
                t.start()
            start = time.perf_counter()
            barrier.wait()
            for t in threads:
                t.join(30)
            out[name] = {"fetches": db.fetches, "seconds": max(done) - start}
        out["cachecow async (64 tasks)"] = asyncio.run(self.async_herd(delay, readers))
        return out

    async def async_herd(self, delay: float, readers: int) -> dict[str, float]:
        db = Database(delay)
        client = aredis.Redis(port=self.port, max_connections=readers + 8)
        caches = [
            ACow(client, db, prefix=f"ah{delay}{time.monotonic_ns()}:", wait_timeout=5.0)
        ] * readers
        await asyncio.gather(*(client.ping() for _ in range(readers)))  # open the connections
        start = time.perf_counter()
        await asyncio.gather(*(c.get(MODEL, "id", 42) for c in caches))
        seconds = time.perf_counter() - start
        await client.aclose()
        return {"fetches": db.fetches, "seconds": seconds}

    # -- what an operation costs Redis --------------------------------------------------------

    def costs(self) -> dict[str, dict[str, dict[str, int]]]:
        """Round trips (a counting connection) and Redis commands (INFO commandstats) of one
        operation of each kind, per system."""
        counter = [0]
        pool = redis.ConnectionPool(
            connection_class=CountingConnection, port=self.port, counter=counter
        )
        client = redis.Redis(connection_pool=pool)
        db = Database()
        near = CowSystem(client, db, "c5", near_bytes=NEAR_BYTES)
        systems = [
            Raw(client, db, "c1"),
            CowSystem(client, db, "c2"),
            near,
            Dogpile(pool, db, "c3", lock=False),
            Dogpile(pool, db, "c4", lock=True),
        ]
        ops: list[tuple[str, Callable[[Any], Any]]] = [
            ("miss", lambda s: s.miss(7)),
            ("hit", lambda s: s.hit(7)),
            ("invalidate", lambda s: s.invalidate(7)),
            ("get_many 100 misses", lambda s: s.many_misses(list(range(100, 200)))),
            ("get_many 100 hits", lambda s: s.many_hits(list(range(100, 200)))),
        ]
        out: dict[str, dict[str, dict[str, int]]] = {}
        for system in systems:
            system.miss(1)  # load scripts, open connections
            system.many_misses([2, 3])
            for op, call in ops:
                if system is near and op.startswith(("hit", "get_many 100 hits")):
                    near.settle()
                    call(system)  # the Redis hit that the near cache keeps: then a near hit
                before = commandstats(self.client)
                counter[0] = 0
                call(system)
                trips = counter[0]
                commands = sum(delta(self.client, before).values())
                out.setdefault(op, {})[system.name] = {"round_trips": trips, "commands": commands}
        near.close()
        return out

    def sizes(self) -> dict[str, dict[str, int]]:
        """Bytes of one cached row: the value's length and Redis's MEMORY USAGE of the key."""
        db = Database()
        out: dict[str, dict[str, int]] = {}
        i = 5
        raw_json = Raw(self.client, db, "z")
        raw_json.warm([i])
        self.client.set(f"rawm:{i}", encode_msgpack(row(i)), ex=TTL)
        entries = [
            ("raw SET, JSON", raw_json.key(i)),
            ("raw SET, msgpack", f"rawm:{i}"),
        ]
        for encoding in ("json", "msgpack"):
            cache = Cow(self.client, db, encoding=encoding, prefix=f"z{encoding}:")
            cache.get(MODEL, "id", i)
            entries.append((f"cachecow, {encoding}", cache.get_keys(MODEL, "id", i)[0]))
        dog = Dogpile(redis.ConnectionPool(port=self.port), db, "z", lock=False)
        dog.hit(i)
        entries.append(("dogpile.cache, JSON", dog.key(i)))
        for name, key in entries:
            out[name] = {
                "value_bytes": int(self.client.strlen(key)),
                "memory_usage": int(self.client.memory_usage(key) or 0),
                "key_bytes": len(key),
            }
        return out


def _herd_reader(
    call: Callable[[int], Any], key: int, barrier: threading.Barrier, done: list[float]
) -> None:
    barrier.wait()
    call(key)
    done.append(time.perf_counter())


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(v["calls"]) for name, v in stats.items()}


def delta(client: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    after = commandstats(client)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    changed.pop("cmdstat_info", None)
    return changed


# -- report -------------------------------------------------------------------------------------


LIMITS = {"raw redis-py (limit)", "raw redis.asyncio (limit)"}


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median seconds per op, and the median of each round's ratio to that round's limit."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for figure, systems in samples.items():
        limit = next((s for s in systems if s in LIMITS), None)
        base = systems[limit] if limit is not None else None
        out[figure] = {}
        for system, values in systems.items():
            entry = {"median_us": statistics.median(values) * 1e6}
            if base is not None and len(base) == len(values):
                pairs = list(zip(values, base, strict=True))
                entry["ratio"] = statistics.median(v / b for v, b in pairs)
                entry["over_us"] = statistics.median((v - b) * 1e6 for v, b in pairs)
            out[figure][system] = entry
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# cachecow benchmark results",
        "",
        f"{result['date']} on {result['machine']}; Python {result['python']}, "
        f"redis-py {result['redis_py']} (hiredis {result.get('hiredis') or 'absent'}), "
        f"Redis {result['redis_server']}, "
        f"dogpile.cache {result['dogpile']}, cashews {result.get('cashews')}; "
        f"{result['rounds']} rounds; {result.get('placement', 'free')}"
        + (" (quick smoke run: not a measurement)" if result["quick"] else "")
        + (
            f"; CPU time stolen by other machines during the run: {result['steal']:.1%}"
            if result.get("steal") is not None
            else ""
        )
        + ".",
        "",
        "## Time per operation (median of the rounds; ratio to the limit in the same round)",
        "",
        "Each system in a process of its own; µs over the limit is the median of each round's "
        "difference.",
        "",
        "| figure | system | µs per op | x limit | µs over limit |",
        "|---|---|---:|---:|---:|",
    ]
    for figure, systems in result["timings"].items():
        for system, entry in systems.items():
            ratio = f"{entry['ratio']:.2f}" if "ratio" in entry else ""
            over = f"{entry['over_us']:+.1f}" if "over_us" in entry else ""
            lines.append(f"| {figure} | {system} | {entry['median_us']:.1f} | {ratio} | {over} |")
    lines += [
        "",
        "## Near-cache hits against the limit (times faster than a raw GET / MGET + decode)",
        "",
        "| figure | system | µs per op | times faster than the limit |",
        "|---|---|---:|---:|",
    ]
    for figure, systems in result["timings"].items():
        for system, entry in systems.items():
            in_process = "near" in system or "cashews" in system
            if in_process and (figure.startswith("hit") or "100 hits" in figure):
                lines.append(
                    f"| {figure} | {system} | {entry['median_us']:.2f} | {1 / entry['ratio']:.1f} |"
                )
    checks = result.get("near_checks", {})
    if checks:
        lines += [
            "",
            "Answered by the near cache (lowest round), and the outages of its invalidation "
            "channel (while it is down, reads go to Redis):",
            "",
            "| system | hit | get_many 100 hits | channel outages |",
            "|---|---:|---:|---:|",
        ]
        for system, c in checks.items():
            lines.append(
                f"| {system} | {c.get('hit', 0):.0%} | {c.get('many_hits', 0):.0%} | "
                f"{c['outages']:.0f} |"
            )
    lines += [
        "",
        "## Round trips and Redis commands per operation",
        "",
        "| operation | system | round trips | commands |",
        "|---|---|---:|---:|",
    ]
    for op, systems in result["costs"].items():
        for system, c in systems.items():
            lines.append(f"| {op} | {system} | {c['round_trips']} | {c['commands']} |")
    lines += [
        "",
        "## Bytes per cached row",
        "",
        "| stored as | value bytes | key bytes | MEMORY USAGE |",
        "|---|---:|---:|---:|",
    ]
    for name, s in result["sizes"].items():
        lines.append(f"| {name} | {s['value_bytes']} | {s['key_bytes']} | {s['memory_usage']} |")
    for label, herd in (("no fetch delay", "herd"), ("1 ms fetch", "herd_slow")):
        lines += [
            "",
            f"## A herd: 64 concurrent readers of one cold key ({label})",
            "",
            "| system | fetches | ms to serve all |",
            "|---|---:|---:|",
        ]
        for system, h in result[herd].items():
            lines.append(f"| {system} | {h['fetches']:.0f} | {h['seconds'] * 1000:.1f} |")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = ["hit", "miss", "get_many 100 hits", "get_many 100 misses", "invalidate"]
    systems = list(result["timings"]["hit"])
    top = 3.5
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [2.6, 1]}
    )
    width = 0.8 / len(systems)
    for n, system in enumerate(systems):
        ratios = [result["timings"][f][system].get("ratio", 0.0) for f in figures]
        xs = [k + n * width for k in range(len(figures))]
        left.bar(xs, [min(r, top) for r in ratios], width, label=system)
        for x, r in zip(xs, ratios, strict=True):
            if r > top:
                left.text(
                    x, top * 0.97, f"{r:.0f}x", ha="center", va="top", fontsize=7, rotation=90
                )
            elif 0 < r < 0.3:  # answered in the process: say how many times faster
                left.text(x, r + 0.05, f"1/{1 / r:.0f}", ha="center", va="bottom", fontsize=6)
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_ylim(0, top)
    left.set_xticks([k + width * (len(systems) - 1) / 2 for k in range(len(figures))])
    left.set_xticklabels(figures)
    left.set_ylabel("time per operation, x raw redis-py (lower is better)")
    left.set_title("Cost against the limit, measured in the same rounds")
    left.legend(fontsize=8, loc="upper left")
    herd = result["herd_slow"]
    names = list(herd)[::-1]
    right.barh(range(len(names)), [herd[n]["fetches"] for n in names], color="tab:red")
    right.set_yticks(range(len(names)))
    right.set_yticklabels(names, fontsize=8)
    for y, n in enumerate(names):
        right.text(
            herd[n]["fetches"] + 0.5, y, f"{herd[n]['fetches']:.0f}", va="center", fontsize=8
        )
    right.set_xlabel("database fetches (lower is better)")
    right.set_title("64 readers of one cold key, 1 ms fetch")
    fig.suptitle(
        f"cachecow benchmarks, {result['date']}, {result['machine']}; "
        f"{result.get('placement', 'unpinned')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


def _hiredis_version() -> str | None:
    return _version("hiredis")


def cpu_times() -> list[int] | None:
    """The machine's CPU time so far by kind (``/proc/stat``), or ``None`` off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(n) for n in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def stolen(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of the CPU time between two :func:`cpu_times` that the hypervisor gave to other
    machines (``steal``): on a shared host, what a run's figures lost to its neighbours."""
    if before is None or after is None or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return spent[7] / max(1, sum(spent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few ops, one round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of interleaved systems")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument(
        "--placement",
        choices=("apart", "together", "free"),
        default="apart",
        help="redis-server and the clients on two cores (apart), one core, or unpinned",
    )
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    import cashews
    import dogpile

    cores = len(os.sched_getaffinity(0))
    server_cpu, client_cpu = placement_cpus(args.placement)
    if server_cpu is None or client_cpu is None:
        placement = "unpinned"
    elif server_cpu == client_cpu:
        placement = f"redis-server and the clients on core {server_cpu}"
    else:
        placement = f"redis-server on core {server_cpu}, the clients on core {client_cpu}"
    with RedisServer() as server:
        if server_cpu is not None and client_cpu is not None:
            assert server.process is not None
            pin(server.process.pid, server_cpu)
            os.sched_setaffinity(0, {client_cpu})  # the herds, and what the children inherit
        bench = Bench(server, args.quick, client_cpu)
        started = cpu_times()
        try:
            for number in range(rounds):
                print(f"round {number + 1}/{rounds}", file=sys.stderr)
                bench.round(number)
        finally:
            bench.stop()
        result: dict[str, Any] = {
            "date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {platform.system()}, {cores} cores",
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "hiredis": _hiredis_version(),
            "redis_server": bench.client.info("server")["redis_version"],
            "dogpile": dogpile.__version__,
            "cashews": getattr(cashews, "__version__", None) or _version("cashews"),
            "cachecow": cachecow.__version__,
            "rounds": rounds,
            "quick": args.quick,
            "placement": placement,
            "steal": stolen(started, cpu_times()),
            "timings": summarize(bench.samples),
            "near_checks": bench.near_checks,
            "costs": bench.costs(),
            "sizes": bench.sizes(),
            "herd": bench.herd(0.0),
            "herd_slow": bench.herd(0.001),
        }
        bench.client.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    chart(result, args.out / "chart.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
