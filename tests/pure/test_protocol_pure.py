"""Tests of the I/O-free parts of cachecow._protocol and of cachecow.metrics."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import threading
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

import cachecow
from cachecow import (
    BusyPolicy,
    ConfigurationError,
    JsonSerializer,
    Metrics,
    MetricsSnapshot,
    NotFound,
    SystemClock,
)
from cachecow._clock import backoff_delay
from cachecow._entries import jittered_ms
from cachecow._ops import new_token
from cachecow._protocol import CacheCowBase
from cachecow.metrics import COUNTERS

ALMOST_ONE = math.nextafter(1.0, 0.0)


class Widget:
    pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class DuckSerializer:
    def dumps(self, obj: Any) -> bytes:
        return repr(obj).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


@pytest.fixture
def base() -> CacheCowBase:
    return CacheCowBase(None)


# ---------------------------------------------------------------------------------------------
# new_token


def test_new_token_is_32_hex_chars() -> None:
    for _ in range(100):
        token = new_token()
        assert isinstance(token, str)
        assert re.fullmatch(r"[0-9a-f]{32}", token), token


def test_new_token_is_unique() -> None:
    tokens = {new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000


# ---------------------------------------------------------------------------------------------
# jittered_ms


def test_jittered_ms_r_zero_is_the_full_ttl() -> None:
    assert jittered_ms(3600.0, 0.1, 0.0) == 3_600_000
    assert jittered_ms(1.5, 0.5, 0.0) == 1_500
    assert jittered_ms(0.001, 0.9, 0.0) == 1


def test_jittered_ms_r_near_one_is_the_shortest() -> None:
    assert jittered_ms(3600.0, 0.1, ALMOST_ONE) == 3_240_000
    assert jittered_ms(100.0, 0.5, ALMOST_ONE) == 50_000


def test_jittered_ms_zero_jitter_is_exact() -> None:
    rng = random.Random(1)
    for _ in range(100):
        assert jittered_ms(12.345, 0.0, rng.random()) == 12_345


def test_jittered_ms_stays_in_range_and_is_an_int() -> None:
    rng = random.Random(2)
    for _ in range(2_000):
        seconds = rng.uniform(0.001, 100_000)
        jitter = rng.uniform(0.0, ALMOST_ONE)
        r = rng.random()
        ms = jittered_ms(seconds, jitter, r)
        assert type(ms) is int
        assert ms >= 1
        assert ms <= seconds * 1000
        assert ms >= math.floor(seconds * 1000 * (1 - jitter)) - 1 or ms == 1


def test_jittered_ms_shrinks_as_r_grows() -> None:
    values = [jittered_ms(60.0, 0.2, r / 100) for r in range(100)]
    assert values == sorted(values, reverse=True)
    assert values[0] == 60_000
    assert values[-1] < 60_000


def test_jittered_ms_never_below_one_ms() -> None:
    assert jittered_ms(0.001, 0.99, ALMOST_ONE) == 1
    assert jittered_ms(0.0001, 0.0, 0.0) == 1
    assert jittered_ms(0.0015, 0.9, 0.9) == 1


# ---------------------------------------------------------------------------------------------
# backoff_delay


def test_backoff_bases_double_up_to_the_cap() -> None:
    # With r = 0 the delay is base / 2; with r = 1 it is the base itself.
    bases = [2 * backoff_delay(n, 0.0, first=0.002, cap=0.05) for n in range(10)]
    assert bases == pytest.approx([0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05, 0.05, 0.05, 0.05])
    tops = [backoff_delay(n, 1.0, first=0.002, cap=0.05) for n in range(10)]
    assert tops == pytest.approx(bases)


def test_backoff_lies_between_half_base_and_base() -> None:
    rng = random.Random(3)
    for attempt in range(40):
        base = min(0.05, 0.002 * 2**attempt)
        for _ in range(50):
            delay = backoff_delay(attempt, rng.random(), first=0.002, cap=0.05)
            assert base / 2 <= delay <= base


def test_backoff_is_linear_in_r() -> None:
    low = backoff_delay(3, 0.0, first=0.01, cap=1.0)
    mid = backoff_delay(3, 0.5, first=0.01, cap=1.0)
    assert low == pytest.approx(0.04)
    assert mid == pytest.approx(0.06)


def test_backoff_huge_attempt_is_capped_without_overflow() -> None:
    assert backoff_delay(10**9, 0.0, first=0.002, cap=0.05) == pytest.approx(0.025)
    assert backoff_delay(10**9, ALMOST_ONE, first=0.002, cap=0.05) <= 0.05


# ---------------------------------------------------------------------------------------------
# CacheCowBase configuration


def test_base_defaults(base: CacheCowBase) -> None:
    assert base.options.ttl == 3600.0
    assert base.options.ttl_jitter == 0.1
    assert base.options.flag_ttl == 10.0
    assert base.options.tombstone_ttl == 30.0
    assert base.options.busy is BusyPolicy.WAIT
    assert base.options.wait_timeout == 1.0
    assert base.options.fail_open is False
    assert isinstance(base.serializer, JsonSerializer)
    assert base.prefix == "cachecow:"
    assert isinstance(base.clock, SystemClock)
    assert isinstance(base.metrics, Metrics)
    assert base.metrics.snapshot() == MetricsSnapshot()


def test_base_takes_keyword_arguments_only() -> None:
    with pytest.raises(TypeError):
        CacheCowBase(None, 60)  # type: ignore[misc]


def test_base_keeps_given_options() -> None:
    clock = FakeClock()
    serializer = DuckSerializer()
    calls: list[tuple[str, int]] = []
    cache = CacheCowBase(
        None,
        ttl=5,
        ttl_jitter=0,
        flag_ttl=0.5,
        tombstone_ttl=2,
        busy="fetch",
        wait_timeout=0,
        fail_open=True,
        serializer=serializer,
        prefix="app:",
        clock=clock,
        metrics_hook=lambda name, amount: calls.append((name, amount)),
    )
    assert cache.options.ttl == 5.0
    assert type(cache.options.ttl) is float
    assert cache.options.ttl_jitter == 0.0
    assert cache.options.flag_ttl == 0.5
    assert cache.options.tombstone_ttl == 2.0
    assert cache.options.busy is BusyPolicy.FETCH
    assert cache.options.wait_timeout == 0.0
    assert cache.options.fail_open is True
    assert cache.serializer is serializer
    assert cache.prefix == "app:"
    assert cache.clock is clock
    cache.metrics.incr("hits")
    assert calls == [("hits", 1)]


@pytest.mark.parametrize("option", ["ttl", "flag_ttl", "tombstone_ttl"])
@pytest.mark.parametrize(
    "value",
    [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "5", True, False, None, 0.0009, Decimal(5)],
    ids=repr,
)
def test_durations_must_be_finite_and_at_least_a_millisecond(option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option):
        CacheCowBase(None, **{option: value})


@pytest.mark.parametrize("option", ["ttl", "flag_ttl", "tombstone_ttl"])
@pytest.mark.parametrize("value", [0.001, 1, 2.5, 86_400 * 365])
def test_durations_accepted(option: str, value: float) -> None:
    cache = CacheCowBase(None, **{option: value})
    assert getattr(cache.options, option) == float(value)


@pytest.mark.parametrize(
    "value", [-0.1, 1, 1.0, 1.5, math.nan, math.inf, True, False, "0.1", None], ids=repr
)
def test_ttl_jitter_must_be_a_fraction_below_one(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="ttl_jitter"):
        CacheCowBase(None, ttl_jitter=value)


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 0.5, ALMOST_ONE])
def test_ttl_jitter_accepted(value: float) -> None:
    assert CacheCowBase(None, ttl_jitter=value).options.ttl_jitter == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("wait", BusyPolicy.WAIT),
        ("fetch", BusyPolicy.FETCH),
        (BusyPolicy.WAIT, BusyPolicy.WAIT),
        (BusyPolicy.FETCH, BusyPolicy.FETCH),
    ],
)
def test_busy_accepted(value: Any, expected: BusyPolicy) -> None:
    assert CacheCowBase(None, busy=value).options.busy is expected


@pytest.mark.parametrize("value", ["sleep", "WAIT", "Fetch", "", None, 0, 1, ["wait"]], ids=repr)
def test_busy_rejected_with_the_choices(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="busy") as info:
        CacheCowBase(None, busy=value)
    message = str(info.value)
    assert "'wait'" in message
    assert "'fetch'" in message
    assert repr(value) in message


def test_busy_policy_is_a_str_enum() -> None:
    assert BusyPolicy.WAIT == "wait"
    assert BusyPolicy.FETCH == "fetch"
    assert {p.value for p in BusyPolicy} == {"wait", "fetch"}


@pytest.mark.parametrize("value", [0, 0.0, 0.001, 5, 2.5])
def test_wait_timeout_accepted(value: float) -> None:
    cache = CacheCowBase(None, wait_timeout=value)
    assert cache.options.wait_timeout == float(value)
    assert type(cache.options.wait_timeout) is float


@pytest.mark.parametrize("value", [-1, -0.001, math.nan, math.inf, True, "1", None], ids=repr)
def test_wait_timeout_rejected(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="wait_timeout"):
        CacheCowBase(None, wait_timeout=value)


@pytest.mark.parametrize("value", [-1, "60", None], ids=repr)
def test_fail_open_log_interval_rejected(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="fail_open_log_interval"):
        CacheCowBase(None, fail_open_log_interval=value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True], ids=repr)
def test_fail_open_log_interval_rejects_nan_and_bool(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="fail_open_log_interval"):
        CacheCowBase(None, fail_open_log_interval=value)


def test_serializer_must_have_dumps_and_loads() -> None:
    class DumpsOnly:
        def dumps(self, obj: Any) -> bytes:
            return b""

    for bad in (object(), DumpsOnly(), "json", b"", 5):
        with pytest.raises(ConfigurationError, match="serializer"):
            CacheCowBase(None, serializer=bad)  # type: ignore[arg-type]
    duck = DuckSerializer()
    assert CacheCowBase(None, serializer=duck).serializer is duck


@pytest.mark.parametrize("prefix", ["a{b}:", "{", "}", "a b:", "\t", None, b"p:"], ids=repr)
def test_prefix_rejected(prefix: Any) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        CacheCowBase(None, prefix=prefix)


def test_prefix_accepted_and_used_in_keys() -> None:
    cache = CacheCowBase(None, prefix="tenant7:")
    value_key, flag_key = cache.get_keys(Widget, "id", 5)
    assert value_key.startswith(f"tenant7:{Widget.__module__}.Widget:id:{{")
    assert flag_key == value_key + ":lease"
    assert CacheCowBase(None, prefix="").get_keys("w", "id", 5)[0].startswith("w:id:{")


def test_clock_must_have_monotonic_and_sleep() -> None:
    class MonotonicOnly:
        def monotonic(self) -> float:
            return 0.0

    class SleepOnly:
        def sleep(self, seconds: float) -> None:
            pass

    for bad in (object(), MonotonicOnly(), SleepOnly(), 5):
        with pytest.raises(ConfigurationError, match="clock"):
            CacheCowBase(None, clock=bad)  # type: ignore[arg-type]
    clock = FakeClock()
    assert CacheCowBase(None, clock=clock).clock is clock
    assert isinstance(clock, cachecow.Clock)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ttl"):
        CacheCowBase(None, ttl=-1)


# ---------------------------------------------------------------------------------------------
# Default hooks: verify, fetch, not_found, model_label


def test_verify_attribute_objects(base: CacheCowBase) -> None:
    obj = SimpleNamespace(id=5, email="a@example.com")
    assert base.verify(Widget, "id", 5, obj) is True
    assert base.verify(Widget, "email", "a@example.com", obj) is True
    assert base.verify(Widget, "id", 6, obj) is False
    assert base.verify(Widget, "email", "b@example.com", obj) is False


def test_verify_mappings(base: CacheCowBase) -> None:
    row = {"id": 5, "name": "x"}
    assert base.verify(Widget, "id", 5, row) is True
    assert base.verify(Widget, "id", 6, row) is False
    assert base.verify(Widget, "missing", 5, row) is False
    assert base.verify(Widget, "id", None, {"id": None}) is True
    assert base.verify(Widget, "id", None, {}) is False  # absent is not None


def test_verify_a_field_named_by_a_str_subclass(base: CacheCowBase) -> None:
    """A field name given as a str subclass (a StrEnum member, say) is one field, not letters."""

    class Name(str):
        pass

    assert base.verify(Widget, Name("id"), 5, {"id": 5}) is True
    assert base.verify(Widget, Name("id"), 5, SimpleNamespace(id=5)) is True
    assert base.verify(Widget, Name("id"), 6, {"id": 5}) is False


def test_verify_missing_attribute(base: CacheCowBase) -> None:
    assert base.verify(Widget, "id", 5, SimpleNamespace(pk=5)) is False
    assert base.verify(Widget, "id", None, SimpleNamespace()) is False


def test_verify_type_mismatch(base: CacheCowBase) -> None:
    obj = SimpleNamespace(id=5)
    assert base.verify(Widget, "id", "5", obj) is False
    assert base.verify(Widget, "id", 5.0, obj) is False  # equal, but another type
    assert base.verify(Widget, "id", Decimal(5), obj) is False
    assert base.verify(Widget, "id", b"5", obj) is False


def test_verify_bool_is_not_int(base: CacheCowBase) -> None:
    assert base.verify(Widget, "id", 1, SimpleNamespace(id=True)) is False
    assert base.verify(Widget, "id", True, SimpleNamespace(id=1)) is False
    assert base.verify(Widget, "flag", True, SimpleNamespace(flag=True)) is True


def test_verify_equal_values_with_one_encoding(base: CacheCowBase) -> None:
    assert base.verify(Widget, "price", Decimal("1.0"), SimpleNamespace(price=Decimal("1.00")))
    assert base.verify(Widget, "x", 0.0, SimpleNamespace(x=-0.0))


def test_verify_composite(base: CacheCowBase) -> None:
    obj = SimpleNamespace(tenant=3, slug="home")
    assert base.verify(Widget, ("slug", "tenant"), ("home", 3), obj) is True
    assert base.verify(Widget, ("slug", "tenant"), ("home", 4), obj) is False
    assert base.verify(Widget, ("slug", "tenant"), ("Home", 3), obj) is False
    assert base.verify(Widget, ("slug", "tenant"), ("home", "3"), obj) is False
    assert base.verify(Widget, ("slug", "tenant", "x"), ("home", 3, 1), obj) is False
    row = {"tenant": 3, "slug": "home"}
    assert base.verify(Widget, ("slug", "tenant"), ("home", 3), row) is True
    assert base.verify(Widget, ("slug", "tenant"), ("home", 4), row) is False


def test_verify_unencodable_value_is_false_not_an_error(base: CacheCowBase) -> None:
    class Opaque:
        pass

    thing = Opaque()
    assert base.verify(Widget, "id", thing, SimpleNamespace(id=thing)) is False


def test_verify_comparison_errors_are_false(base: CacheCowBase) -> None:
    class Angry:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing")

        __hash__ = object.__hash__

    assert base.verify(Widget, "id", 5, SimpleNamespace(id=Angry())) is False


def test_fetch_is_abstract(base: CacheCowBase) -> None:
    with pytest.raises(NotImplementedError, match="fetch"):
        base.fetch(Widget, "id", 5)


def test_not_found_carries_the_lookup(base: CacheCowBase) -> None:
    exc = base.not_found(Widget, "id", 5)
    assert isinstance(exc, NotFound)
    assert isinstance(exc, LookupError)
    assert isinstance(exc, cachecow.CacheCowError)
    assert exc.model is Widget
    assert exc.field == "id"
    assert exc.value == 5
    assert str(exc) == "no Widget with id=5"
    composite = base.not_found("orders", ("a", "b"), (1, "x"))
    assert composite.field == ("a", "b")
    assert composite.value == (1, "x")
    with pytest.raises(LookupError):
        raise base.not_found(Widget, "id", "nope")


def test_not_found_defaults() -> None:
    exc = NotFound()
    assert exc.model is None
    assert str(exc) == "not found"
    assert str(NotFound(Widget, "id", 1, message="custom")) == "custom"


def test_model_label_hook(base: CacheCowBase) -> None:
    assert base.model_label(Widget) == f"{Widget.__module__}.Widget"
    assert base.model_label("users") == "users"


def test_serialize_and_deserialize_use_the_serializer() -> None:
    cache = CacheCowBase(None, serializer=DuckSerializer())
    assert cache.serialize([1]) == b"[1]"
    assert cache.deserialize(Widget, b"abc") == "abc"


# ---------------------------------------------------------------------------------------------
# Metrics


def test_metrics_start_at_zero() -> None:
    snapshot = Metrics().snapshot()
    assert isinstance(snapshot, MetricsSnapshot)
    assert snapshot.as_dict() == dict.fromkeys(COUNTERS, 0)


def test_metrics_incr_and_snapshot() -> None:
    metrics = Metrics()
    metrics.incr("hits")
    metrics.incr("hits", 4)
    metrics.incr("misses")
    snapshot = metrics.snapshot()
    assert snapshot.hits == 5
    assert snapshot.misses == 1
    assert snapshot.fetches == 0
    metrics.incr("hits")
    assert snapshot.hits == 5  # a snapshot is a copy
    assert metrics.snapshot().hits == 6


def test_metrics_snapshot_is_frozen() -> None:
    snapshot = Metrics().snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.hits = 3  # type: ignore[misc]


def test_metrics_unknown_counter_is_an_error() -> None:
    calls: list[tuple[str, int]] = []
    metrics = Metrics(lambda name, amount: calls.append((name, amount)))
    with pytest.raises(KeyError):
        metrics.incr("no_such_counter")
    assert calls == []


def test_metrics_reset() -> None:
    metrics = Metrics()
    for name in COUNTERS:
        metrics.incr(name, 2)
    assert set(metrics.snapshot().as_dict().values()) == {2}
    metrics.reset()
    assert metrics.snapshot() == MetricsSnapshot()
    metrics.incr("commits")
    assert metrics.snapshot().commits == 1


def test_metrics_as_dict_in_declaration_order() -> None:
    metrics = Metrics()
    metrics.incr("invalidations", 3)
    as_dict = metrics.snapshot().as_dict()
    assert list(as_dict) == list(COUNTERS)
    assert list(as_dict) == [f.name for f in dataclasses.fields(MetricsSnapshot)]
    assert as_dict["invalidations"] == 3
    assert all(type(v) is int for v in as_dict.values())
    assert "hits" in COUNTERS
    assert "invalidations" in COUNTERS


def test_metrics_hook_is_called_with_name_and_amount() -> None:
    calls: list[tuple[str, int]] = []
    metrics = Metrics(lambda name, amount: calls.append((name, amount)))
    metrics.incr("hits")
    metrics.incr("fetches", 7)
    assert calls == [("hits", 1), ("fetches", 7)]
    metrics.reset()
    assert calls == [("hits", 1), ("fetches", 7)]  # reset does not call the hook
    metrics.hook = None
    metrics.incr("hits")
    assert calls == [("hits", 1), ("fetches", 7)]
    assert metrics.snapshot().hits == 1


def test_metrics_are_thread_safe() -> None:
    threads_n, per_thread = 8, 10_000
    hook_calls: list[int] = []
    metrics = Metrics(lambda name, amount: hook_calls.append(amount))
    barrier = threading.Barrier(threads_n)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            metrics.incr("hits")
            metrics.incr("misses", 2)
            metrics.near_hit("m")  # a hit too, counted without the lock
            metrics.count("m", ("decode_failures",))  # without the lock too

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = metrics.snapshot()
    assert snapshot.hits == 2 * threads_n * per_thread
    assert snapshot.near_hits == threads_n * per_thread
    assert snapshot.misses == 2 * threads_n * per_thread
    assert snapshot.decode_failures == metrics.by_model()["m"].decode_failures
    assert snapshot.decode_failures == threads_n * per_thread
    assert len(hook_calls) == 5 * threads_n * per_thread


def test_an_unknown_counter_is_refused_at_once() -> None:
    metrics = Metrics()
    with pytest.raises(KeyError, match="nosuch"):
        metrics.count("m", ("hits", "nosuch"))
    assert metrics.snapshot().hits == 0  # nothing counted, and the counters still read


def test_near_hits_are_in_every_reading_of_the_counters() -> None:
    metrics = Metrics()
    metrics.incr("hits", 5, "a")
    for _ in range(3):
        metrics.near_hit("a")
    metrics.near_hit("b", tombstone=True)
    snapshot = metrics.snapshot()
    assert (snapshot.hits, snapshot.near_hits, snapshot.tombstone_hits) == (8, 4, 1)
    by_model = metrics.by_model()
    assert (by_model["a"].hits, by_model["a"].near_hits, by_model["a"].tombstone_hits) == (8, 3, 0)
    assert (by_model["b"].hits, by_model["b"].near_hits, by_model["b"].tombstone_hits) == (0, 1, 1)
    metrics.reset()
    assert metrics.snapshot().near_hits == 0
    assert metrics.by_model() == {}


def test_base_metrics_hook_is_wired() -> None:
    calls: list[tuple[str, int]] = []
    cache = CacheCowBase(None, metrics_hook=lambda name, amount: calls.append((name, amount)))
    cache.metrics.incr("leases", 2)
    assert calls == [("leases", 2)]
    assert cache.metrics.snapshot().leases == 2
