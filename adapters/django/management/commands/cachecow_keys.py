"""``manage.py cachecow_keys``: a lookup's value and lease keys, their TTLs, whether present."""

from __future__ import annotations

from typing import Any

from cachecow import _admin

from ..._commands import LookupCommand


class Command(LookupCommand):
    help = "Show a lookup's value key and lease (flag) key: present or not, size, TTL."

    def run(self, cache: Any, model: Any, options: dict[str, Any]) -> None:
        _admin.keys_report(cache, model, *self.lookup(options), self.write)
