"""What ``invalidate_model`` costs: the time of one SCAN-and-delete pass over a model's entries
among another model's, and what it does to reads of the other model running meanwhile.

A private redis-server (``cachecow.testing.RedisServer``); ``--entries`` entries of model A and
as many of model B. One pass is ``invalidate_model(A, settle=False)``; the default call adds a
second pass after waiting ``flag_ttl`` (10 s by default), which this measures as a pass. Reads
of B by one thread, timed during the pass and without it.

    .venv/bin/python benchmarks/invalidate_model.py [--entries 100000] [--scan-count 1000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import cachecow
from cachecow.testing import RedisServer


class Rows(cachecow.CacheCow):
    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        return {"id": id_val, "payload": "x" * 100}


def fill(cache: Rows, model: str, entries: int) -> None:
    for start in range(0, entries, 1000):
        cache.get_many(model, "id", list(range(start, min(entries, start + 1000))))


def read_latencies(cache: Rows, entries: int, stop: threading.Event, out: list[float]) -> None:
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        cache.get("B", "id", i % entries)
        out.append(time.perf_counter() - started)
        i += 7919


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--scan-count", type=int, default=1000)
    args = parser.parse_args()
    with RedisServer() as server:
        client = cachecow.connect(server.url, timeout=5)
        cache = Rows(client)
        cache.scan_count = args.scan_count
        fill(cache, "A", args.entries)
        fill(cache, "B", args.entries)
        quiet: list[float] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_latencies, args=(cache, args.entries, stop, quiet))
        reader.start()
        time.sleep(2)
        stop.set()
        reader.join()
        during: list[float] = []
        stop = threading.Event()
        reader = threading.Thread(target=read_latencies, args=(cache, args.entries, stop, during))
        reader.start()
        started = time.perf_counter()
        deleted = cache.invalidate_model("A", settle=False)
        elapsed = time.perf_counter() - started
        stop.set()
        reader.join()
        assert deleted == args.entries, deleted
        started = time.perf_counter()
        assert cache.invalidate_model("A", settle=False) == 0
        empty = time.perf_counter() - started
        print(f"{args.entries:,} entries of A among as many of B, SCAN COUNT {args.scan_count}")
        print(f"pass deleting A: {elapsed:.2f} s ({deleted / elapsed:,.0f} entries/s)")
        print(f"pass finding nothing left: {empty:.2f} s")
        print(
            f"reads of B, p50 / p99 ms: quiet {percentile(quiet, 0.5):.3f} / "
            f"{percentile(quiet, 0.99):.3f}; during the pass {percentile(during, 0.5):.3f} / "
            f"{percentile(during, 0.99):.3f} ({len(during):,} reads, max "
            f"{max(during) * 1e3:.1f} ms; median of quiet {statistics.median(quiet) * 1e3:.3f})"
        )
        client.close()


if __name__ == "__main__":
    main()
