"""cachecow side by side with raw redis-py and dogpile.cache, on one private redis-server.

Run from the repository root (the ``bench`` extra installs dogpile.cache, hiredis and
matplotlib)::

    python3 -m venv .venv && .venv/bin/pip install -q -e '.[bench]'
    .venv/bin/python benchmarks/run.py

It starts its own ``redis-server`` on a free port and stops it at the end. Every system caches
the same ORM-like rows (an id and ten fields of mixed types, a datetime and a 200-byte text among
them) with the same encoding (compact JSON, datetimes as ISO strings), and is measured in the
same rounds, the systems interleaved, so each ratio compares figures taken moments apart:

- the limit: raw redis-py ``GET`` / ``MGET`` (and ``SET`` / ``MSET`` for misses), same decoding;
- cachecow, sync and async;
- dogpile.cache's Redis backend, without and with ``distributed_lock``.

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
import platform
import statistics
import sys
import threading
import time
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

    def hit(self, i: int) -> Any:
        return self.cache.get(MODEL, "id", i)

    miss = hit

    def many_hits(self, ids: Sequence[int]) -> Any:
        return self.cache.get_many(MODEL, "id", ids)

    many_misses = many_hits

    def invalidate(self, i: int) -> None:
        self.cache.invalidate(MODEL, "id", i)

    def warm(self, ids: Iterable[int]) -> None:
        self.cache.get_many(MODEL, "id", list(ids))


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


# -- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, server: RedisServer, quick: bool) -> None:
        self.port = server.port
        self.quick = quick
        self.n_single = 200 if quick else 3000
        self.n_batches = 3 if quick else 60
        self.warm_ids = list(range(1, (200 if quick else 3000) + 1))
        self.ids = Ids()
        self.client = redis.Redis(port=self.port)
        self.samples: dict[str, dict[str, list[float]]] = {}

    def record(self, figure: str, system: str, seconds: float) -> None:
        self.samples.setdefault(figure, {}).setdefault(system, []).append(seconds)

    def sync_systems(self, db: Database, tag: str) -> list[Any]:
        pool = redis.ConnectionPool(port=self.port)
        return [
            Raw(self.client, db, tag),
            ProtocolFloor(self.client, db, tag),
            CowSystem(self.client, db, tag),
            Dogpile(pool, db, tag, lock=False),
            Dogpile(pool, db, tag, lock=True),
        ]

    def round(self, number: int) -> None:
        db = Database()
        systems = self.sync_systems(db, f"r{number}")
        for system in systems:
            system.warm(self.warm_ids)
        hits = self.warm_ids[: self.n_single]
        for system in systems:
            self.record("hit", system.name, per_op(system.hit, hits))
        for system in systems:
            self.record("miss", system.name, per_op(system.miss, self.ids.take(self.n_single)))
        hit_batches = batches(self.warm_ids, 100)[: self.n_batches] * (2 if self.quick else 1)
        for system in systems:
            self.record("get_many 100 hits", system.name, per_op(system.many_hits, hit_batches))
        for system in systems:
            cold = batches(self.ids.take(100 * self.n_batches), 100)
            self.record("get_many 100 misses", system.name, per_op(system.many_misses, cold))
        for system in systems:
            self.record("invalidate", system.name, per_op(system.invalidate, hits))
        slow = Database(delay=0.001)
        for system in self.sync_systems(slow, f"s{number}"):
            n = max(20, self.n_single // 10)
            self.record("miss, 1 ms fetch", system.name, per_op(system.miss, self.ids.take(n)))
        asyncio.run(self.async_round(number))

    async def async_round(self, number: int) -> None:
        db = Database()
        client = aredis.Redis(port=self.port)
        cache = ACow(client, db, prefix=f"acc{number}:")
        tag = f"ar{number}"

        async def raw_hit(i: int) -> Any:
            return decode_json(await client.get(f"{tag}:{i}"))  # type: ignore[arg-type]

        async def raw_many(ids: Sequence[int]) -> Any:
            return [decode_json(v) for v in await client.mget([f"{tag}:{i}" for i in ids])]

        async def raw_miss(i: int) -> Any:
            data = await client.get(f"{tag}:{i}")
            if data is not None:
                return decode_json(data)
            obj = await db.afetch(i)
            await client.set(f"{tag}:{i}", encode_json(obj), ex=TTL)
            return obj

        async def raw_many_misses(ids: Sequence[int]) -> Any:
            keys = [f"{tag}:{i}" for i in ids]
            found = await client.mget(keys)
            objs = await db.afetch_many([i for i, v in zip(ids, found, strict=True) if v is None])
            await client.mset({f"{tag}:{o['id']}": encode_json(o) for o in objs})
            return objs

        async def cow_hit(i: int) -> Any:
            return await cache.get(MODEL, "id", i)

        async def cow_many(ids: Sequence[int]) -> Any:
            return await cache.get_many(MODEL, "id", ids)

        async with client.pipeline(transaction=False) as pipe:
            for i in self.warm_ids:
                pipe.set(f"{tag}:{i}", encode_json(row(i)), ex=TTL)
            await pipe.execute()
        await cache.get_many(MODEL, "id", self.warm_ids)
        hits = self.warm_ids[: self.n_single]
        hit_batches = batches(self.warm_ids, 100)[: self.n_batches]
        raw_name, cow_name = "raw redis.asyncio (limit)", "cachecow async"
        self.record("hit (async)", raw_name, await aper_op(raw_hit, hits))
        self.record("hit (async)", cow_name, await aper_op(cow_hit, hits))
        self.record("miss (async)", raw_name, await aper_op(raw_miss, self.ids.take(self.n_single)))
        self.record("miss (async)", cow_name, await aper_op(cow_hit, self.ids.take(self.n_single)))
        self.record("get_many 100 hits (async)", raw_name, await aper_op(raw_many, hit_batches))
        self.record("get_many 100 hits (async)", cow_name, await aper_op(cow_many, hit_batches))
        cold = batches(self.ids.take(100 * self.n_batches), 100)
        self.record("get_many 100 misses (async)", raw_name, await aper_op(raw_many_misses, cold))
        cold = batches(self.ids.take(100 * self.n_batches), 100)
        self.record("get_many 100 misses (async)", cow_name, await aper_op(cow_many, cold))
        await client.aclose()

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
        systems = [
            Raw(client, db, "c1"),
            CowSystem(client, db, "c2"),
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
                before = commandstats(self.client)
                counter[0] = 0
                call(system)
                trips = counter[0]
                commands = sum(delta(self.client, before).values())
                out.setdefault(op, {})[system.name] = {"round_trips": trips, "commands": commands}
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
                entry["ratio"] = statistics.median(v / b for v, b in zip(values, base, strict=True))
            out[figure][system] = entry
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# cachecow benchmark results",
        "",
        f"{result['date']} on {result['machine']}; Python {result['python']}, "
        f"redis-py {result['redis_py']} (hiredis {result.get('hiredis') or 'absent'}), "
        f"Redis {result['redis_server']}, "
        f"dogpile.cache {result['dogpile']}; {result['rounds']} rounds"
        + (" (quick smoke run: not a measurement)" if result["quick"] else "")
        + ".",
        "",
        "## Time per operation (median of the rounds; ratio to the limit in the same round)",
        "",
        "| figure | system | µs per op | x limit |",
        "|---|---|---:|---:|",
    ]
    for figure, systems in result["timings"].items():
        for system, entry in systems.items():
            ratio = f"{entry['ratio']:.2f}" if "ratio" in entry else ""
            lines.append(f"| {figure} | {system} | {entry['median_us']:.1f} | {ratio} |")
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
    fig.suptitle(f"cachecow benchmarks, {result['date']}, {result['machine']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hiredis_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("hiredis")
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few ops, one round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of interleaved systems")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    import dogpile

    with RedisServer() as server:
        bench = Bench(server, args.quick)
        for number in range(rounds):
            print(f"round {number + 1}/{rounds}", file=sys.stderr)
            bench.round(number)
        result: dict[str, Any] = {
            "date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {platform.system()}, "
            f"{len(__import__('os').sched_getaffinity(0))} cores",
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "hiredis": _hiredis_version(),
            "redis_server": bench.client.info("server")["redis_version"],
            "dogpile": dogpile.__version__,
            "cachecow": cachecow.__version__,
            "rounds": rounds,
            "quick": args.quick,
            "timings": summarize(bench.samples),
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
