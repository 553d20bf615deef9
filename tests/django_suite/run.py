"""Run Django's own test suite with cachecow's CachedManager as every model's default manager.

    .venv/bin/python -m tests.django_suite.run                      # SQLite, under cachecow
    .venv/bin/python -m tests.django_suite.run --db postgresql --plain
    .venv/bin/python -m tests.django_suite.run --db sqlite --db postgresql --compare

Django's tests are not in its wheel: the sdist of the installed Django version is downloaded
from PyPI (``pip download``) and its ``tests/`` unpacked under ``$CACHECOW_DJANGO_TESTS_DIR``
(default ``~/.cache/cachecow-django-tests``), once. Then ``tests/runtests.py`` runs with the
installed Django and ``--settings=tests.django_suite.settings``; under cachecow, a private
``redis-server`` is started for the run.

``--compare`` runs each database twice, plain and under cachecow, and checks that the tests
failing under cachecow are those failing without it plus the expected ones of ``expected.py``.

After each run it prints the counts, the failing tests, the models cachecow refused, and the
counters of the default cache (summed over the processes of ``--parallel``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# The apps of Django's suite that exercise what cachecow changes: gets, saves, deletes,
# transactions, locks, relations, inheritance, proxies, bulk writes, managers, serialization.
APPS = [
    "basic",
    "get_or_create",
    "update",
    "delete",
    "delete_regress",
    "update_only_fields",
    "save_delete_hooks",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "one_to_one",
    "many_to_one",
    "custom_pk",
    "model_inheritance",
    "proxy_models",
    "bulk_create",
    "custom_managers",
    "force_insert_update",
    "queries",
    "model_forms",
    "serializers",
    "defer_regress",
]

# The apps run with --autocommit-testcases in the normal test run (SQLite): their TestCases
# without atomic blocks, so that gets go through the cache and fill it. These 16 take about
# 40 s (plain and cachecow runs); the whole of APPS takes about 4 minutes in that mode.
_LEFT_OUT = {
    "transaction_hooks",
    "bulk_create",
    "queries",
    "model_forms",
    "serializers",
    "defer_regress",
}
AUTOCOMMIT_APPS = [a for a in APPS if a not in _LEFT_OUT]

DATABASES = ("sqlite", "postgresql")


# -- Django's tests -----------------------------------------------------------------------------


def django_version() -> str:
    import django

    return str(django.__version__)


def tests_root() -> Path:
    configured = os.environ.get("CACHECOW_DJANGO_TESTS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "cachecow-django-tests"


def ensure_django_tests(version: str | None = None, root: Path | None = None) -> Path:
    """The ``tests/`` directory of Django's sdist for ``version`` (the installed one by
    default), downloaded from PyPI and unpacked under ``root`` unless it is there already."""
    version = version or django_version()
    root = root or tests_root()
    target = root / f"django-{version}" / "tests"
    if (target / "runtests.py").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        print(f"downloading Django {version}'s sdist from PyPI into {root}", flush=True)
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--no-binary", ":all:", f"django=={version}", "-d", tmp,
            ],
            check=True,
        )  # fmt: skip
        archives = [p for p in Path(tmp).iterdir() if p.name.endswith(".tar.gz")]
        if len(archives) != 1:
            raise RuntimeError(f"pip download left {[p.name for p in Path(tmp).iterdir()]}")
        prefix = f"{archives[0].name[: -len('.tar.gz')]}/tests/"
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise RuntimeError(f"{archives[0].name} holds no {prefix}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(unpacked, members=members, filter="data")
            else:  # pragma: no cover - Pythons without extraction filters
                tar.extractall(unpacked, members=members)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(unpacked / prefix.rstrip("/"), target)
        except OSError:
            if not (target / "runtests.py").is_file():  # not another run's copy: a failure
                raise
    return target


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """The outcome of one run of runtests.py."""

    database: str
    cachecow: bool
    returncode: int
    seconds: float
    log: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.database}, {'cachecow' if self.cachecow else 'plain'}"

    @property
    def completed(self) -> bool:
        return bool(self.data)

    def failed(self) -> dict[str, str]:
        """``{test id: traceback}`` of every failure and error."""
        return {
            e["test"]: e["traceback"]
            for e in self.data.get("failures", []) + self.data.get("errors", [])
        }

    def counts(self) -> dict[str, int]:
        d = self.data
        return {
            "run": d.get("tests_run", 0),
            "failures": len(d.get("failures", [])),
            "errors": len(d.get("errors", [])),
            "skipped": len(d.get("skipped", [])),
            "expected failures": len(d.get("expected_failures", [])),
            "unexpected successes": len(d.get("unexpected_successes", [])),
        }

    def metrics(self) -> dict[str, int]:
        """The default cache's counters, summed over the processes."""
        total: dict[str, int] = {}
        for snapshot in self.data.get("metrics", {}).values():
            for name, value in snapshot.items():
                total[name] = total.get(name, 0) + value
        return total


def run_suite(
    database: str,
    *,
    cachecow: bool,
    labels: Sequence[str] = APPS,
    parallel: int = 2,
    out_dir: Path,
    redis_url: str = "",
    relay: bool = False,
    autocommit_testcases: bool = False,
    extra_args: Sequence[str] = (),
    echo: bool = True,
    timeout: float = 1800,
) -> Run:
    """Run runtests.py once; its output goes to ``out_dir/<name>.log`` (and to stdout with
    ``echo``), its results to ``out_dir/<name>.json``."""
    if cachecow and not redis_url:
        raise ValueError("a run under cachecow needs a Redis URL")
    tests_dir = ensure_django_tests()
    name = f"{database}-{'cachecow' if cachecow else 'plain'}"
    if autocommit_testcases:
        name += "-autocommit"
    result = out_dir / f"{name}.json"
    log = out_dir / f"{name}.log"
    metrics_dir = out_dir / f"{name}-metrics"
    for stale in (result, log):
        stale.unlink(missing_ok=True)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        CACHECOW_DJS_DB=database,
        CACHECOW_DJS_REDIS_URL=redis_url if cachecow else "",
        CACHECOW_DJS_RELAY="1" if relay else "0",
        CACHECOW_DJS_TESTCASE_AUTOCOMMIT="1" if autocommit_testcases else "0",
        CACHECOW_DJS_RESULT=str(result),
        CACHECOW_DJS_METRICS_DIR=str(metrics_dir),
        CACHECOW_DJS_DB_TAG=f"{os.getpid()}_{'c' if cachecow else 'p'}",
        PYTHONUNBUFFERED="1",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    command = [
        sys.executable,
        str(tests_dir / "runtests.py"),
        "--settings=tests.django_suite.settings",
        "--noinput",
        f"--parallel={parallel}",
        *extra_args,
        *labels,
    ]
    if echo:
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(
            command,
            cwd=tests_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert process.stdout is not None
        deadline = started + timeout
        for line in process.stdout:
            out.write(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            if time.monotonic() > deadline:
                process.kill()
                out.write(f"\n*** killed after {timeout:.0f} s\n")
                break
        returncode = process.wait()
    if database == "postgresql":
        drop_leftover_databases(env["CACHECOW_DJS_DB_TAG"])
    run = Run(database, cachecow, returncode, time.monotonic() - started, log)
    if result.is_file():
        run.data = json.loads(result.read_text(encoding="utf-8"))
    return run


def drop_leftover_databases(tag: str) -> None:
    """Drop the test databases of a run that could not destroy them (a crash, a kill)."""
    try:
        import psycopg

        with psycopg.connect(
            "postgresql://root@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=5
        ) as pg:
            names = [
                row[0]
                for row in pg.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s",
                    ("test_cachecow_djs_" + tag.replace("_", "\\_") + "%",),
                )
            ]
            for name in names:
                pg.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                print(f"dropped the leftover test database {name}", flush=True)
    except Exception as exc:  # never hide the run's own outcome
        print(f"could not check for leftover test databases: {exc}", flush=True)


# -- reports ------------------------------------------------------------------------------------


def first_line(traceback_text: str) -> str:
    """The last line of a traceback that says what was raised."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(" ") and ("Error" in line or "Exception" in line or ":" in line):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else ""


def report(run: Run) -> str:
    lines = [f"--- {run.name}: {run.seconds:.0f} s, runtests exit code {run.returncode}"]
    if not run.completed:
        tail = run.log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        lines.append("    NO RESULTS (runtests crashed before the end of the suite); log tail:")
        lines += [f"    | {line}" for line in tail]
        return "\n".join(lines)
    lines.append("    " + ", ".join(f"{name}: {value}" for name, value in run.counts().items()))
    for test, tb in sorted(run.failed().items()):
        lines.append(f"    FAILED {test}: {first_line(tb)}")
    refused = run.data.get("refused_models") or {}
    if refused:
        lines.append(f"    models cachecow refused ({len(refused)}), left to plain Django:")
        lines += [f"      {label}: {why}" for label, why in sorted(refused.items())]
    not_served = run.data.get("lookups_not_served") or {}
    if not_served:
        lines.append(f"    models with unique lookups cachecow does not serve ({len(not_served)}):")
        lines += [f"      {label}: {lookups}" for label, lookups in sorted(not_served.items())]
    if run.cachecow:
        lines.append("    " + metrics_line(run.metrics()))
        per_process = run.data.get("metrics", {})
        if len(per_process) > 1:
            for process, snapshot in sorted(per_process.items()):
                lines.append(f"      {process}: {metrics_line(snapshot)}")
    return "\n".join(lines)


def metrics_line(m: dict[str, int]) -> str:
    """The counters: gets are the lookups into the cache, answered as hits, tombstone hits or
    misses (a get inside an atomic block that the block's writes send to the database is no
    lookup)."""
    gets = m.get("hits", 0) + m.get("tombstone_hits", 0) + m.get("misses", 0)
    shown = {"gets": gets, **{k: v for k, v in m.items() if v}}
    return "cache metrics: " + ", ".join(f"{k}={v}" for k, v in shown.items())


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", nargs="*", help=f"test labels (default: {' '.join(APPS)})")
    parser.add_argument(
        "--db", action="append", choices=DATABASES, help="database (repeatable; default sqlite)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true", help="plain Django: no cachecow at all")
    mode.add_argument(
        "--compare",
        action="store_true",
        help="run plain and under cachecow, and check the differences against expected.py",
    )
    parser.add_argument("--parallel", type=int, default=2, help="runtests' --parallel (2)")
    parser.add_argument("--relay", action="store_true", help="cachecow's relay thread on")
    parser.add_argument(
        "--autocommit-testcases",
        action="store_true",
        help="run every TestCase without its atomic blocks (as on a database without "
        "transactions), so that gets go through the cache",
    )
    parser.add_argument("--out", type=Path, help="where logs and JSON results go (a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="do not echo runtests' output")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run (1800)")
    parser.add_argument(
        "-k", dest="patterns", action="append", default=[], help="runtests' -k (repeatable)"
    )
    args = parser.parse_args(argv)
    labels = args.labels or APPS
    databases = args.db or ["sqlite"]
    extra = [f"-k={p}" for p in args.patterns]
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="cachecow-django-suite-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    modes = [False, True] if args.compare else [not args.plain]
    runs: list[Run] = []
    started = time.monotonic()
    server = None
    try:
        if any(modes):
            from cachecow.testing.server import RedisServer

            server = RedisServer().start()
        for database in databases:
            for cachecow in modes:
                if server is not None:
                    _flush(server.url)  # each run starts with an empty cache
                runs.append(
                    run_suite(
                        database,
                        cachecow=cachecow,
                        labels=labels,
                        parallel=args.parallel,
                        out_dir=out_dir,
                        redis_url=server.url if server is not None else "",
                        relay=args.relay,
                        autocommit_testcases=args.autocommit_testcases,
                        extra_args=extra,
                        echo=not args.quiet,
                        timeout=args.timeout,
                    )
                )
    finally:
        if server is not None:
            server.stop()

    print(f"\n=== results (logs and JSON in {out_dir}; {time.monotonic() - started:.0f} s)")
    for run in runs:
        print(report(run))
    status = 0 if all(r.completed for r in runs) else 2
    if args.compare:
        from tests.django_suite import expected

        for database in databases:
            plain, cached = (r for r in runs if r.database == database)
            if not (plain.completed and cached.completed):
                continue
            verdict = expected.compare(database, plain.failed(), cached.failed())
            print(verdict.report())
            if not verdict.ok:
                status = status or 1
    else:
        status = status or (0 if all(r.returncode == 0 for r in runs) else 1)
    return status


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
