"""Django settings of the adapter's tests: SQLite, PostgreSQL as "pg", MariaDB as "maria".

PostgreSQL (127.0.0.1:5432, database ``test``; pytest-django creates ``test_test``) is added when
it answers, and always under ``CI=true``, where a missing server then fails the tests.
"""

from __future__ import annotations

import os
import tempfile

from cachecow.testing.plugin import in_ci


def _pg_answers() -> bool:
    try:
        import psycopg

        with psycopg.connect("postgresql://root@127.0.0.1:5432/test", connect_timeout=3):
            return True
    except Exception:
        return False


SECRET_KEY = "cachecow-tests"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "cachecow.adapters.django.CachecowConfig",
    "tests.adapters.djapp",
]
MIGRATION_MODULES = {"djapp": None}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), f"cachecow-django-{os.getpid()}.sqlite3"),
        "TEST": {
            "NAME": os.path.join(
                tempfile.gettempdir(), f"cachecow-django-test-{os.getpid()}.sqlite3"
            )
        },
    }
}
PG_AVAILABLE = in_ci() or _pg_answers()
if PG_AVAILABLE:
    DATABASES["pg"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "test",
        "USER": "root",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "TEST": {"NAME": f"cachecow_django_test_{os.getpid()}"},
    }
# The tests install their own cache (set_default_cache); Item is watched for its triggers only.


def _mariadb_answers() -> bool:
    try:
        import pymysql

        pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=3).close()
        return True
    except Exception:
        return False


MARIADB_AVAILABLE = in_ci() or _mariadb_answers()
if MARIADB_AVAILABLE:
    import pymysql

    pymysql.install_as_MySQLdb()  # Django's MySQL backend, on the pure-Python driver
    DATABASES["maria"] = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "test",
        "USER": "root",
        "HOST": "127.0.0.1",
        "PORT": "3306",
        "TEST": {"NAME": f"cachecow_django_test_{os.getpid()}"},
    }
CACHECOW: dict[str, object] = {"MODELS": ["djapp.Item"]}
