"""``manage.py cachecow_triggers``: show, install or write a migration for cachecow's triggers."""

from __future__ import annotations

import os
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections, migrations
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.writer import MigrationWriter

from ... import InstallTriggers, watched_models, watched_tables
from ..._triggers import install_sql, install_triggers


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Print the SQL of cachecow's outbox and triggers for the watched models, install them "
        "now (--install), or write a migration that installs them (--migration APP)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument("--install", action="store_true", help="install them now")
        parser.add_argument(
            "--migration", metavar="APP", help="write a migration of APP's watched models"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        models = watched_models()
        if options["migration"]:
            self._write_migration(options["migration"], models)
            return
        connection = connections[options["database"]]
        if options["install"]:
            install_triggers(connection, watched_tables(models))
            labels = ", ".join(m._meta.label for m in models) or "no watched model"
            self.stdout.write(f"installed on {options['database']!r}: {labels}")
            return
        for statement in install_sql(connection, watched_tables(models)):
            self.stdout.write(statement.rstrip(";") + ";")

    def _write_migration(self, app_label: str, models: list[Any]) -> None:
        try:
            app = apps.get_app_config(app_label)
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        labels = [m._meta.label for m in models if m._meta.app_config is app]
        if not labels:
            raise CommandError(f"{app_label} has no watched model")
        loader = MigrationLoader(None, ignore_no_migrations=True)
        leaves = loader.graph.leaf_nodes(app_label)
        number = 1
        if leaves:
            number = int(leaves[0][1].split("_", 1)[0]) + 1
        name = f"{number:04d}_cachecow_triggers"
        migration = migrations.Migration(name, app_label)
        migration.dependencies = list(leaves)
        migration.operations = [InstallTriggers(*labels)]
        writer = MigrationWriter(migration)
        os.makedirs(os.path.dirname(writer.path), exist_ok=True)
        with open(writer.path, "w", encoding="utf-8") as out:
            out.write(writer.as_string())
        self.stdout.write(f"wrote {writer.path}")
