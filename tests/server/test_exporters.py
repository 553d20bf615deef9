"""Metrics users export: per-model counters, call durations, the Prometheus and OpenTelemetry
exporters (scraped and read back), and the DEBUG record of each decision."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cachecow import AsyncCacheCow, CacheCow, NotFound
from cachecow.exporters.otel import OpenTelemetryMetrics
from cachecow.exporters.prometheus import PrometheusCollector
from cachecow.metrics import BUCKETS, COUNTERS, Metrics, MetricsSnapshot


class User:
    pass


class Order:
    pass


ROWS = {User: {1: "ann", 2: "bob"}, Order: {7: "seven"}}
USER = f"{__name__}.User"
ORDER = f"{__name__}.Order"


class ShopCache(CacheCow):
    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        name = ROWS[cls].get(id_val)
        return None if name is None else {"id": id_val, "name": name}


class AsyncShopCache(AsyncCacheCow):
    def unique_lookups(self, obj: Any) -> Any:
        return [("id", obj["id"])]

    async def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        name = ROWS[cls].get(id_val)
        return None if name is None else {"id": id_val, "name": name}


def drive(cache: CacheCow) -> None:
    """Misses, hits, a tombstone and invalidations on two models."""
    cache.get(User, "id", 1)  # miss, lease, fetch, commit
    cache.get(User, "id", 1)  # hit
    cache.get(User, "id", 1)  # hit
    cache.get(Order, "id", 7)  # miss, lease, fetch, commit
    with pytest.raises(NotFound):
        cache.get(Order, "id", 99)  # miss, lease, fetch, commit (a tombstone)
    with pytest.raises(NotFound):
        cache.get(Order, "id", 99)  # tombstone hit
    assert [u["name"] for u in cache.get_many(User, "id", [1, 2])] == ["ann", "bob"]
    cache.invalidate(User, "id", 1)
    cache.invalidate_lookups([(Order, "id", 7), (Order, "id", 99)])


EXPECTED = {
    USER: {"hits": 3, "misses": 2, "leases": 2, "fetches": 2, "commits": 2, "invalidations": 1},
    ORDER: {
        "misses": 2,
        "leases": 2,
        "fetches": 2,
        "commits": 2,
        "tombstone_hits": 1,
        "invalidations": 2,
    },
}
CALLS = {("get", USER): 3, ("get", ORDER): 3, ("get_many", USER): 1, ("invalidate", USER): 1}
CALLS[("invalidate_lookups", "")] = 1


def nonzero(snapshot: MetricsSnapshot) -> dict[str, int]:
    return {name: value for name, value in snapshot.as_dict().items() if value}


def test_counters_by_model_add_up_to_the_totals_and_the_hook_sees_them(
    redis_client: redis.Redis,
) -> None:
    seen: Counter[str] = Counter()
    cache = ShopCache(redis_client, metrics_hook=lambda name, amount: seen.update({name: amount}))
    drive(cache)
    by_model = cache.metrics.by_model()
    assert {model: nonzero(counts) for model, counts in by_model.items()} == EXPECTED
    totals = cache.metrics.snapshot()
    assert totals.hits == 3
    assert totals.misses == 4
    assert totals.invalidations == 3
    for name in COUNTERS:
        assert getattr(totals, name) == sum(getattr(m, name) for m in by_model.values())
    assert +seen == Counter(nonzero(totals))  # the hook: the same totals as before
    histograms = cache.metrics.histograms()
    assert {key: h.count for key, h in histograms.items()} == CALLS
    for h in histograms.values():
        assert h.buckets == BUCKETS
        assert len(h.counts) == len(BUCKETS) + 1
        assert 0 < h.sum < 5
        assert h.cumulative()[-1] == (float("inf"), h.count)
    cache.metrics.reset()
    assert cache.metrics.by_model() == {}
    assert cache.metrics.histograms() == {}


def test_histogram_buckets_hold_their_upper_bound() -> None:
    metrics = Metrics()
    for seconds in (0.0, 0.0001, 0.00010001, 0.001, 99.0):
        metrics.observe("get", "m", seconds)
    h = metrics.histograms()[("get", "m")]
    assert h.counts[0] == 2  # le=0.0001 holds 0.0 and 0.0001 itself
    assert h.counts[1] == 1  # le=0.00025
    assert h.counts[BUCKETS.index(0.001)] == 1
    assert h.counts[-1] == 1  # +Inf
    assert h.sum == pytest.approx(99.00120001)


def scrape(registry: CollectorRegistry) -> tuple[str, dict[tuple[str, frozenset[Any]], float]]:
    text = generate_latest(registry).decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def test_prometheus_scrape(redis_client: redis.Redis) -> None:
    shop, other = ShopCache(redis_client), ShopCache(redis_client, prefix="other:")
    registry = CollectorRegistry()
    PrometheusCollector({"shop": shop, "other": other}, registry=registry)
    drive(shop)
    other.get(User, "id", 2)
    text, samples = scrape(registry)
    assert "# TYPE cachecow_hits_total counter" in text
    assert "# TYPE cachecow_operation_seconds histogram" in text
    for model, counts in EXPECTED.items():
        for name in COUNTERS:
            labels = frozenset({"cache": "shop", "model": model}.items())
            assert samples[(f"cachecow_{name}_total", labels)] == counts.get(name, 0), name
    other_user = frozenset({"cache": "other", "model": USER}.items())
    assert samples[("cachecow_misses_total", other_user)] == 1
    assert samples[("cachecow_hits_total", other_user)] == 0
    for (operation, model), count in CALLS.items():
        labels = {"cache": "shop", "operation": operation, "model": model}
        assert samples[("cachecow_operation_seconds_count", frozenset(labels.items()))] == count
        inf = frozenset({**labels, "le": "+Inf"}.items())
        assert samples[("cachecow_operation_seconds_bucket", inf)] == count
        assert samples[("cachecow_operation_seconds_sum", frozenset(labels.items()))] > 0
        bounds = [le for (name, ls), _ in samples.items() for k, le in ls if k == "le"]
        assert "0.0001" in bounds
        assert "10.0" in bounds
    # A second collector on the same registry would expose the same names: refused.
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusCollector(other, registry=registry)


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "cachecow"
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_opentelemetry_read_back(redis_client: redis.Redis) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    cache = ShopCache(redis_client)
    bridge = OpenTelemetryMetrics({"shop": cache}, meter_provider=provider)
    drive(cache)
    points = otel_points(reader)
    for name in COUNTERS:
        values = {p.attributes["cachecow.model"]: p.value for p in points[f"cachecow.{name}"]}
        assert {p.attributes["cachecow.cache"] for p in points[f"cachecow.{name}"]} == {"shop"}
        assert values == {model: EXPECTED[model].get(name, 0) for model in EXPECTED}, name
    durations = points["cachecow.operation.duration"]
    counts = {
        (p.attributes["cachecow.operation"], p.attributes["cachecow.model"]): p.count
        for p in durations
    }
    assert counts == CALLS
    for point in durations:
        assert tuple(point.explicit_bounds) == BUCKETS
        assert sum(point.bucket_counts) == point.count
        assert point.sum > 0
    bridge.close()
    cache.get(User, "id", 2)
    after = otel_points(reader)
    durations = {
        (p.attributes["cachecow.operation"], p.attributes["cachecow.model"]): p.count
        for p in after["cachecow.operation.duration"]
    }
    assert durations[("get", USER)] == 3  # closed: no longer recorded
    hits = {p.attributes["cachecow.model"]: p.value for p in after["cachecow.hits"]}
    assert hits[USER] == 4  # still read (user 2 was cached by get_many)
    provider.shutdown()


def test_async_calls_are_timed_and_counted_by_model(redis_server: Any) -> None:
    async def body() -> Any:
        client = aredis.Redis(port=redis_server.port)
        try:
            await client.flushall()
            cache = AsyncShopCache(client)
            await cache.get(User, "id", 1)
            await cache.get(User, "id", 1)
            await cache.get_many(Order, "id", [7])
            await cache.invalidate_object({"id": 1}, model=User)
            return cache.metrics
        finally:
            await client.aclose()

    metrics = asyncio.run(body())
    by_model = {model: nonzero(counts) for model, counts in metrics.by_model().items()}
    assert by_model[USER]["hits"] == 1
    assert by_model[USER]["misses"] == 1
    assert by_model[ORDER]["misses"] == 1
    counts = {key: h.count for key, h in metrics.histograms().items()}
    assert counts == {
        ("get", USER): 2,
        ("get_many", ORDER): 1,
        ("invalidate_object", USER): 1,
    }


def test_debug_records_of_each_decision(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ShopCache(redis_client)
    key = cache.get_keys(User, "id", 1)[0]
    with caplog.at_level(logging.DEBUG, logger="cachecow"):
        cache.get(User, "id", 1)
        cache.get(User, "id", 1)
        cache.invalidate(User, "id", 1)
        cache.get_many(User, "id", [1, 2])
        cache.get_many(User, "id", [1, 2])
    records = [r for r in caplog.records if r.name == "cachecow"]
    fields = [r.cachecow for r in records]  # type: ignore[attr-defined]
    assert [(f["event"], f["model"], f["key"]) for f in fields[:4]] == [
        ("miss", USER, key),
        ("commit", USER, key),
        ("hit", USER, key),
        ("invalidate", USER, key),
    ]
    assert fields[0]["lease"] == "granted"
    assert [f["event"] for f in fields[4:]] == ["miss"] * 2 + ["commit"] * 2 + ["hit"] * 2
    assert all(f.get("batch") for f in fields[4:])
    assert {r.levelno for r in records} == {logging.DEBUG}
    assert records[2].getMessage() == f"hit model={USER} key={key}"
    for record in caplog.records:
        assert not record.getMessage().startswith("cachecow:")


def test_no_debug_records_when_debug_is_off(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ShopCache(redis_client)
    with caplog.at_level(logging.INFO, logger="cachecow"):
        cache.get(User, "id", 1)
        cache.get_many(User, "id", [1, 2])
        cache.invalidate(User, "id", 1)
    assert caplog.records == []


def test_an_exporter_without_its_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for module in ("cachecow.exporters.prometheus", "prometheus_client"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'cachecow-orm\[prometheus\]'"):
        import cachecow.exporters.prometheus  # noqa: F401
