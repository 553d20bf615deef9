"""``manage.py cachecow_relay``: deliver the outbox to Redis in the foreground, until stopped."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS

from ... import default_cache


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Deliver cachecow's outbox to Redis: what no commit's drain delivered (writes made "
        "outside Django, processes that died after a commit, commits made while Redis was "
        "down). Any number may run: rows are claimed, never delivered twice at once."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument("--interval", type=float, default=0.2, help="polling interval (s)")
        parser.add_argument("--once", action="store_true", help="drain once, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        cache = default_cache()
        alias = options["database"]
        if options["once"]:
            self.stdout.write(f"delivered {cache.drain(alias)} rows")
            return
        relay = cache.relay(alias, interval=options["interval"])
        self.stdout.write(f"relaying the outbox of {alias!r}; Ctrl-C stops")
        try:
            while relay.running:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            relay.stop()
