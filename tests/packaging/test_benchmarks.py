"""The benchmark harnesses run: smoke runs of a few hundred operations (never a timed assertion).

What they do check are the figures that do not depend on the machine: round trips per
operation (none for a near-cache hit), that a herd of 64 readers of one cold key makes one fetch
under cachecow, and that the Zipf workload of ``near.py`` finds no stale read that cachecow
promises against (with the near cache: none after the reading process's own invalidation).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("dogpile.cache", reason="the benchmark needs the bench extra")
pytest.importorskip("matplotlib", reason="the benchmark needs the bench extra")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "results.md").read_text().startswith("# cachecow benchmark results")
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data: dict[str, object] = json.loads((out / "results.json").read_text())
    return data


def test_every_figure_for_every_system(results: dict[str, object]) -> None:
    timings = results["timings"]
    assert isinstance(timings, dict)
    systems = {
        "raw redis-py (limit)",
        "protocol floor (scripts only)",
        "cachecow",
        "cachecow + near cache",
        "cachecow + near cache, shared",
        "dogpile.cache",
        "dogpile.cache + distributed_lock",
    }
    for figure in ("hit", "miss", "get_many 100 hits", "get_many 100 misses", "invalidate"):
        assert set(timings[figure]) == systems, figure
        assert all(entry["median_us"] > 0 for entry in timings[figure].values())
    assert set(timings["hit (async)"]) == {
        "raw redis.asyncio (limit)",
        "cachecow async",
        "cachecow async + near cache, shared",
        "cashews client-side",
    }


def test_round_trips_per_operation(results: dict[str, object]) -> None:
    costs = results["costs"]
    assert isinstance(costs, dict)
    trips = {op: systems["cachecow"]["round_trips"] for op, systems in costs.items()}
    assert trips == {
        "miss": 2,
        "hit": 1,
        "invalidate": 1,
        "get_many 100 misses": 2,
        "get_many 100 hits": 1,
    }


def test_near_cache_hits_make_no_round_trip(results: dict[str, object]) -> None:
    costs = results["costs"]
    assert isinstance(costs, dict)
    for op in ("hit", "get_many 100 hits"):
        assert costs[op]["cachecow + near cache"] == {"round_trips": 0, "commands": 0}


def test_herds_make_one_fetch(results: dict[str, object]) -> None:
    for herd in ("herd", "herd_slow"):
        figures = results[herd]
        assert isinstance(figures, dict)
        assert figures["cachecow"]["fetches"] == 1
        assert figures["cachecow async (64 tasks)"]["fetches"] == 1


def test_cachecow_stores_exactly_the_serialized_bytes(results: dict[str, object]) -> None:
    sizes = results["sizes"]
    assert isinstance(sizes, dict)
    assert sizes["cachecow, json"]["value_bytes"] == sizes["raw SET, JSON"]["value_bytes"]
    assert sizes["cachecow, msgpack"]["value_bytes"] == sizes["raw SET, msgpack"]["value_bytes"]


def test_the_near_cache_benchmark_runs_and_finds_no_stale_read_it_promises_against(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "near.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "near.json").read_text())
    without, with_near = data["zipf"]["without"], data["zipf"]["with"]
    assert without["stale"]["same_process"] == without["stale"]["other_processes"] == 0
    assert with_near["stale"]["same_process"] == 0  # others' writes: within the delivery delay
    assert with_near["near_hits"] > 0
    assert without["near_hits"] == 0
    memory = data["memory"]
    for mode in ("bytes", "shared"):
        assert memory[mode]["held_per_entry"] > memory["value_bytes"]
    # A shared entry is the decoded row, several times its bytes, and counted so.
    assert memory["shared"]["held_per_entry"] > 2 * memory["bytes"]["held_per_entry"]
    assert memory["shared"]["counted_per_entry"] > 2 * memory["bytes"]["counted_per_entry"]
