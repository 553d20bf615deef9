"""Shared test setup: the Redis fixtures come from cachecow.testing.plugin (see pyproject).

At the end of a run, the fault suite's figures (tests/test_faults.py) are printed as a table.
"""

from __future__ import annotations

from typing import Any

from tests.faults import LOADS, REPORTS, Load, Report


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
