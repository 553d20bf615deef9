"""What a batch costs on Redis Cluster, against the same batch on one server.

``get_many`` of ``--keys`` random lookups (100 by default) among ``--rows`` cached rows, on a
private ``redis-server`` and on a private Redis Cluster of 3 masters (``cachecow.testing``), in
three layouts:

- ``standalone``: one server, one script call per phase;
- ``cluster, per node``: one script call per node and phase, whatever the slots of its
  lookups (the node form of the batch scripts, Redis 7+);
- ``cluster, per slot``: one script call per slot and phase, each node's calls in a pipeline
  (what servers older than Redis 7 get).

Hits (one phase) and misses (lease, ``fetch_many``, commit; the batch's keys invalidated
first, untimed), for the sync and the asyncio class. The layouts are interleaved in
``--rounds`` rounds of ``--batches`` batches each; a figure is the median over the rounds of
each round's median batch. Also printed: the script time the servers spent per batch (their
``commandstats``, summed over the nodes), and the ratio to the standalone figure of the same
round.

    .venv/bin/python benchmarks/cluster_batches.py [--rounds 7] [--batches 200] [--keys 100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

import cachecow
from cachecow.testing import RedisClusterServers, RedisServer

PAYLOAD = "x" * 100


class Rows(cachecow.CacheCow):
    def fetch_many(self, cls: Any, id_field: Any, id_vals: Sequence[Any]) -> dict[Any, Any]:
        return {i: {"id": i, "payload": PAYLOAD} for i in id_vals}


class AsyncRows(cachecow.AsyncCacheCow):
    async def fetch_many(self, cls: Any, id_field: Any, id_vals: Sequence[Any]) -> dict[Any, Any]:
        return {i: {"id": i, "payload": PAYLOAD} for i in id_vals}


def script_usec(ports: list[int]) -> float:
    """Microseconds the servers on ``ports`` spent in scripts so far."""
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as node:
            stats: Any = node.info("commandstats")
        total += sum(
            float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("evalsha", "eval")
        )
    return total


class Layout:
    """One cache (sync or asyncio) in one layout, and its figures so far."""

    def __init__(self, name: str, cache: Any, ports: list[int], loop: Any = None) -> None:
        self.name = name
        self.cache = cache
        self.ports = ports
        self.loop = loop
        self.rounds: dict[str, list[float]] = {}  # figure -> each round's median, in µs
        self.server: dict[str, list[float]] = {}  # figure -> script µs per batch, per round

    def call(self, method: str, ids: list[int]) -> Any:
        result = getattr(self.cache, method)("row", "id", ids)
        if self.loop is not None:
            result = self.loop.run_until_complete(result)
        return result

    def measure(self, figure: str, batches: list[list[int]], misses: bool) -> None:
        times = []
        before = script_usec(self.ports)
        for ids in batches:
            if misses:
                self.call("invalidate_many", ids)
            started = time.perf_counter()
            rows = self.call("get_many", ids)
            times.append(time.perf_counter() - started)
            assert [row["id"] for row in rows] == ids
        spent = script_usec(self.ports) - before  # the invalidations' DELs run no script
        self.rounds.setdefault(figure, []).append(statistics.median(times) * 1e6)
        self.server.setdefault(figure, []).append(spent / len(batches))


def fill(layout: Layout, rows: int) -> None:
    for start in range(0, rows, 1000):
        layout.call("get_many", list(range(start, min(rows, start + 1000))))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    rng = random.Random(1)
    loop = asyncio.new_event_loop()
    with RedisServer() as server:
        cluster = RedisClusterServers().start()
        try:
            url = f"redis://127.0.0.1:{cluster.ports[0]}"

            async def make_async(connect: Callable[[], Any]) -> Any:
                return AsyncRows(connect())

            def layouts(mode: str) -> list[Layout]:
                if mode == "sync":
                    single = Rows(cachecow.connect(server.url, timeout=5))
                    node = Rows(cachecow.connect_cluster(url, timeout=5))
                    slot = Rows(cachecow.connect_cluster(url, timeout=5))
                    run = None
                else:
                    run = loop
                    single = loop.run_until_complete(
                        make_async(lambda: cachecow.connect_async(server.url, timeout=5))
                    )
                    node, slot = (
                        loop.run_until_complete(
                            make_async(lambda: cachecow.connect_cluster_async(url, timeout=5))
                        )
                        for _ in range(2)
                    )
                slot._io.node_scripts = None  # as with a server before Redis 7
                return [
                    Layout("standalone", single, [server.port], run),
                    Layout("cluster, per node", node, cluster.ports, run),
                    Layout("cluster, per slot", slot, cluster.ports, run),
                ]

            modes = {"sync": layouts("sync"), "asyncio": layouts("asyncio")}
            for group in modes.values():
                for layout in group:
                    fill(layout, args.rows)
                    layout.call("get_many", list(range(args.keys)))  # warm
            for _ in range(args.rounds):
                for mode, group in modes.items():
                    for figure, misses in (("hits", False), ("misses", True)):
                        batches = [
                            rng.sample(range(args.rows), args.keys) for _ in range(args.batches)
                        ]
                        order = list(group)
                        rng.shuffle(order)
                        for layout in order:
                            layout.measure(f"{mode}, {figure}", batches, misses)
            report(modes, args)
            for layout in modes["sync"]:
                layout.cache.redis.close()
            for layout in modes["asyncio"]:
                loop.run_until_complete(layout.cache.redis.aclose())
        finally:
            cluster.stop()
            loop.close()


def report(modes: dict[str, list[Layout]], args: Any) -> None:
    print(
        f"get_many of {args.keys} random lookups among {args.rows:,} rows; "
        f"{args.rounds} rounds of {args.batches} batches; median of the rounds' medians"
    )
    print(
        f"{'figure':<16} {'layout':<18} {'per batch':>10} {'x standalone':>13} "
        f"{'script µs/batch':>16}"
    )
    for group in modes.values():
        standalone = group[0]
        for figure in standalone.rounds:
            for layout in group:
                ratios = [
                    mine / theirs
                    for mine, theirs in zip(
                        layout.rounds[figure], standalone.rounds[figure], strict=True
                    )
                ]
                print(
                    f"{figure:<16} {layout.name:<18} "
                    f"{statistics.median(layout.rounds[figure]):>8.0f}µs "
                    f"{statistics.median(ratios):>12.2f}x "
                    f"{statistics.median(layout.server[figure]):>15.0f}"
                )


if __name__ == "__main__":
    main()
