"""What differs when Django's suite runs under cachecow, and why.

Each difference between the plain run and the cachecow run is one of:

(a) none: the test fails (or passes) the same way in both runs;
(b) expected: an ``assertNumQueries`` that counts fewer queries because a get was served from
    Redis (:data:`EXPECTED`, with why);
(c) a cachecow bug: listed in :data:`FINDINGS` with its diagnosis; a (c) failure is not
    "expected", so the comparison fails while it happens.

Under Django's ``TestCase`` every test runs inside atomic blocks, where cachecow caches nothing
(a get only peeks at Redis, then reads the database), so the query counts of the suite's
``assertNumQueries`` do not change there: with the apps of ``run.APPS`` no test has been seen
failing for a saved query, on SQLite or PostgreSQL, and :data:`EXPECTED` is empty. It lists
such a test with its reason if one ever appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# database -> {test id: why it fails under cachecow only (class (b))}
EXPECTED: dict[str, dict[str, str]] = {
    "sqlite": {},
    "postgresql": {},
}

# Tests whose outcome depends on the machine's speed (a failure of theirs says nothing of
# cachecow): left out of the comparison, in both runs. Matched as prefixes of test ids.
IGNORED: dict[str, str] = {
    "serializers.test_deserialization.TestDeserializer.test_crafted_xml_performance": (
        "times the parsing of crafted XML and fails when the ratio of two timings exceeds "
        "a bound; seen failing once under --parallel 2 on a 2-CPU machine (PostgreSQL run)"
    ),
}

# database -> {label: why} of the models the harness leaves to plain Django because cachecow
# cannot install their triggers (managers.prepare_cache). None since C4 was fixed.
REFUSED: dict[str, dict[str, str]] = {"sqlite": {}, "postgresql": {}}

# The cachecow bugs the suite found (class (c)), with their diagnosis, as first found. C1-C4,
# C6 and C7 were fixed in the same session; C5 in the next one: no relay starts on a database
# in memory, and DjangoCache.relay() refuses one (tests/adapters/test_django_outbox.py).
FINDINGS: dict[str, str] = {
    "C1 CachedManager on a model created once the default cache exists crashes": (
        "CachedManager.contribute_to_class calls _default.watch(cls) when the default cache "
        "exists. Django contributes a manager declared in the class body before _prepare() "
        "has added the automatic primary key, so _Model.of -> _aliases reads meta.pk.attname "
        "with meta.pk None: AttributeError (with the earlier revision, and with an auto-created "
        "manager, _Model.of reads each foreign key's related_model while the registry is "
        "populated: AppRegistryNotReady). Hit by runtests.py, which builds the cache in its "
        "first django.setup() and then imports the test apps with apps.set_installed_apps(); "
        "also by override_settings(INSTALLED_APPS=...), a model defined in a test, a models "
        "module imported after ready(). The harness steps around it (AutoCachedManager skips "
        "CachedManager.contribute_to_class; prepare_cache() watches the models)."
    ),
    "C2 CACHECOW['MODELS'] breaks TransactionTestCase.available_apps": (
        "watched_models() resolves the labels of CACHECOW['MODELS'] with apps.get_model(); "
        "under TransactionTestCase.available_apps (apps.set_available_apps) a label of an app "
        "left out raises LookupError in _install_on_migrate, from the post_migrate that "
        "_pre_setup emits: setUpClass of basic.tests.ConcurrentSaveTests failed with 'No "
        "installed app with label auth' when the harness registered models through MODELS. "
        "The harness now watches the models directly."
    ),
    "C3 set_autocommit(False) + a write of a watched table": (
        "transactions.tests.NonAutocommitTests.test_orm_query_without_autocommit and "
        "test_orm_query_after_error_and_rollback failed on PostgreSQL: execute_wrapper -> "
        "queue_once -> transaction.on_commit() raises TransactionManagementError "
        "('on_commit() cannot be used in manual transaction management') after the INSERT "
        "ran. Fixed in the working tree during this work (queue_once returns when autocommit "
        "is off: the relay delivers; with RELAY off, the next drain of that database does)."
    ),
    "C4 lookup columns the triggers could carry are refused or dropped": (
        "_triggers.kind() (and _python_type()) follow one level of relation: a foreign key or "
        "one-to-one to a model whose primary key is itself a OneToOneField (a multi-table "
        "child such as model_inheritance.Restaurant, or queries.Member) has internal type "
        "'OneToOneField', not an integer type; FilePathField (a varchar) is not mapped to str. "
        "The adapter leaves such lookups out (their gets go to the database); a model left "
        "with no lookup gets triggers whose SQLite SQL ends 'FROM <table> o WHERE ; END': "
        "migrate fails with 'near \";\": syntax error' (PostgreSQL accepts its version). With "
        "the earlier revision the same columns raised ConfigurationError at migrate."
    ),
    "C5 the relay thread makes SQLite's shared in-memory test database fail": (
        "With RELAY on (the default), on SQLite's shared-cache in-memory test database, the "
        "relay thread polls cachecow_outbox on a connection of its own; a shared-cache table "
        "lock it holds makes another connection's statement fail at once with 'database table "
        "is locked' (SQLITE_LOCKED, which busy_timeout does not retry). Seen in 2 of 14 runs "
        "with the relay on: once in install_triggers (the DDL of _install_on_migrate, from "
        "the post_migrate of a TransactionTestCase's _pre_setup: an error in setUpClass); once "
        "in a TransactionTestCase's flush (DELETE FROM ...: errors in "
        "select_for_update.tests.SelectForUpdateTests.test_unsupported_nowait_raises_error and "
        "transactions.tests.AtomicWithoutAutocommitTests.test_reuse_commit_commit, then "
        "test_reuse_commit_rollback failed on the rows the failed flush left). The harness "
        "runs with RELAY off unless --relay (since the fix, --relay on SQLite starts none)."
    ),
    "C6 every post_migrate reinstalls every watched table's triggers": (
        "_install_on_migrate drops and recreates the triggers of all watched models of the "
        "app on each post_migrate, and Django emits one after every TransactionTestCase "
        "flush. With --autocommit-testcases on SQLite, 'queries' takes 43.5 s instead of "
        "16.6 s; a sampling profile puts 53% of the time in install_triggers. A check of the "
        "installed version (the adapter has _outbox.installed()) would skip the work."
    ),
    "C7 a model with a CachedManager but no table breaks post_migrate for its app": (
        "_install_on_migrate installs triggers on every watched model of the app, whether its "
        "table exists or not: a model defined inside a test (basic.tests' NoHash) made the "
        "next post_migrate fail with 'no such table: main.basic_nohash' (setUpClass of "
        "basic.tests.ConcurrentSaveTests). Django's own flush and post_migrate handlers skip "
        "missing tables. The harness gives models created after setup plain managers."
    ),
}


@dataclass
class Verdict:
    database: str
    unexpected: dict[str, str] = field(default_factory=dict)  # fail under cachecow only
    missing: dict[str, str] = field(default_factory=dict)  # expected, but did not fail
    fixed: list[str] = field(default_factory=list)  # fail plain only
    expected: dict[str, str] = field(default_factory=dict)  # expected, and failed
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.fixed)

    def report(self) -> str:
        lines = [f"--- comparison on {self.database}: {'OK' if self.ok else 'MISMATCH'}"]
        for test, why in sorted(self.expected.items()):
            lines.append(f"    expected under cachecow (b): {test}: {why}")
        for test in self.ignored:
            lines.append(f"    ignored (timing): {test}")
        for test, tb in sorted(self.unexpected.items()):
            lines.append(f"    UNEXPECTED failure under cachecow: {test}\n{tb}")
        for test, why in sorted(self.missing.items()):
            lines.append(f"    expected failure did not happen: {test} ({why})")
        for test in self.fixed:
            lines.append(f"    fails plain but passes under cachecow: {test}")
        if self.ok and not self.expected:
            lines.append("    the same tests fail with and without cachecow")
        return "\n".join(lines)


def _ignored(test: str) -> bool:
    return any(test.startswith(prefix) for prefix in IGNORED)


def compare(database: str, plain: dict[str, str], cached: dict[str, str]) -> Verdict:
    """Compare the failures (test id -> traceback) of a plain run and a cachecow run."""
    expected = EXPECTED.get(database, {})
    verdict = Verdict(database)
    verdict.ignored = sorted(t for t in {*plain, *cached} if _ignored(t))
    plain = {t: tb for t, tb in plain.items() if not _ignored(t)}
    cached = {t: tb for t, tb in cached.items() if not _ignored(t)}
    for test, tb in cached.items():
        if test in plain:
            continue
        if test in expected:
            verdict.expected[test] = expected[test]
        else:
            verdict.unexpected[test] = tb
    verdict.missing = {t: why for t, why in expected.items() if t not in cached}
    verdict.fixed = sorted(t for t in plain if t not in cached)
    return verdict
