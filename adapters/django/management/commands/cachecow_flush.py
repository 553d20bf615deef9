"""``manage.py cachecow_flush``: delete every cached entry of a model (``invalidate_model``)."""

from __future__ import annotations

from typing import Any

from cachecow import _admin

from ..._commands import ModelCommand


class Command(ModelCommand):
    help = (
        "Delete every cached entry of a model, leases in flight included (invalidate_model): "
        "after a data migration, or writes no invalidation saw."
    )

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--no-settle",
            action="store_true",
            help="one scan, without waiting flag_ttl for the leases in flight and scanning again",
        )

    def run(self, cache: Any, model: Any, options: dict[str, Any]) -> None:
        settle = not options["no_settle"]
        _admin.flush_report(cache, model, self.write, self.progress, settle=settle)
