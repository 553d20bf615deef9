"""``manage.py cachecow_audit``: compare a sample of cached entries with the database."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from cachecow import _admin

from ..._commands import ModelCommand


class Command(ModelCommand):
    help = (
        "Sample cached entries of a model, compare each with the row the cache reads now, and "
        "report how many are stale (0 expected). Fails (exit status 1) when any is."
    )

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument("--sample", type=int, default=1000, help="entries to check")
        parser.add_argument(
            "--grace",
            type=float,
            default=1.0,
            help="seconds before a mismatch is checked again (default 1)",
        )
        parser.add_argument("--seed", type=int, help="the sampling's random seed")

    def run(self, cache: Any, model: Any, options: dict[str, Any]) -> None:
        result = _admin.audit(
            cache,
            model,
            options["sample"],
            grace=options["grace"],
            seed=options["seed"],
            progress=self.progress,
        )
        _admin.audit_report(result, self.write)
        if result.stale:
            raise CommandError(f"{result.stale} stale entries of {result.label}", returncode=1)
