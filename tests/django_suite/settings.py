"""Settings for Django's ``tests/runtests.py`` (``--settings=tests.django_suite.settings``).

Written for ``run.py``, which passes everything through environment variables:

- ``CACHECOW_DJS_DB``: ``sqlite`` (in-memory, like Django's ``test_sqlite``) or ``postgresql``
  (127.0.0.1:5432, user root; the test databases are named after ``CACHECOW_DJS_DB_TAG``).
- ``CACHECOW_DJS_REDIS_URL``: the Redis of cachecow; when empty, the run is plain Django
  (no cachecow at all), the run the cachecow one is compared with.
- ``CACHECOW_DJS_RESULT``: where the harness writes the results as JSON.

Under cachecow, ``objects`` auto-created on every model is a ``CachedManager`` (see
``managers.py``) and ``cachecow.adapters.django.CachecowConfig`` is added to runtests'
``ALWAYS_INSTALLED_APPS`` (runtests replaces ``INSTALLED_APPS`` with that list, so a setting
here would be lost).
"""

from __future__ import annotations

import os
import sys

DB = os.environ.get("CACHECOW_DJS_DB", "sqlite")
REDIS_URL = os.environ.get("CACHECOW_DJS_REDIS_URL", "")
TAG = os.environ.get("CACHECOW_DJS_DB_TAG", str(os.getpid()))
CACHECOW_ENABLED = bool(REDIS_URL)
APP = "cachecow.adapters.django.CachecowConfig"

# -- as Django's tests/test_sqlite.py -----------------------------------------------------------

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

if DB == "sqlite":
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3"},
        "other": {"ENGINE": "django.db.backends.sqlite3"},
    }
elif DB == "postgresql":
    _pg = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "test",
        "USER": "root",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    }
    DATABASES = {
        "default": {**_pg, "TEST": {"NAME": f"test_cachecow_djs_{TAG}"}},
        "other": {**_pg, "TEST": {"NAME": f"test_cachecow_djs_{TAG}_other"}},
    }
else:
    raise RuntimeError(f"CACHECOW_DJS_DB must be sqlite or postgresql, not {DB!r}")

# The harness's runner writes the results as JSON and, under cachecow, runs the workers of
# --parallel each on a Redis database of its own.
TEST_RUNNER = "tests.django_suite.harness.Runner"

# -- cachecow -----------------------------------------------------------------------------------

if CACHECOW_ENABLED:
    from tests.django_suite import managers

    managers.install()  # before any model class exists

    CACHECOW = {
        "REDIS_URL": REDIS_URL,
        "TIMEOUT": 5.0,
        # The relay thread is off unless CACHECOW_DJS_RELAY=1: on SQLite's shared in-memory
        # test database, its polling of the outbox makes other connections' DDL and writes
        # fail at random with "database table is locked" (see expected.py, FINDINGS).
        "RELAY": os.environ.get("CACHECOW_DJS_RELAY", "0") == "1",
        # fail_open off: a Redis error reaches the test instead of being served around.
        "OPTIONS": {"ttl": 3600, "fail_open": False},
    }

    # runtests.py sets settings.INSTALLED_APPS to its module-level ALWAYS_INSTALLED_APPS (and
    # appends the test apps to that very list) after it first reads settings, which imports
    # this module: extend that list in place. runtests runs as __main__ (__mp_main__ in a
    # spawned worker).
    for _name in ("__main__", "__mp_main__"):
        _runtests = sys.modules.get(_name)
        _always = getattr(_runtests, "ALWAYS_INSTALLED_APPS", None)
        if isinstance(_always, list) and APP not in _always:
            _always.append(APP)
    INSTALLED_APPS = [APP]  # for anything that reads settings without runtests
