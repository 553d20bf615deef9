"""``manage.py cachecow_counters``: the counters of the application's processes, summed from
their Prometheus pages (``cachecow counters``)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from cachecow import _counters


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Read the Prometheus pages of the application's processes (PrometheusCollector), sum "
        "the caches' counters over them, and print hits, misses, the hit ratio, leases, "
        "commits, stale commits, busy gets, Redis errors and get's p50 and p99 per model."
    )

    def add_arguments(self, parser: Any) -> None:
        _counters.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            _counters.run(options, self.stdout.write, sys.stdin)
        except _counters.ScrapeError as exc:
            raise CommandError(str(exc), returncode=2) from exc
