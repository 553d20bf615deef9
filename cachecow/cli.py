"""cachecow: the command line.

``cachecow relay --database URL [--redis URL] [--prefix P]`` delivers a database's outbox to
Redis until stopped: the rows no commit's drain delivered (writes made outside the
application, processes that died after a commit, commits made while Redis was down). The
rows describe themselves, so it needs neither the application nor its models, only the
``prefix`` the application's cache uses. Any number may run: rows are claimed, never
delivered twice at once. The database URL is SQLAlchemy's (``pip install
'cachecow-orm[sqlalchemy]'`` and the database's driver).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ._connect import connect
from ._core import CacheCow

__all__ = ["main"]


class _Keys(CacheCow):
    """A cache that only invalidates (the relay never reads)."""

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        raise NotImplementedError("the relay never reads")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachecow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="deliver a database's outbox to Redis")
    relay.add_argument("--database", required=True, help="a SQLAlchemy URL of the database")
    relay.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis URL (default: $REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    relay.add_argument("--prefix", default="cachecow:", help="the caches' key prefix")
    relay.add_argument("--interval", type=float, default=0.2, help="polling interval (s)")
    relay.add_argument("--once", action="store_true", help="drain once, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:  # by name: the adapters install as cachecow.adapters, which mypy cannot follow here
        import sqlalchemy as sa

        adapter: Any = importlib.import_module("cachecow.adapters.sqlalchemy")
        outbox: Any = importlib.import_module("cachecow.adapters._outbox")
    except ImportError as exc:
        print(f"cachecow relay needs SQLAlchemy: {exc}", file=sys.stderr)
        return 2
    engine = sa.create_engine(args.database)
    cache = _Keys(connect(args.redis), prefix=args.prefix)
    try:
        if args.once:
            drainer = outbox.Drainer(
                adapter._dialect(engine.dialect),
                lambda: adapter._autocommit(engine),
                outbox.deliver_to(cache),
            )
            print(f"delivered {drainer.drain()} rows")
            return 0
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        running = adapter.relay(cache, engine, interval=args.interval)
        print(f"relaying the outbox of {engine.url.render_as_string()}; Ctrl-C stops")
        try:
            while not stop.wait(1.0) and running.running:
                pass
        except KeyboardInterrupt:
            pass
        finally:
            running.stop()
        return 0
    finally:
        engine.dispose()
        cache.redis.close()
