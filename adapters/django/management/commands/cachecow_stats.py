"""``manage.py cachecow_stats``: how many values, tombstones and leases a model has."""

from __future__ import annotations

from typing import Any

from cachecow import _admin

from ..._commands import ModelCommand


class Command(ModelCommand):
    help = (
        "Count a model's (without MODEL, every model's) values, tombstones and leases by lookup "
        "field with SCAN, their bytes, and the memory Redis uses for them."
    )
    model_required = False

    def run(self, cache: Any, model: Any, options: dict[str, Any]) -> None:
        _admin.stats_report(cache, model, self.write, self.progress)
