"""``manage.py check --database default``: watched models whose tables lack their triggers."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import connections

from .. import _outbox


@checks.register(checks.Tags.database)  # type: ignore[untyped-decorator]
def triggers_installed(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Any]:
    """A warning per watched model whose table has no up-to-date cachecow triggers: its writes
    would not invalidate the cache (and its first fetch refuses to cache it)."""
    from . import watched_models, watched_tables
    from ._triggers import raw_connection

    problems: list[Any] = []
    for alias in databases or ():
        connection = connections[alias]
        for model, table in zip(watched := watched_models(), watched_tables(watched), strict=True):
            with raw_connection(alias) as run:
                ok = _outbox.installed(connection.vendor, run, table)
            if not ok:
                problems.append(
                    checks.Warning(
                        f"table {table.table!r} has no up-to-date cachecow triggers on "
                        f"database {alias!r}: its writes would not invalidate the cache",
                        hint="run manage.py migrate, or manage.py cachecow_triggers --install",
                        obj=model,
                        id="cachecow.W001",
                    )
                )
    return problems
