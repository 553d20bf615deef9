"""Django settings of the cachecow Django example: run ``python examples/django_app/run.py``.

run.py loads this module as ``settings`` (examples/django_app/ on ``sys.path``). The database is
SQLite in a temporary directory that run.py deletes at the end. Redis is the server at REDIS_URL
when it is set (every key under a random prefix, deleted by run.py at the end), else an embedded
fakeredis, which runs cachecow's Lua in-process: no service is needed.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("REDIS_URL", "")
EXAMPLE_DIR = Path(tempfile.mkdtemp(prefix="cachecow-django-example-"))  # run.py removes it


def embedded_redis() -> Any:
    """The client without REDIS_URL: an in-process Redis that runs Lua (the ``demo`` extra)."""
    import fakeredis

    return fakeredis.FakeRedis()


SECRET_KEY = "cachecow-example-not-secret"  # the example serves no requests
USE_TZ = True
INSTALLED_APPS = [
    "cachecow.adapters.django.CachecowConfig",  # builds the cache and watches the models
    "shop",
]
MIGRATION_MODULES = {"shop": None}  # no migration files: migrate --run-syncdb creates the tables
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(EXAMPLE_DIR / "shop.sqlite3"),
    }
}
CACHECOW: dict[str, Any] = {
    "OPTIONS": {
        "prefix": f"cachecow-django:{secrets.token_hex(4)}:" if REDIS_URL else "cachecow-django:",
    },
}
if REDIS_URL:
    CACHECOW["REDIS_URL"] = REDIS_URL
else:
    CACHECOW["CONNECTION"] = embedded_redis  # a callable: called once, when the cache is built
