"""cachecow: the command line, for operators.

``cachecow keys|show|stats|flush|audit`` inspect and flush a model's entries and measure how
many are stale. They work on the application's own cache (``--cache module:attribute``, or
``$CACHECOW_CACHE``), which knows the models, decodes values and reads the database; ``keys``,
``show`` (raw), ``stats`` and ``flush`` also work on a bare Redis (``--redis URL --prefix P``)
with a model's label as keys spell it (``module.QualName``).

``cachecow counters URL [URL ...]`` reads the Prometheus pages of application processes that
expose the caches' metrics (``cachecow.exporters.prometheus.PrometheusCollector``), sums the
counters over them, and prints hits, misses, the hit ratio, leases, commits, stale commits,
busy gets, Redis errors and ``get``'s p50 and p99 per model (``--json``: every counter). The
counters live in the application's processes: this one has none of its own.

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
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from . import _admin, _counters
from ._connect import connect
from ._core import CacheCow
from .exceptions import CacheCowError

__all__ = ["load_cache", "main", "resolve_model"]

_REDIS_DEFAULT = "redis://127.0.0.1:6379/0"


class _Keys(_admin.KeysOnly):
    """A cache that only invalidates (the relay never reads)."""


class UsageError(Exception):
    """A command line that cannot run: its message is printed, and the exit status is 2."""


def load_cache(path: str) -> CacheCow:
    """The cache ``module:attribute`` names (a dotted attribute is followed), or the one a
    zero-argument callable of that name returns. The current directory is importable."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--cache takes module:attribute (e.g. myapp.cache:cache), got {path!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for name in attribute.split("."):
            obj = getattr(obj, name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--cache {path}: {exc}") from exc
    if not isinstance(obj, CacheCow) and callable(obj) and not isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, CacheCow):
        kind = type(obj).__qualname__
        hint = " (an AsyncCacheCow: name a synchronous cache)" if "Async" in kind else ""
        raise UsageError(f"--cache {path} is a {kind}, not a cachecow.CacheCow{hint}")
    return obj


def resolve_model(cache: CacheCow, text: str) -> Any:
    """The model ``text`` names: with an application's cache, a class by ``module:QualName``
    or by its label in keys (``module.QualName``); with a bare Redis, the label as it is."""
    if isinstance(cache, _admin.KeysOnly):
        return text
    if ":" in text:
        module_name, _, qualname = text.partition(":")
        return _import_attr(module_name, qualname, text)
    parts = text.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            return _import_attr(".".join(parts[:i]), ".".join(parts[i:]), text)
        except UsageError:
            continue
    raise UsageError(f"no model {text!r}: name it module.QualName or module:QualName")


def _import_attr(module_name: str, qualname: str, text: str) -> Any:
    try:
        obj: Any = importlib.import_module(module_name)
        for name in qualname.split("."):
            obj = getattr(obj, name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"no model {text!r}: {exc}") from exc
    return obj


def _progress(stream: Any) -> Callable[[str], None]:
    """Progress lines on ``stream``: rewritten in place on a terminal, one a line otherwise."""
    tty = stream.isatty()

    def show(text: str) -> None:
        stream.write(f"\r{text}\x1b[K" if tty else f"{text}\n")
        stream.flush()

    return show


def _add_target(parser: argparse.ArgumentParser, *, lookup: bool = False) -> None:
    where = parser.add_argument_group("which cache")
    where.add_argument(
        "--cache",
        default=os.environ.get("CACHECOW_CACHE"),
        metavar="MODULE:ATTR",
        help="the application's cache object, or a function returning it (default: "
        "$CACHECOW_CACHE); MODEL is then module.QualName or module:QualName",
    )
    where.add_argument(
        "--redis",
        help="without --cache: the Redis URL (default: $REDIS_URL or " + _REDIS_DEFAULT + ")",
    )
    where.add_argument("--prefix", help="without --cache: the key prefix (default: cachecow:)")
    if lookup:
        parser.add_argument("field", help="the lookup's field; org_id,user_id for a composite")
        parser.add_argument("value", help='its value: JSON if it parses (5, "5", [1, 2])')
        parser.add_argument(
            "--type",
            default="auto",
            choices=sorted(_admin.VALUE_TYPES),
            help="read the value as this type (default: auto, JSON else text)",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachecow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser(
        "keys",
        help="a lookup's value and lease keys, their TTLs, whether present",
        description="Show a lookup's value key and lease (flag) key: present or not, size, TTL.",
    )
    keys.add_argument("model", help="the model (module.QualName, or module:QualName)")
    _add_target(keys, lookup=True)

    show = commands.add_parser(
        "show",
        help="the object a lookup's entry holds, 'tombstone' or 'not cached'",
        description="Show a lookup's cached object decoded (with --cache; without, the "
        "serializer's raw decoding), a tombstone, or 'not cached'. Exit status 1 when not "
        "cached.",
    )
    show.add_argument("model", help="the model (module.QualName, or module:QualName)")
    _add_target(show, lookup=True)

    stats = commands.add_parser(
        "stats",
        help="how many values, tombstones and leases a model has (SCAN)",
        description="Count a model's (or, without MODEL, every model's) values, tombstones "
        "and leases by lookup field with SCAN, their bytes, and the memory Redis uses for them "
        "(MEMORY USAGE of a sample).",
    )
    stats.add_argument("model", nargs="?", help="the model; without it, every key under the prefix")
    _add_target(stats)

    counters = commands.add_parser(
        "counters",
        help="the counters of application processes, summed from their Prometheus pages",
        description="Read the Prometheus pages of application processes that expose "
        "cachecow.exporters.prometheus.PrometheusCollector, sum the caches' counters over them, "
        "and print per model: hits (objects and tombstones), misses, the hit ratio, leases, "
        "commits, stale commits refused, busy gets, Redis errors, and the p50 and p99 of get's "
        "durations estimated from the histogram's buckets; then the totals. A page that cannot "
        "be read or holds no cachecow metrics is an error (exit status 2).",
    )
    _counters.add_arguments(counters)
    _add_model_commands(commands)
    return parser


def _add_model_commands(commands: Any) -> None:
    """``flush``, ``audit`` and ``relay``: the commands that change or check a whole model."""
    flush = commands.add_parser(
        "flush",
        help="delete every entry of a model (invalidate_model)",
        description="Delete every entry of a model, values, tombstones and leases in flight "
        "(CacheCow.invalidate_model): after a data migration, or writes no invalidation saw.",
    )
    flush.add_argument("model", help="the model (module.QualName, or module:QualName)")
    flush.add_argument(
        "--no-settle",
        action="store_true",
        help="one scan, without waiting flag_ttl for the leases in flight and scanning again",
    )
    _add_target(flush)

    audit = commands.add_parser(
        "audit",
        help="compare a sample of cached entries with the database: the stale rate",
        description="Sample cached entries of a model, compare each with the row the cache's "
        "fetch reads now, and report how many are stale (0 expected). Exit status 1 when any "
        "is. Needs --cache.",
    )
    audit.add_argument("model", help="the model (module.QualName, or module:QualName)")
    audit.add_argument("--sample", type=int, default=1000, help="entries to check (default 1000)")
    audit.add_argument(
        "--grace",
        type=float,
        default=1.0,
        help="seconds before a mismatch is checked again (an invalidation in delivery; default 1)",
    )
    audit.add_argument("--seed", type=int, help="the sampling's random seed")
    _add_target(audit)

    relay = commands.add_parser(
        "relay",
        help="deliver a database's outbox to Redis",
        description="Deliver a database's outbox to Redis until stopped (Ctrl-C or SIGTERM).",
    )
    relay.add_argument("--database", required=True, help="a SQLAlchemy URL of the database")
    relay.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL", _REDIS_DEFAULT),
        help="the Redis URL (default: $REDIS_URL or " + _REDIS_DEFAULT + ")",
    )
    relay.add_argument("--prefix", default="cachecow:", help="the caches' key prefix")
    relay.add_argument("--interval", type=float, default=0.2, help="polling interval (s)")
    relay.add_argument("--once", action="store_true", help="drain once, then exit")


def _target(args: argparse.Namespace) -> tuple[CacheCow, bool]:
    """The cache the command works on, and whether the command line made it (to close)."""
    if args.cache:
        if args.redis or args.prefix:
            raise UsageError("--redis and --prefix are the cache's own with --cache: drop them")
        return load_cache(args.cache), False
    url = args.redis or os.environ.get("REDIS_URL", _REDIS_DEFAULT)
    return _admin.KeysOnly(connect(url), prefix=args.prefix or "cachecow:"), True


def _run(args: argparse.Namespace, out: Any, err: Any) -> int:
    def write(line: str) -> None:
        print(line, file=out)

    progress = _progress(err)
    cache, own = _target(args)
    try:
        model = resolve_model(cache, args.model) if args.model is not None else None
        if args.command in ("keys", "show"):
            field = _admin.parse_field(args.field)
            try:
                value = _admin.parse_value(args.value, args.type)
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
            if args.command == "keys":
                _admin.keys_report(cache, model, field, value, write)
                return 0
            return 0 if _admin.show_report(cache, model, field, value, write) else 1
        if args.command == "stats":
            _admin.stats_report(cache, model, write, progress)
            return 0
        if args.command == "flush":
            _admin.flush_report(cache, model, write, progress, settle=not args.no_settle)
            return 0
        if isinstance(cache, _admin.KeysOnly):
            raise UsageError("audit reads the database: name the application's cache (--cache)")
        result = _admin.audit(
            cache, model, args.sample, grace=args.grace, seed=args.seed, progress=progress
        )
        _admin.audit_report(result, write)
        return 1 if result.stale else 0
    finally:
        if own:
            cache.redis.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "relay":
        try:
            if args.command == "counters":
                _counters.run(vars(args), print, sys.stdin)
                return 0
            return _run(args, sys.stdout, sys.stderr)
        except (
            UsageError,
            CacheCowError,
            RedisError,
            NotImplementedError,
            _counters.ScrapeError,
        ) as exc:
            print(f"cachecow {args.command}: {exc}", file=sys.stderr)
            return 2
    return _relay(args)


def _relay(args: argparse.Namespace) -> int:
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
