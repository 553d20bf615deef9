"""The test runner of the suite (``TEST_RUNNER`` of ``settings.py``).

- It writes the results (every failure and error with its traceback, counts, cachecow's
  metrics, the models cachecow refused) as JSON to ``$CACHECOW_DJS_RESULT``.
- With ``--parallel``, each worker gets a Redis database of its own (worker N uses database N
  of the same server): the workers' test databases are clones holding different rows under the
  same primary keys, so a shared cache would serve one worker's rows to another.
- Without tblib, a worker's failure cannot be sent to the main process (tracebacks do not
  pickle): the workers send each failure as text instead.
- Before the test databases are created, the models whose triggers cachecow refuses to build
  are listed and left unwatched (``managers.refuse_unsupported``).
- With ``CACHECOW_DJS_TESTCASE_AUTOCOMMIT=1`` (``run.py --autocommit-testcases``), every
  ``TestCase`` runs as Django runs it on a database without transactions: no atomic block
  around the tests, class data reloaded before each test, tables flushed after it. Under
  ``TestCase``'s blocks, cachecow only peeks (nothing is cached inside an atomic block), so
  this mode is the one that makes the suite's gets go through the cache.
- Before they are destroyed, cachecow's relay threads and its own database connections are
  closed (PostgreSQL refuses to drop a database that has connections).
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
import unittest
from typing import Any

from django.conf import settings
from django.test import runner as django_runner

ENABLED = bool(os.environ.get("CACHECOW_DJS_REDIS_URL"))  # as settings.CACHECOW_ENABLED
RESULT = os.environ.get("CACHECOW_DJS_RESULT", "")
METRICS_DIR = os.environ.get("CACHECOW_DJS_METRICS_DIR", "")
AUTOCOMMIT_TESTCASES = os.environ.get("CACHECOW_DJS_TESTCASE_AUTOCOMMIT") == "1"
TB_LIMIT = 6000  # characters of each traceback kept in the JSON


# -- failures as text, from the workers ---------------------------------------------------------


class WorkerFailure(AssertionError):
    """A failure in a worker process; its message is the original traceback."""


class WorkerError(Exception):
    """An error in a worker process; its message is the original traceback."""


def _portable(result: Any, test: Any, err: Any) -> Any:
    if err is None:
        return None
    try:  # unittest.TestResult's formatting (RemoteTestResult's own returns "")
        text = unittest.TestResult._exc_info_to_string(result, err, test)
    except Exception:
        text = "".join(traceback.format_exception(*err))
    failure = getattr(test, "failureException", None) or AssertionError  # None: setUpClass's
    kind = WorkerFailure if issubclass(err[0], failure) else WorkerError
    return (kind, kind(text), None)


class PortableResult(django_runner.RemoteTestResult):
    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, _portable(self, test, err))

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, _portable(self, test, err))

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, _portable(self, subtest, err))

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, _portable(self, test, err))


class PortableRunner(django_runner.RemoteTestRunner):
    resultclass = PortableResult


# -- cachecow in the workers --------------------------------------------------------------------


def _cache() -> Any:
    from cachecow.adapters import django as adapter

    return adapter._default.cache  # the default cache if it was built (never build it here)


def metrics_snapshot() -> dict[str, int]:
    cache = _cache()
    return cache.metrics.snapshot().as_dict() if cache is not None else {}


def _dump_metrics() -> None:
    """Write this process's counters (they are cumulative: the last file wins)."""
    if not (ENABLED and METRICS_DIR):
        return
    path = os.path.join(METRICS_DIR, f"{os.getpid()}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        json.dump(metrics_snapshot(), out)
    os.replace(path + ".tmp", path)


def _worker_cache(worker_id: int) -> None:
    """Give this worker a default cache of its own on Redis database ``worker_id``."""
    from cachecow.adapters import django as adapter
    from cachecow.adapters.django import _triggers

    from . import managers

    idle = getattr(_triggers, "_idle", None)  # private: the pool of the drains' connections
    if isinstance(idle, dict) and os.environ.get("CACHECOW_DJS_KEEP_FORKED_POOL") != "1":
        # The parent's idle raw connections (used by its drains and checks) were copied by
        # fork: they are the parent's sockets, to the parent's database, not this worker's
        # clone. Forget them without closing them (closing would end the parent's sessions).
        idle.clear()
    conf = dict(settings.CACHECOW)
    base = conf["REDIS_URL"].rsplit("/", 1)[0]
    conf["REDIS_URL"] = f"{base}/{worker_id}"
    settings.CACHECOW = conf
    adapter.set_default_cache(None)
    adapter.default_cache()  # built now, from the settings, watching every managed model
    managers.prepare_cache()


def _no_test_transactions(cls: Any) -> bool:
    return False


def autocommit_testcases() -> None:
    """Run every TestCase as on a database without transactions (see the module doc)."""
    from django.test import TestCase

    TestCase._databases_support_transactions = classmethod(_no_test_transactions)


def init_worker(counter: Any, *args: Any, **kwargs: Any) -> None:
    if AUTOCOMMIT_TESTCASES:
        autocommit_testcases()  # a spawned worker imports TestCase afresh
    django_runner._init_worker(counter, *args, **kwargs)
    if ENABLED:
        _worker_cache(django_runner._worker_id)


def run_subsuite(args: Any) -> Any:
    try:
        return django_runner._run_subsuite(args)
    finally:
        _dump_metrics()


class ParallelSuite(django_runner.ParallelTestSuite):
    init_worker = init_worker
    run_subsuite = run_subsuite
    runner_class = PortableRunner


# -- the runner ---------------------------------------------------------------------------------


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _test_id(test: Any) -> str:
    """The test's id, without memory addresses (a subtest's parameters may show objects)."""
    return _ADDRESS.sub("", str(test.id()))


class Runner(django_runner.DiscoverRunner):
    parallel_test_suite = ParallelSuite

    def setup_test_environment(self, **kwargs: Any) -> None:
        if AUTOCOMMIT_TESTCASES:
            autocommit_testcases()
        super().setup_test_environment(**kwargs)

    def setup_databases(self, **kwargs: Any) -> Any:
        if ENABLED:
            from . import managers

            managers.prepare_cache()
        return super().setup_databases(**kwargs)

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = super().run_suite(suite, **kwargs)
        self._write(result, time.monotonic() - started)
        return result

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        if ENABLED:
            from cachecow.adapters.django import _triggers

            cache = _cache()
            if cache is not None:
                cache.close_relays()
            _triggers.close_raw_connections()
        super().teardown_databases(old_config, **kwargs)

    def _write(self, result: Any, seconds: float) -> None:
        if not RESULT:
            return
        from . import managers

        def listed(pairs: Any) -> list[dict[str, str]]:
            return [{"test": _test_id(t), "traceback": tb[-TB_LIMIT:]} for t, tb in pairs]

        metrics: dict[str, dict[str, int]] = {}
        if ENABLED:
            metrics["main"] = metrics_snapshot()
            if METRICS_DIR and os.path.isdir(METRICS_DIR):
                for name in sorted(os.listdir(METRICS_DIR)):
                    if name.endswith(".json"):
                        with open(os.path.join(METRICS_DIR, name), encoding="utf-8") as f:
                            metrics[f"worker {name[:-5]}"] = json.load(f)
        data = {
            "cachecow": ENABLED,
            "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
            "parallel": self.parallel,
            "autocommit_testcases": AUTOCOMMIT_TESTCASES,
            "seconds": round(seconds, 1),
            "tests_run": result.testsRun,
            "failures": listed(result.failures),
            "errors": listed(result.errors),
            "skipped": [{"test": _test_id(t), "reason": r} for t, r in result.skipped],
            "expected_failures": [_test_id(t) for t, _ in result.expectedFailures],
            "unexpected_successes": [_test_id(t) for t in result.unexpectedSuccesses],
            "refused_models": dict(managers.REFUSED) if ENABLED else {},
            "lookups_not_served": {
                label: [list(lk) if isinstance(lk, tuple) else lk for lk in lookups]
                for label, lookups in managers.NOT_SERVED.items()
            }
            if ENABLED
            else {},
            "metrics": metrics,
        }
        with open(RESULT, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)
