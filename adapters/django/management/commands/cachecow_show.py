"""``manage.py cachecow_show``: the object a lookup's entry holds, a tombstone, or nothing."""

from __future__ import annotations

from typing import Any

from cachecow import _admin

from ..._commands import LookupCommand


class Command(LookupCommand):
    help = "Show the object a lookup's cache entry holds, decoded; 'tombstone'; or 'not cached'."

    def run(self, cache: Any, model: Any, options: dict[str, Any]) -> None:
        _admin.show_report(cache, model, *self.lookup(options), self.write)
