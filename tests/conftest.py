"""Shared test setup: the Redis fixtures come from cachecow.testing.plugin (see pyproject).

Two tiers. ``pytest`` runs the fast one (under a minute, needs only ``redis-server``): the
pure tests, the flows against scripted replies, the protocol and the contract suite on private
Redis servers, Redis failures, limits, TLS and ACLs. ``pytest --full`` (what CI runs) adds
what needs more: Redis Cluster and Sentinel, the fault and load suite, thread swarms, the
adapters (SQLite, PostgreSQL, MariaDB, mongomock) with Django's own test suite, the examples,
the built wheel and the benchmarks. A file or directory named on the command line runs
whatever its tier.

At the end of a run, the fault suite's figures (tests/test_faults.py) are printed as a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.faults import LOADS, REPORTS, Load, Report

FULL_TIER = {
    "adapters",  # SQLAlchemy, Django, MongoEngine, the outbox: PostgreSQL and MariaDB
    "django_suite",  # Django's own test suite over the cached manager
    "test_cluster.py",
    "test_cluster_async_batches.py",
    "test_resharding.py",
    "test_sentinel.py",
    "test_faults.py",
    "test_swarm.py",
    "test_example_django.py",
    "test_example_mongoengine.py",
    "test_example_sqlalchemy.py",
    "test_packaging.py",
    "test_benchmarks.py",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="run the full tier too (Cluster, Sentinel, faults, adapters, packaging): CI's run",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the full tier out of a plain ``pytest`` run (unless named on the command line)."""
    if config.getoption("--full") or collection_path.name not in FULL_TIER:
        return None
    named = {Path(arg.split("::")[0]).resolve() for arg in config.args}
    if collection_path.resolve() in named:
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
