"""The near cache under a skewed load across processes, and what an entry of it costs in memory.

Run from the repository root, with the ``bench`` extra installed (as for ``run.py``)::

    .venv/bin/python benchmarks/near.py            # the full run: a few minutes
    .venv/bin/python benchmarks/near.py --quick    # a smoke run: not a measurement

It starts its own ``redis-server`` on a free port and stops it at the end. Two parts:

**A Zipf workload.** ``--processes`` processes (4), each with its own cache (and, in the near
run, its own near cache), read rows whose ids follow a Zipf law (``s`` = 1.1 over ``--keys``
100,000 ids): ``--reads`` reads in all (1,000,000), and 1% of the operations are writes, each a
new version of the row in the database followed by the writer's ``invalidate``. The database is
an array in shared memory (no Redis traffic of its own); each row carries its version. The same
workload (same seeds) runs twice on an empty Redis, without and with the near cache, and reports
per run: reads/s (all processes), the near cache's hit ratio, the Redis commands executed
(``INFO commandstats`` before and after, as ``run.py`` counts them) and so the calls saved, and
stale reads. Each writer records ``(key, version, when invalidate returned)``
(``time.monotonic()``, one clock for every process on Linux); a read that started after an
invalidation had returned, and answered an older version, is stale. Stale reads are counted
apart when that invalidation was made by the reading process itself (the near cache promises
none) or by another process (possible within the delivery delay of Redis's message: their age,
from the invalidation's return to the read's start, is reported as p50 / p99 / max). The
processes are left to the scheduler (not pinned, unlike ``run.py``): this part measures what
the machine does with four busy clients, not the cost of one call.

**Memory per entry.** ``--entries`` entries of the benchmark's row (the same 400-byte JSON as
``run.py``'s) are kept in a near cache directly, with keys of cachecow's format, once as bytes
and once shared (the decoded object), each in a fresh process: the memory they hold
(``tracemalloc``, and the RSS growth in another fresh process), per entry, against what the
near cache counts (``len(value) + len(key) + ENTRY_OVERHEAD``).

The results go to ``benchmarks/results/near.md`` and ``near.json``.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import gc
import itertools
import json
import multiprocessing
import os
import platform
import random
import sys
import time
import tracemalloc
from array import array
from pathlib import Path
from typing import Any

import redis
from run import commandstats, decode_json, encode_json, row, wait_for_channel

import cachecow
from cachecow._near import ENTRY_OVERHEAD, NearCache
from cachecow.keys import build_keys
from cachecow.testing import RedisServer

RESULTS = Path(__file__).parent / "results"
MODEL = "bench.User"
ZIPF_S = 1.1
WRITE_SHARE = 0.01
SEED = 20261203


# -- the Zipf workload --------------------------------------------------------------------------


class Rows(cachecow.CacheCow):
    """The benchmark's rows, each with its version from the shared database."""

    def __init__(self, client: redis.Redis, versions: Any, **kw: Any) -> None:
        super().__init__(client, ttl=3600, **kw)
        self.versions = versions

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        obj = row(id_val)
        obj["v"] = self.versions[id_val]
        return obj

    def serialize(self, obj: Any) -> bytes:
        return encode_json(obj)

    def deserialize(self, cls: Any, data: bytes) -> Any:
        return decode_json(data)


def zipf_ids(rng: random.Random, keys: int, n: int) -> list[int]:
    """``n`` ids in ``1..keys`` drawn with P(rank k) proportional to 1 / k**s."""
    cumulative = list(itertools.accumulate(1.0 / k**ZIPF_S for k in range(1, keys + 1)))
    return rng.choices(range(1, keys + 1), cum_weights=cumulative, k=n)


def zipf_process(
    index: int, port: int, setup: dict[str, Any], versions: Any, lock: Any, barrier: Any, conn: Any
) -> None:
    """One process of the workload: its share of the reads, and the writes among them."""
    near = setup["near_bytes"]
    cache = Rows(
        redis.Redis(port=port), versions, prefix=setup["prefix"], near_bytes=near, near_ttl=30.0
    )
    rng = random.Random(SEED + index)
    reads = setup["reads"] // setup["processes"]
    steps = int(reads / (1 - WRITE_SHARE))
    ids = zipf_ids(rng, setup["keys"], steps)
    is_write = [rng.random() < WRITE_SHARE for _ in range(steps)]
    if near:
        cache.peek(MODEL, "id", 0)  # starts the tracker
        wait_for_channel(cache._near)
    read_ids, read_versions, read_starts = array("i"), array("i"), array("d")
    inv_ids, inv_versions, inv_done = array("i"), array("i"), array("d")
    monotonic, get, invalidate = time.monotonic, cache.get, cache.invalidate
    barrier.wait()
    started = monotonic()
    for i, write in zip(ids, is_write, strict=True):
        if write:
            with lock:
                version = versions[i] + 1
                versions[i] = version
            invalidate(MODEL, "id", i)
            inv_done.append(monotonic())
            inv_ids.append(i)
            inv_versions.append(version)
        else:
            t0 = monotonic()
            obj = get(MODEL, "id", i)
            read_starts.append(t0)
            read_ids.append(i)
            read_versions.append(obj["v"])
            if len(read_ids) == reads:
                break
    elapsed = monotonic() - started
    counts = cache.metrics.snapshot()
    cache.close()
    conn.send(
        {
            "elapsed": elapsed,
            "near_hits": counts.near_hits,
            "hits": counts.hits,
            "misses": counts.misses,
            "reads": (read_ids, read_versions, read_starts),
            "invalidations": (inv_ids, inv_versions, inv_done),
        }
    )


def zipf_run(port: int, setup: dict[str, Any]) -> dict[str, Any]:
    """The workload once, on an empty Redis; what it did and what it cost Redis."""
    client = redis.Redis(port=port)
    client.flushall()
    ctx = multiprocessing.get_context("spawn")
    versions = ctx.Array("q", setup["keys"] + 1, lock=False)
    lock = ctx.Lock()
    barrier = ctx.Barrier(setup["processes"] + 1)
    pipes, processes = [], []
    for index in range(setup["processes"]):
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=zipf_process,
            args=(index, port, setup, versions, lock, barrier, child),
            daemon=True,
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    barrier.wait(timeout=120)  # every process is ready (its channel up, in the near run)
    before = commandstats(client)
    outs = [pipe.recv() for pipe in pipes]
    after = commandstats(client)
    for process in processes:
        process.join(10)
    commands = {
        name.removeprefix("cmdstat_"): after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0) and name != "cmdstat_info"
    }
    client.close()
    reads = sum(len(out["reads"][0]) for out in outs)
    writes = sum(len(out["invalidations"][0]) for out in outs)
    return {
        "reads": reads,
        "writes": writes,
        "reads_per_second": reads / max(out["elapsed"] for out in outs),
        "near_hits": sum(out["near_hits"] for out in outs),
        "near_hit_ratio": sum(out["near_hits"] for out in outs) / reads,
        "redis_commands": sum(commands.values()),
        "redis_commands_by_name": dict(sorted(commands.items())),
        "stale": stale_reads(outs),
    }


def stale_reads(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """Reads that answered a version older than an invalidation that had returned before they
    started: by the reading process itself, or by another (with their ages)."""
    # key -> the invalidations of every process, by completion: times, and the running
    # maximum of their versions (what a read starting after each must at least answer)
    by_key: dict[int, list[tuple[float, int, int]]] = {}
    for process, out in enumerate(outs):
        for i, version, done in zip(*out["invalidations"], strict=True):
            by_key.setdefault(i, []).append((done, version, process))
    timeline: dict[int, tuple[list[float], list[int], dict[int, tuple[list[float], list[int]]]]]
    timeline = {}
    for i, invs in by_key.items():
        invs.sort()
        times = [done for done, _, _ in invs]
        highest = list(itertools.accumulate((v for _, v, _ in invs), max))
        own: dict[int, tuple[list[float], list[int]]] = {}
        for process in {p for _, _, p in invs}:
            mine = [(done, v) for done, v, p in invs if p == process]
            own[process] = (
                [done for done, _ in mine],
                list(itertools.accumulate((v for _, v in mine), max)),
            )
        timeline[i] = (times, highest, own)
    same = other = 0
    ages: list[float] = []
    for process, out in enumerate(outs):
        for i, version, start in zip(*out["reads"], strict=True):
            entry = timeline.get(i)
            if entry is None:
                continue
            times, highest, own = entry
            n = bisect.bisect_left(times, start)  # the invalidations that returned before
            if n == 0 or highest[n - 1] <= version:
                continue
            mine = own.get(process)
            if mine is not None:
                m = bisect.bisect_left(mine[0], start)
                if m and mine[1][m - 1] > version:
                    same += 1
                    continue
            other += 1
            first = bisect.bisect_right(highest, version)  # the first that made it stale
            ages.append(start - times[first])
    ages.sort()
    return {
        "same_process": same,
        "other_processes": other,
        "age_ms": {
            "p50": _percentile(ages, 0.50) * 1000,
            "p99": _percentile(ages, 0.99) * 1000,
            "max": (ages[-1] if ages else 0.0) * 1000,
        },
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


# -- memory per entry ---------------------------------------------------------------------------


def fill(near: NearCache, n: int, shared: bool) -> int:
    """Keep ``n`` rows in ``near`` as a read would (a fresh key and value each); the bytes the
    near cache counts for them."""
    ticket = near.ticket()
    for i in range(1, n + 1):
        key = build_keys("cc:", MODEL, "id", i)[0]
        data = encode_json(row(i))
        near.keep(key, ticket, data, MODEL, decode_json(data) if shared else None)
    return near.size


def entry_memory(n: int, shared: bool, conn: Any) -> None:
    """In a fresh process: what ``n`` entries hold (tracemalloc), and what is counted."""
    near = NearCache(1 << 40, 3600.0, None, shared=shared)
    near.set_live(True)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    counted = fill(near, n, shared)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    conn.send({"held": held, "counted": counted, "entries": len(near.entries)})


def entry_rss(n: int, shared: bool, conn: Any) -> None:
    """In a fresh process, without tracemalloc: the RSS growth for ``n`` entries."""
    near = NearCache(1 << 40, 3600.0, None, shared=shared)
    near.set_live(True)
    gc.collect()
    before = _rss()
    fill(near, n, shared)
    gc.collect()
    conn.send(_rss() - before)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def in_process(target: Any, *args: Any) -> Any:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    out = parent.recv()
    process.join(10)
    return out


def memory(n: int) -> dict[str, Any]:
    key = build_keys("cc:", MODEL, "id", 1)[0]
    value = encode_json(row(1))
    out: dict[str, Any] = {
        "entries": n,
        "key_bytes": len(key),
        "value_bytes": len(value),
        "entry_overhead_assumed": ENTRY_OVERHEAD,
    }
    for mode, shared in (("bytes", False), ("shared", True)):
        traced = in_process(entry_memory, n, shared)
        rss = in_process(entry_rss, n, shared) if sys.platform == "linux" else 0
        counted = traced["counted"] / n
        out[mode] = {
            "held_per_entry": traced["held"] / n,
            "rss_per_entry": rss / n,
            "counted_per_entry": counted,
            # what ENTRY_OVERHEAD would have to be for the count to match what is held
            "overhead_measured": traced["held"] / n - (counted - ENTRY_OVERHEAD),
        }
    return out


# -- report -------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    setup = result["setup"]
    lines = [
        "# The near cache: a Zipf workload, and memory per entry",
        "",
        f"{result['date']} on {result['machine']}; Python {result['python']}, "
        f"redis-py {result['redis_py']}, Redis {result['redis_server']}"
        + (" (quick smoke run: not a measurement)" if result["quick"] else "")
        + ".",
        "",
        f"## Zipf reads (s = {ZIPF_S} over {setup['keys']:,} ids), {setup['processes']} "
        f"processes, {WRITE_SHARE:.0%} writes each followed by invalidate",
        "",
        f"near_bytes {setup['near_bytes_near_run']:,} per process, near_ttl 30 s.",
        "",
        "| | without near cache | with near cache |",
        "|---|---:|---:|",
    ]
    off, on = result["zipf"]["without"], result["zipf"]["with"]
    rows = [
        ("reads", f"{off['reads']:,}", f"{on['reads']:,}"),
        ("writes (each invalidated)", f"{off['writes']:,}", f"{on['writes']:,}"),
        ("reads/s, all processes", f"{off['reads_per_second']:,.0f}", _rate(on, off)),
        ("near-cache hit ratio", "", f"{on['near_hit_ratio']:.1%}"),
        (
            "Redis commands (INFO commandstats: a script's own count too)",
            f"{off['redis_commands']:,}",
            f"{on['redis_commands']:,}",
        ),
        (
            "Redis commands per read",
            f"{off['redis_commands'] / off['reads']:.2f}",
            f"{on['redis_commands'] / on['reads']:.2f}",
        ),
        ("Redis commands saved", "", f"{1 - on['redis_commands'] / off['redis_commands']:.1%}"),
        ("EVALSHA calls (one per read that went to Redis)", _evalsha(off), _evalsha(on)),
        (
            "stale reads: after this process's own invalidation",
            f"{off['stale']['same_process']}",
            f"{on['stale']['same_process']}",
        ),
        (
            "stale reads: after another process's invalidation",
            f"{off['stale']['other_processes']}",
            f"{on['stale']['other_processes']}",
        ),
        ("their age, ms: p50 / p99 / max", _ages(off), _ages(on)),
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    for name, run in (("without", off), ("with", on)):
        by_name = ", ".join(f"{k} {v:,}" for k, v in run["redis_commands_by_name"].items())
        lines.append(f"\nRedis commands {name} the near cache: {by_name}.")
    mem = result["memory"]
    lines += [
        "",
        f"## Memory per entry ({mem['entries']:,} entries of the benchmark's row: "
        f"{mem['value_bytes']}-byte value, {mem['key_bytes']}-byte key)",
        "",
        "| mode | held (tracemalloc) | RSS growth | counted by the near cache | overhead "
        f"measured (assumed: ENTRY_OVERHEAD = {mem['entry_overhead_assumed']}) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("bytes", "shared"):
        m = mem[mode]
        lines.append(
            f"| {mode} | {m['held_per_entry']:.0f} | {m['rss_per_entry']:.0f} | "
            f"{m['counted_per_entry']:.0f} | {m['overhead_measured']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _rate(on: dict[str, Any], off: dict[str, Any]) -> str:
    ratio = on["reads_per_second"] / off["reads_per_second"]
    return f"{on['reads_per_second']:,.0f} ({ratio:.1f}x)"


def _evalsha(run: dict[str, Any]) -> str:
    return f"{run['redis_commands_by_name'].get('evalsha', 0):,}"


def _ages(run: dict[str, Any]) -> str:
    age = run["stale"]["age_ms"]
    if not run["stale"]["other_processes"]:
        return ""
    return f"{age['p50']:.2f} / {age['p99']:.2f} / {age['max']:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--near-bytes", type=int, default=128 * 1024 * 1024)
    parser.add_argument("--entries", type=int, default=20_000, help="for memory per entry")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args(argv)
    if args.quick:
        args.keys, args.reads, args.entries = 10_000, 40_000, 2_000
    setup = {
        "keys": args.keys,
        "reads": args.reads,
        "processes": args.processes,
        "near_bytes_near_run": args.near_bytes,
    }
    with RedisServer() as server:
        zipf = {}
        for name, near in (("without", 0), ("with", args.near_bytes)):
            print(f"Zipf workload {name} the near cache", file=sys.stderr)
            run_setup = {**setup, "near_bytes": near, "prefix": f"z{name}:"}
            zipf[name] = zipf_run(server.port, run_setup)
        version = redis.Redis(port=server.port).info("server")["redis_version"]
    print("memory per entry", file=sys.stderr)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "redis_server": version,
        "quick": args.quick,
        "setup": setup,
        "zipf": zipf,
        "memory": memory(args.entries),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "near.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "near.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
