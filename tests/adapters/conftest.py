"""Fixtures of the adapters' tests; Django is configured here, for these tests only
(pytest-django sets it up before their first test)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import django
import pytest
from sqlalchemy.orm import sessionmaker

from tests.adapters.sa_env import Database, open_database

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
django.setup()  # before the test modules import their models


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """Each SQLAlchemy test runs on SQLite and on PostgreSQL."""
    yield from open_database(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture
def db(database: Database) -> Database:
    """The database, emptied before each test, with a session factory of the test's own (a
    watch() on it ends with the test)."""
    database.clear()
    database.Session = sessionmaker(database.engine)
    return database


@pytest.fixture(params=["default", "pg", "maria"])
def alias(request: pytest.FixtureRequest) -> str:
    """Each Django test runs on SQLite, PostgreSQL and MariaDB (the settings' aliases)."""
    from django.conf import settings

    if request.param not in settings.DATABASES:
        pytest.skip(f"{request.param}: its server does not answer (required when CI=true)")
    return str(request.param)
