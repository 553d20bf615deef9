"""What the ``cachecow_keys``, ``cachecow_show``, ``cachecow_stats``, ``cachecow_flush`` and
``cachecow_audit`` management commands share: the default cache, a model named
``app_label.ModelName``, and the reports of ``cachecow``'s command line."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError

from cachecow import CacheCowError, _admin

from . import DjangoCache, default_cache

__all__ = ["LookupCommand", "ModelCommand"]


class ModelCommand(BaseCommand):  # type: ignore[misc]
    """A command on one model of the default cache (``default_cache()``)."""

    model_required = True

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "model",
            nargs=None if self.model_required else "?",
            help="the model, as app_label.ModelName",
        )

    def model(self, label: str) -> Any:
        try:
            return apps.get_model(label)
        except (LookupError, ValueError) as exc:
            raise CommandError(f"no model {label!r}: name it app_label.ModelName") from exc

    def write(self, line: str) -> None:
        self.stdout.write(line)

    def progress(self, text: str) -> None:
        self.stderr.write(text)

    def handle(self, *args: Any, **options: Any) -> None:
        label = options.get("model")
        model = self.model(label) if label else None
        try:
            self.run(default_cache(), model, options)
        except (CacheCowError, ValueError) as exc:
            raise CommandError(str(exc)) from exc

    def run(self, cache: DjangoCache, model: Any, options: dict[str, Any]) -> None:
        raise NotImplementedError


class LookupCommand(ModelCommand):
    """A command on one lookup: MODEL FIELD VALUE [--type T]."""

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument("field", help="the lookup's field; org_id,person_id for a composite")
        parser.add_argument("value", help='its value: JSON if it parses (5, "5", [1, 2])')
        parser.add_argument(
            "--type",
            default="auto",
            choices=sorted(_admin.VALUE_TYPES),
            help="read the value as this type (default: auto, JSON else text)",
        )

    def lookup(self, options: dict[str, Any]) -> tuple[Any, Any]:
        return (
            _admin.parse_field(options["field"]),
            _admin.parse_value(options["value"], options["type"]),
        )
