"""Shared test setup: the Redis fixtures come from cachecow.testing.plugin (see pyproject).

Two tiers. ``pytest`` runs the fast one (under a minute, needs only ``redis-server``): the
pure tests, the flows against scripted replies, the protocol and the contract suite on private
Redis servers, Redis failures, limits, TLS and ACLs. ``pytest --full`` (what CI runs) adds
what needs more: Redis Cluster and Sentinel, the fault and load suite, thread swarms, the
adapters (SQLite, PostgreSQL, MariaDB, mongomock) with Django's own test suite, the examples,
the built wheel and the benchmarks. A file or directory named on the command line runs
whatever its tier.

At the end of a run, the fault suite's figures (tests/faults/test_faults.py) are printed as a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import LOADS, REPORTS, Load, Report

FULL_TIER = {
    # directories of tests/ (each holds tests that need the same things)
    "cluster",  # a private Redis Cluster (6 redis-servers)
    "sentinel",  # a private Sentinel group
    "faults",  # processes killed, paused, restarted, failed over; the swarms
    "scale",  # batches of 100,000 lookups
    "adapters",  # SQLAlchemy, Django, MongoEngine, the outbox: PostgreSQL and MariaDB
    "django_suite",  # Django's own test suite over the cached manager
    "examples",  # the example apps, run as their READMEs say
    "packaging",  # the wheel built and installed into a fresh venv; the benchmarks' smoke run
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="run the full tier too (Cluster, Sentinel, faults, adapters, packaging): CI's run",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the full tier out of a plain ``pytest`` run, unless it is named on the command
    line (a directory of it, or a file inside one)."""
    if config.getoption("--full") or collection_path.name not in FULL_TIER:
        return None
    path = collection_path.resolve()
    for arg in config.args:
        named = Path(arg.split("::")[0]).resolve()
        if named == path or path in named.parents:
            return None
    return True


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LOADS:
        terminalreporter.section("fault suite: load on one client")
        terminalreporter.write_line(
            "errors: raised to callers; fetches: fetch calls per cold key (distinct counts); "
            "scripts: script calls the server ran; latency of each call"
        )
        terminalreporter.write_line(Load.header())
        for load in LOADS:
            terminalreporter.write_line(load.row())
    if not REPORTS:
        return
    terminalreporter.section("fault suite: what callers saw under each failure")
    terminalreporter.write_line(
        "ops: calls made; reads failed / inv.err: errors raised to callers (invalidations are "
        "retried until they succeed); stale: reads older than an invalidation that had returned; "
        "after: stale entries once recovered; worst ms: slowest single call; "
        "stall ms: longest the test process stood still (allowed on top of the bound)"
    )
    terminalreporter.write_line(Report.header())
    for report in REPORTS:
        terminalreporter.write_line(report.row())
