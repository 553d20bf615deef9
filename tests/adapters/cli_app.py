"""The application the command line's tests name with ``--cache``: ``cli_app:cache`` is set by
a test in its own process; ``cli_app:make`` builds one in a subprocess from the environment
($CLI_APP_REDIS, $CLI_APP_DATABASE, $CLI_APP_SCHEMA)."""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

import cachecow
from cachecow.adapters.sqlalchemy import SQLAlchemyCache

cache: SQLAlchemyCache | None = None


def make() -> SQLAlchemyCache:
    schema = os.environ.get("CLI_APP_SCHEMA")
    args = {"options": f"-csearch_path={schema}"} if schema else {}
    engine = sa.create_engine(os.environ["CLI_APP_DATABASE"], poolclass=NullPool, connect_args=args)
    return SQLAlchemyCache(cachecow.connect(os.environ["CLI_APP_REDIS"]), sessionmaker(engine))
