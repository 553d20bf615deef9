"""What moves cachecow's ratio to raw redis-py on hits: the experiment behind "Why two harnesses
disagreed" in docs/benchmarks.md.

Raw redis-py ``GET`` (and decoding) and cachecow's ``get`` read the same 3,000 warm rows, in
slices interleaved system by system; it prints the median time per hit of each, the median of
each slice's ratio to raw, and the median µs over raw. One variant per run::

    .venv/bin/python benchmarks/placement.py inproc --pin 0,0       # one core for all
    .venv/bin/python benchmarks/placement.py inproc --pin 0,1       # redis-server apart
    .venv/bin/python benchmarks/placement.py subproc --pin 0,1      # a process per system
    .venv/bin/python benchmarks/placement.py inproc --pin 0,1 --shared-client
    .venv/bin/python benchmarks/placement.py inproc --pin 0,1 --no-gc
    .venv/bin/python benchmarks/placement.py inproc --pin 0,1 --no-hiredis
    .venv/bin/python benchmarks/placement.py inproc --pin 0,1 --cold-memo
    .venv/bin/python benchmarks/placement.py inproc --pin 0,1 --ballast 2000
    .venv/bin/python benchmarks/placement.py inproc --pin 0,1 --slice 500 --slices 30

``--pin S,C`` pins ``redis-server`` (every thread) to core S and the clients to core C; without
it the scheduler places them. Each run takes a few seconds.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import time
from typing import Any

import redis
import redis.connection
from redis._parsers import _RESP2Parser
from run import CowSystem, Database, ProtocolFloor, Raw, per_op, pin

from cachecow.testing import RedisServer

KEYS = 3000


def make(name: str, port: int, options: dict[str, Any], client: redis.Redis | None = None) -> Any:
    """The system ``name``, its rows warm, on ``client`` or a client of its own."""
    if client is None:
        kwargs: dict[str, Any] = {}
        if options["no_hiredis"]:
            redis.connection.HIREDIS_AVAILABLE = False  # the pure-Python packer
            kwargs["parser_class"] = _RESP2Parser  # (RESP3's, on a RESP3 connection)
        client = redis.Redis(connection_pool=redis.ConnectionPool(port=port, **kwargs))
        connection = client.connection_pool.get_connection()
        hiredis = "Hiredis" in type(connection._parser).__name__
        client.connection_pool.release(connection)
        if hiredis == options["no_hiredis"]:
            raise RuntimeError(f"the parser is {connection._parser!r}")
    tag = f"{name}{time.monotonic_ns()}"
    system: Any
    if name == "raw":
        system = Raw(client, Database(), tag)
    elif name == "floor":
        system = ProtocolFloor(client, Database(), tag)
    else:
        system = CowSystem(client, Database(), tag)
        if options["cold_memo"]:
            system.cache.key_memo_size = 0  # every lookup hashes its key again
    system.warm(range(1, KEYS + 1))
    return system


def slice_of(start: int, n: int) -> list[int]:
    return [(start + k) % KEYS + 1 for k in range(n)]


def serve(name: str, port: int, options: dict[str, Any], conn: Any) -> None:
    """A system in a process of its own: time the slices the parent asks for."""
    if options["no_gc"]:
        gc.disable()
    system = make(name, port, options)
    while (message := conn.recv()) is not None:
        start, n = message
        conn.send(per_op(system.hit, slice_of(start, n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layout", choices=["inproc", "subproc"])
    parser.add_argument("--systems", default="raw,cow", help="raw, floor, cow; the first is 1x")
    parser.add_argument("--slice", type=int, default=3000, help="hits per slice")
    parser.add_argument("--slices", type=int, default=5, help="slices per system")
    parser.add_argument("--pin", default="", help="cores of redis-server and the clients: S,C")
    parser.add_argument("--shared-client", action="store_true", help="inproc: one client")
    parser.add_argument("--no-gc", action="store_true")
    parser.add_argument("--no-hiredis", action="store_true")
    parser.add_argument("--cold-memo", action="store_true", help="cachecow hashes every key")
    parser.add_argument("--ballast", type=int, default=0, help="thousands of live objects more")
    args = parser.parse_args()
    names = args.systems.split(",")
    options = {"no_gc": args.no_gc, "no_hiredis": args.no_hiredis, "cold_memo": args.cold_memo}
    times: dict[str, list[float]] = {name: [] for name in names}
    with RedisServer() as server:
        assert server.process is not None
        if args.pin:
            server_cpu, client_cpu = (int(cpu) for cpu in args.pin.split(","))
            pin(server.process.pid, server_cpu)
            os.sched_setaffinity(0, {client_cpu})  # and the processes started below
        pipes: dict[str, Any] = {}
        if args.layout == "inproc":
            if args.no_gc:
                gc.disable()
            _ballast = [{"n": n} for n in range(args.ballast * 1000)]  # held to the end
            shared = redis.Redis(port=server.port) if args.shared_client else None
            systems = {name: make(name, server.port, options, shared) for name in names}

            def run(name: str, start: int) -> float:
                return per_op(systems[name].hit, slice_of(start, args.slice))

        else:
            ctx = multiprocessing.get_context("spawn")
            for name in names:
                pipes[name], child = ctx.Pipe()
                ctx.Process(
                    target=serve, args=(name, server.port, options, child), daemon=True
                ).start()

            def run(name: str, start: int) -> float:
                pipes[name].send((start, args.slice))
                return float(pipes[name].recv())

        for k in range(args.slices):
            for name in names:
                times[name].append(run(name, k * args.slice))
        for pipe in pipes.values():
            pipe.send(None)
    base = times[names[0]]
    figures = []
    for name in names:
        pairs = list(zip(times[name], base, strict=True))
        ratio = statistics.median(v / b for v, b in pairs)
        over = statistics.median((v - b) * 1e6 for v, b in pairs)
        median = statistics.median(times[name]) * 1e6
        figures.append(f"{name} {median:.1f} µs, {ratio:.2f}x, {over:+.1f} µs")
    flags = [f for f in ("shared_client", "no_gc", "no_hiredis", "cold_memo") if getattr(args, f)]
    if args.ballast:
        flags.append(f"ballast {args.ballast}k")
    print(f"{args.layout} pin={args.pin or 'free'} slice={args.slice} {' '.join(flags)}:")
    print("  " + " | ".join(figures))


if __name__ == "__main__":
    main()
